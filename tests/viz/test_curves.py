from PIL import Image

from torch_bam.viz.curves import plot_learning_curves


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(
        {"a": {"train_loss": [2.0, 1.0], "val_error": [0.5, 0.3]}, "b": {"train_loss": [2.1, 0.9]}},
        str(tmp_path / "c.png"),
    )
    with Image.open(path) as im:
        assert im.size == (800, 320)
