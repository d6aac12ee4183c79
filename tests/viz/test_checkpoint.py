"""Checkpoints load with torch.load(weights_only=True): objects that run code are refused."""

import numpy as np
import pytest
import torch
from PIL import Image

from torch_bam import create_model
from torch_bam.cli import main
from torch_bam.errors import UsageError
from torch_bam.viz import load_checkpoint, save_checkpoint
from torch_bam.viz.attention import load_images


class WritesAFile:
    """Unpickling this opens (so creates) ``path``: code that runs on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "side_effect.txt"
    model = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    path = tmp_path / "evil.pt"
    torch.save(
        {"model": "bam_small_cnn", "in_chans": 1, "state_dict": model.state_dict(),
         "extra": WritesAFile(marker)},
        path,
    )  # fmt: skip
    assert not marker.exists()
    with pytest.raises(UsageError, match=r"io\.open.*weights_only=True"):
        load_checkpoint(str(path))
    assert not marker.exists()
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["visualize", str(path), str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "io.open" in err and err.count("\n") == 1
    assert not marker.exists() and not out.exists()
    # The file really does run code when loaded the unsafe way: the test above means something.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_save_checkpoint_is_atomic_and_refuses_bad_settings(tmp_path):
    model = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    path = tmp_path / "m.pt"
    for bad, words in (
        ({"std": [0.0]}, "std"),
        ({"mean": [0.1, 0.2]}, "mean"),
        ({"image_size": 0}, "image_size"),
        ({"extra": {"score": np.float64(0.5)}}, "weights_only"),
    ):
        with pytest.raises(ValueError, match=words):
            save_checkpoint(str(path), "bam_small_cnn", model, in_chans=1, **bad)
        assert list(tmp_path.iterdir()) == []
    save_checkpoint(str(path), "bam_small_cnn", model, in_chans=1, num_classes=10)
    assert torch.load(path, weights_only=True)["format"] == "torch-bam/1"


def test_16_bit_image_is_shown_mid_grey_not_white(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(path)
    x, display = load_images([str(path)], in_chans=1, size=8, mean=[0.5], std=[0.25])
    torch.testing.assert_close(display, torch.full((1, 1, 8, 8), 128 / 255))
    torch.testing.assert_close(x, (display - 0.5) / 0.25)


def test_a_checkpoint_written_by_torch_bam_fit_loads_and_visualizes(tmp_path):
    run = tmp_path / "run"
    fit = [
        "fit",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        "--trainer.max_epochs=1",
        "--seed_everything=0",
        "--data.num_train=32",
        "--data.num_val=16",
        "--data.batch_size=16",
        "--data.canvas_size=24",
        "--model.model=bam_small_cnn",
        f"--run_dir={run}",
    ]
    assert main(fit) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    # What Lightning put in: hyper_parameters are plain values, loadable with weights_only.
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["model"] == "bam_small_cnn" and hparams["in_chans"] == 1
    model, meta = load_checkpoint(str(ckpt))
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[f"model.{key}"])
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24), np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["visualize", str(ckpt), str(image), "--out", str(out)]) == 0
    assert (out / "attention.png").stat().st_size > 0
