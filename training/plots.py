"""PNG plots of a run: loss/accuracy curves and the test confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Train/val loss and top-1 accuracy per epoch, side by side."""
    figure = curves_figure(history)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def epoch_axis(axis: Axes, epochs: list[int]) -> None:
    """Whole epochs on the x axis, with half an epoch of room each side (one epoch would
    otherwise read 0.96-1.04)."""
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def curves_figure(history: list[dict[str, Any]]) -> Figure:
    """The figure :func:`plot_curves` saves."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        loss_axis.plot(epochs, [row[key] for row in history], marker="o", label=label)
    for key, label in (("train_top1", "train"), ("val_top1", "val")):
        accuracy_axis.plot(epochs, [row[key] for row in history], marker="o", label=label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
        epoch_axis(axis, epochs)
    figure.tight_layout()
    return figure


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), with counts."""
    size = len(labels)
    figure, axis = plt.subplots(figsize=(1.0 + 0.6 * size, 0.8 + 0.6 * size))
    totals = [max(1, sum(row)) for row in matrix]
    normalised = [[value / total for value in row] for row, total in zip(matrix, totals,
                                                                          strict=True)]
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            colour = "white" if normalised[i][j] > 0.5 else "black"
            axis.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7,
                      color=colour)
    axis.set_xticks(range(size), labels, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(size), labels, fontsize=8)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
