"""``curves.png`` and ``confusion.png``: whole-epoch ticks (also after a one-epoch run), curves
labelled with the split they were measured on, a colour bar that says what its colours are."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from training.plots import (
    COLORBAR_LABEL,
    confusion_figure,
    curves_figure,
    plot_confusion,
    plot_curves,
)


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


def test_curves_without_validation_split_are_labelled_test() -> None:
    rows = [{"epoch": e, "train_loss": 1.0, "test_loss": 1.1, "train_top1": 0.5,
             "test_top1": 0.4} for e in (1, 2)]
    figure = curves_figure(rows)
    for axis in figure.axes:
        legend = [text.get_text() for text in axis.get_legend().get_texts()]
        assert legend == ["train", "test (no validation split)"]
        assert list(axis.lines[1].get_ydata()) in ([1.1, 1.1], [0.4, 0.4])
    plt.close(figure)
    figure = curves_figure([_row(1)])
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["train", "val"]
    plt.close(figure)


def test_confusion_colour_bar_says_it_is_a_row_fraction(tmp_path: Path) -> None:
    matrix = [[8, 2], [1, 9]]
    figure = confusion_figure(matrix, ["cat", "dog"])
    image_axis, bar_axis = figure.axes
    assert bar_axis.get_ylabel() == COLORBAR_LABEL
    assert "fraction of the true class" in COLORBAR_LABEL and "row" in COLORBAR_LABEL
    assert image_axis.images[0].get_array().tolist() == [[0.8, 0.2], [0.1, 0.9]]
    assert sorted(t.get_text() for t in image_axis.texts) == ["1", "2", "8", "9"]  # counts
    plt.close(figure)
    assert plot_confusion(matrix, ["cat", "dog"], tmp_path / "c.png").read_bytes()[:4] == \
        b"\x89PNG"
