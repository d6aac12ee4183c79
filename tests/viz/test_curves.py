"""Learning curves: titles in words, whole epochs on the x axis, readable text."""

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from torch_bam.viz.curves import draw_learning_curves, plot_learning_curves

from ._figures import small_texts

HISTORY = {
    "small_cnn": [
        {"train/loss_epoch": [2.0, 1.0, 0.5], "val/top1_err": [0.5, 0.3, 0.2]},
        {"train/loss_epoch": [2.2, 1.1, 0.6], "val/top1_err": [0.6, 0.35, 0.25]},
    ],
    "bam_small_cnn": {"train/loss_epoch": [2.1, 0.9, 0.4], "val/top1_err": [0.4, 0.3, 0.1]},
}


def _one_epoch():
    return {run: [{k: v[:1] for k, v in h.items()} for h in (hs if isinstance(hs, list) else [hs])]
            for run, hs in HISTORY.items()}  # fmt: skip


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(HISTORY, str(tmp_path / "c.png"))
    with Image.open(path) as im:
        assert im.size == (920, 360)


def test_titles_are_words_and_errors_are_percent():
    fig = draw_learning_curves(HISTORY)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        assert titles == ["Training loss (epoch mean)", "Validation top-1 error (%)"]
        assert not [t for t in titles if "_" in t]
        err = fig.axes[1]
        means = [line.get_ydata() for line in err.lines if line.get_label() == "small_cnn"]
        assert list(means[0]) == pytest.approx([55.0, 32.5, 22.5])  # mean of two seeds, in %
    finally:
        plt.close(fig)


@pytest.mark.parametrize(("history", "epochs"), [(HISTORY, 3), (_one_epoch(), 1)])
def test_x_axis_has_whole_epochs_only_and_text_is_readable(history, epochs):
    fig = draw_learning_curves(history)
    try:
        for ax in fig.axes:
            assert list(ax.get_xticks()) == list(range(1, epochs + 1))
            low, high = ax.get_xlim()
            assert low < 1 and high > epochs  # every tick inside the axis
        assert small_texts(fig) == []
    finally:
        plt.close(fig)


def test_an_unknown_metric_keeps_its_name():
    fig = draw_learning_curves({"a": {"val_error": [0.5, 0.3]}})
    try:
        assert [ax.get_title() for ax in fig.axes] == ["val_error"]
    finally:
        plt.close(fig)
