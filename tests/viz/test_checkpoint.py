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
from torch_bam.viz.checkpoint import Preprocessing


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
    torch.load(path, weights_only=False)["extra"].close()  # the file it opened
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
    pre = Preprocessing(in_chans=1, image_size=8, resize_size=8, interpolation="bilinear",
                        mean=[0.5], std=[0.25])  # fmt: skip
    x, display, notes = load_images([str(path)], pre)
    assert notes == [("8x8, as is", "8x8")]
    torch.testing.assert_close(display, torch.full((1, 1, 8, 8), 128 / 255))
    torch.testing.assert_close(x, (display - 0.5) / 0.25)


def test_a_checkpoint_written_by_torch_bam_fit_loads_and_visualizes(tmp_path, capsys, monkeypatch):
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
    # The preprocessing its data module applied: 24x24 grey canvases, raw [0, 1] pixels.
    assert torch.load(ckpt, weights_only=True)["preprocessing"] == {
        "dataset": "cluttered-digits", "in_chans": 1, "image_size": 24, "resize_size": 24,
        "interpolation": "bilinear", "mean": [0.0], "std": [1.0],
    }  # fmt: skip
    image = tmp_path / "img.png"
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50), np.uint8)  # 50 wide, 40 high
    Image.fromarray(pixels).save(image)
    out = tmp_path / "out"
    seen = _spy_on_model_input(monkeypatch)
    assert main(["visualize", str(ckpt), str(image), "--out", str(out)]) == 0
    assert (out / "attention.png").stat().st_size > 0
    assert seen[0].shape == (1, 1, 24, 24)
    # Raw pixels, as in training: a resized, cropped image in [0, 1], not in [-1, 1].
    assert 0 <= seen[0].min() and seen[0].max() <= 1 and seen[0].max() > 0.5
    said = capsys.readouterr().out
    assert "resized 50x40 to 30x24 (bilinear), centre-cropped 30x24 to 24x24" in said
    assert "recorded in the checkpoint, cluttered-digits" in said


def _spy_on_model_input(monkeypatch):
    import torch_bam.viz.attention as attention

    seen = []
    record = attention._record

    def spy(model, images):
        seen.append(images.clone())
        return record(model, images)

    monkeypatch.setattr(attention, "_record", spy)
    return seen


def test_a_wider_rgb_image_keeps_its_aspect_ratio_and_the_checkpoints_statistics(
    tmp_path, capsys, monkeypatch
):
    from torch_bam.data.datamodules import CIFAR10DataModule, preprocessing_for

    model = create_model("bam_small_cnn", num_classes=10, in_chans=3)
    ckpt = tmp_path / "cifar.pt"
    save_checkpoint(str(ckpt), "bam_small_cnn", model, num_classes=10,
                    **preprocessing_for("cifar10", 32))  # fmt: skip
    image = tmp_path / "wide.png"
    rgb = np.zeros((48, 64, 3), np.uint8)  # 64 wide, 48 high; its middle a grey square
    rgb[:, 16:48] = 128
    Image.fromarray(rgb).save(image)
    seen = _spy_on_model_input(monkeypatch)
    assert main(["visualize", str(ckpt), str(image), "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "resized 64x48 to 42x32 (bilinear), centre-cropped 42x32 to 32x32" in said
    x = seen[0]
    assert x.shape == (1, 3, 32, 32)
    # Normalised with CIFAR-10's statistics: the grey middle is (128/255 - mean) / std.
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR10DataModule._mean_std)
    torch.testing.assert_close(x[0, :, 16, 16:17], ((128 / 255 - mean) / std)[:, 0], atol=1e-3,
                               rtol=0)  # fmt: skip
    # Kept, not squashed: the 32-wide grey band of 64 becomes 21 of 42, then the crop keeps
    # 21 grey columns of 32 (squashed to 32 wide it would be 16).
    grey = (x[0, 0, 16] - x[0, 0, 16, 16]).abs() < 0.05
    assert 20 <= int(grey.sum()) <= 22


def test_a_lightning_checkpoint_that_records_no_preprocessing_is_refused_by_visualize(
    tmp_path, capsys
):
    model = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": "bam_small_cnn", "num_classes": 10, "in_chans": 1}},
               ckpt)  # fmt: skip
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["visualize", str(ckpt), str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not record the preprocessing" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_demo_on_an_image_folder_saves_the_normalisation_its_model_saw(tmp_path):
    from torch_bam.demo import run
    from torch_bam.viz.checkpoint import preprocessing

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        for label in ("a", "b"):
            d = tmp_path / "images" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "demo"
    dataset = f"imagefolder:{tmp_path / 'images'}"
    sizes = dict(train_size=32, val_size=8, test_size=8, canvas=16, batch_size=16)
    run(epochs=1, seeds=1, out=str(out), dataset=dataset, progress=False, **sizes)
    ckpt = torch.load(out / "bam_small_cnn-seed0.pt", weights_only=True)
    pre = preprocessing(ckpt, "the demo's checkpoint")
    assert (pre.image_size, pre.resize_size, pre.in_chans) == (16, 16, 3)
    assert pre.mean == [0.485, 0.456, 0.406] and pre.std == [0.229, 0.224, 0.225]  # ImageNet's
