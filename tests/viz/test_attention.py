import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from PIL import Image

from torch_bam import create_model
from torch_bam.cli import main
from torch_bam.viz import load_checkpoint, save_checkpoint
from torch_bam.viz.attention import figure_size_px

from ._figures import small_texts


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    path = tmp_path / "model.pt"
    save_checkpoint(
        str(path),
        "bam_small_cnn",
        model,
        num_classes=10,
        in_chans=1,
        image_size=32,
        mean=[0.1],
        std=[0.3],
    )
    return model, path


def test_checkpoint_round_trip(tmp_path):
    model, path = _checkpoint(tmp_path)
    loaded, meta = load_checkpoint(str(path))
    assert meta["image_size"] == 32
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_lightning_style_checkpoint(tmp_path):
    model = create_model("bam_small_cnn", num_classes=3, in_chans=1)
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "x.ckpt"
    torch.save(
        {
            "state_dict": sd,
            "hyper_parameters": {"model_name": "bam_small_cnn", "num_classes": 3, "in_chans": 1},
        },
        path,
    )
    loaded, _ = load_checkpoint(str(path))
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_visualize_writes_grid_of_expected_size(tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    images = []
    rng = np.random.default_rng(0)
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(p)
        images.append(str(p))
    out = tmp_path / "out"
    assert main(["visualize", str(ckpt), *images, "--out", str(out)]) == 0
    png = mpimg.imread(out / "attention.png")
    width, height = figure_size_px(num_images=2, num_bams=2)
    assert png.shape[:2] == (height, width)
    assert png.std() > 0  # something was drawn


def test_bad_checkpoint_names_the_fix(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(ValueError, match="state_dict"):
        load_checkpoint(str(path))


def test_checkpoint_of_the_training_module(tmp_path):
    from torch_bam.train import ImageClassifier

    module = ImageClassifier("bam_small_cnn", num_classes=4, in_chans=1)
    path = tmp_path / "lightning.ckpt"
    # What Trainer.save_checkpoint writes, reduced to the keys the loader reads.
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded, meta = load_checkpoint(str(path))
    assert meta["model"] == "bam_small_cnn"
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x), module.model.eval()(x))


def test_the_picture_has_colour_bars_one_colour_map_and_the_prediction(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close

    def keep(fig=None):
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    _, ckpt = _checkpoint(tmp_path)
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48), dtype=np.uint8)).save(image)
    assert main(["visualize", str(ckpt), str(image), "--out", str(tmp_path / "out")]) == 0
    (fig,) = figures
    maps = [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]
    attention = [im for im in maps if im.get_cmap().name != "gray"]
    assert len(attention) == 4  # two BAMs: spatial and 3-D attention each
    assert {im.get_cmap().name for im in attention} == {"viridis"}
    assert {im.get_clim() for im in attention} == {(0.0, 1.0)}
    colour_bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colour_bars) == len(attention)
    title = fig.axes[0].get_title()
    assert "predicted " in title and "(p 0." in title
    assert "48x32 -> 32x32" in title  # centre-cropped, not squashed
    # Each channel chart shows where its top channels stand: the median of all channels.
    charts = [ax for ax in fig.axes if ax.patches and "channels" in ax.get_title()]
    assert len(charts) == 2
    assert all(
        [line.get_label() for line in ax.lines] == ["median of all channels"] for ax in charts
    )
    assert all(" of " in ax.get_title() for ax in charts)
    assert small_texts(fig) == []  # every text readable at the saved size
