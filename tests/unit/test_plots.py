"""``curves.png``: the epoch axis shows whole epochs, also after a one-epoch run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from training.plots import curves_figure, plot_curves


def _row(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch,
            "train_top1": 0.9, "val_top1": 0.88}


@pytest.mark.parametrize("epochs", [1, 2, 12])
def test_epoch_ticks_are_whole_epochs_within_the_run(epochs: int) -> None:
    figure = curves_figure([_row(e) for e in range(1, epochs + 1)])
    figure.canvas.draw()
    for axis in figure.axes:
        low, high = axis.get_xlim()
        ticks = [t for t in axis.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert 1 in ticks and epochs in ticks or epochs > 10
        labels = [label.get_text() for label in axis.get_xticklabels() if label.get_text()]
        assert all("." not in text for text in labels), labels
    plt.close(figure)


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    path = plot_curves([_row(1)], tmp_path / "curves.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
