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
    """Train and val (or, without a validation split, test) loss and top-1 per epoch."""
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
    """The figure :func:`plot_curves` saves.

    Rows carry ``val_*`` keys, or ``test_*`` when the run had no validation split: the second
    curve is labelled with what it was measured on.
    """
    epochs = [row["epoch"] for row in history]
    role = "test" if history and "test_loss" in history[0] else "val"
    label = "test (no validation split)" if role == "test" else "val"
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in ((loss_axis, "loss"), (accuracy_axis, "top1")):
        axis.plot(epochs, [row[f"train_{metric}"] for row in history], marker="o",
                  label="train")
        axis.plot(epochs, [row[f"{role}_{metric}"] for row in history], marker="o", label=label)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    accuracy_axis.set(xlabel="epoch", ylabel="top-1 accuracy", title="Accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
        epoch_axis(axis, epochs)
    figure.tight_layout()
    return figure


COLORBAR_LABEL = "fraction of the true class's images (row-normalised)"


def plot_confusion(matrix: list[list[int]], labels: list[str], path: str | Path,
                   title: str = "Confusion matrix") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), with counts."""
    figure = confusion_figure(matrix, labels, title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def confusion_figure(matrix: list[list[int]], labels: list[str],
                     title: str = "Confusion matrix") -> Figure:
    """The figure :func:`plot_confusion` saves: colours are per-row fractions (the colour bar
    says so), the numbers in the cells are counts."""
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
    bar = figure.colorbar(image, ax=axis, fraction=0.046)
    bar.set_label(COLORBAR_LABEL, fontsize=8)
    figure.tight_layout()
    return figure
