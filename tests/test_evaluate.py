"""torch-bam eval: accuracy of pretrained weights on a class-folder image set."""

import math

import pytest
import torch

import torch_bam
from torch_bam.cli import main
from torch_bam.models import _cfg

pytest.importorskip("torchvision")
from PIL import Image  # noqa: E402


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A 3-class image folder, and test weights for bam_small_cnn registered as a tag."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    gen = torch.Generator().manual_seed(0)
    for c in range(3):
        (tmp_path / "val" / f"n0{c}").mkdir(parents=True)
        for i in range(4):
            pixels = (torch.rand(40, 48, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "val" / f"n0{c}" / f"{i}.png")
    torch.manual_seed(0)
    model = torch_bam.create_model("bam_small_cnn", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    cfg = _cfg.PretrainedCfg(
        architecture="bam_small_cnn",
        tag="test_tiny",
        file=str(tmp_path / "w.pth"),
        num_classes=3,
        input_size=(3, 32, 32),
        crop_pct=0.8,
        published_top1=12.5,
    )
    monkeypatch.setitem(_cfg._CFGS, "bam_small_cnn", {"test_tiny": cfg})
    return tmp_path, model.eval(), cfg


def test_eval_prints_top1_top5_and_the_published_figure(tiny, capsys):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    root, model, cfg = tiny
    code = main(
        [
            "eval",
            "bam_small_cnn.test_tiny",
            "--data",
            f"imagefolder:{root / 'val'}",
            "--workers",
            "0",
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    # The expected accuracy, computed here with the transform written out by hand.
    transform = T.Compose(
        [
            T.Resize(math.floor(32 / 0.8)),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )
    data = ImageFolder(str(root / "val"), transform=transform)
    with torch.no_grad():
        preds = [model(x[None]).argmax(1).item() for x, _ in data]
    top1 = 100 * sum(p == y for p, (_, y) in zip(preds, data, strict=True)) / len(data)
    assert f"top-1 {top1:.2f}%" in out and "top-5 100.00%" in out  # 3 classes: top-5 is all
    assert "on 12 images" in out and "images/s" in out and "published: top-1 12.50" in out


def test_eval_bad_input_is_one_line(tiny, capsys):
    root, *_ = tiny
    assert main(["eval", "bam_small_cnn.test_tiny", "--data", str(root)]) == 2
    assert "imagefolder:PATH" in capsys.readouterr().err
    assert main(["eval", "bam_small_cnn.test_tiny", "--data", f"imagefolder:{root}/no"]) == 2
    assert "no such image folder" in capsys.readouterr().err
    assert main(["eval", "bam_small_cnn.test_tiny", "--data", f"imagefolder:{root}"]) == 2
    err = capsys.readouterr().err
    assert "class folders" in err and err.count("\n") == 1
    assert main(["eval", "bam_resnet18", "--data", f"imagefolder:{root / 'val'}"]) == 2
    assert "no pretrained weights" in capsys.readouterr().err


def test_preprocessing_of_the_registered_weights():
    from torch_bam.evaluate import transform_for

    t = transform_for(_cfg.get_pretrained_cfg("bam_resnet50.ptcv_in1k"))
    resize, crop = t.transforms[:2]
    assert resize.size == 256 and crop.size == (224, 224)
    assert resize.interpolation.value == "bilinear"


def test_eval_reads_16_bit_images_scaled_by_bit_depth(tiny, monkeypatch):
    """A 16-bit grey image reads as the package reads it everywhere (open_image: scaled by its
    bit depth), not clipped to white by PIL's convert("RGB")."""
    import numpy as np

    from torch_bam import evaluate as ev
    from torch_bam.data.images import open_image

    root, *_ = tiny
    for c in ("n00", "n01", "n02"):  # one mid-grey 16-bit PNG per class
        (root / "deep" / c).mkdir(parents=True)
        path = root / "deep" / c / "grey.png"
        Image.fromarray(np.full((40, 48), 20000, dtype=np.uint16)).save(path)
    seen = []
    real = ev.transform_for

    def recording(cfg):
        t = real(cfg)
        return lambda im: (seen.append(im.copy()), t(im))[1]

    monkeypatch.setattr(ev, "transform_for", recording)
    ev.evaluate("bam_small_cnn.test_tiny", f"imagefolder:{root / 'deep'}", workers=0)
    assert len(seen) == 3
    for read in seen:
        assert read.mode == "RGB"
        assert np.array_equal(np.asarray(read), np.asarray(open_image(path, "RGB")))
        assert np.asarray(read).max() == round(20000 / 65535 * 255)  # not 255 (clipped)


def test_eval_names_a_corrupt_image_in_one_line(tiny, capsys):
    root, *_ = tiny
    (root / "val" / "n01" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = ["eval", "bam_small_cnn.test_tiny", "--data", f"imagefolder:{root / 'val'}"]
    for workers in ("0", "1"):  # read here, or in a loader process
        assert main([*args, "--workers", workers]) == 2
        err = capsys.readouterr().err
        assert "broken.jpg" in err and err.count("\n") == 1, err
