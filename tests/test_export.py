"""torch-bam export: the demo's checkpoint to a model folder or TorchScript, each loaded back
the way its users load it (create_model / timm "local-dir:", torch.jit.load) and compared with
the original; bad input gets one line and leaves nothing behind. The round trip from fit, with
ONNX in onnxruntime, is in tests/train/test_share.py."""

import json
import os

import pytest
import torch

import torch_bam
from torch_bam.cli import main
from torch_bam.errors import UsageError
from torch_bam.export import EPS, export, load_source, tolerance
from torch_bam.viz.checkpoint import save_checkpoint

pytest.importorskip("safetensors")
PRE = dict(image_size=24, mean=[0.5], std=[0.25], dataset="cluttered-digits")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """What the demo writes (torch-bam/1): a BAM small CNN on one-channel 24-pixel images."""
    torch.manual_seed(0)
    model = torch_bam.create_model("bam_small_cnn", num_classes=10, in_chans=1)
    with torch.no_grad():  # BatchNorms that do something, so that folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("demo") / "bam_small_cnn.pt"
    save_checkpoint(str(path), "bam_small_cnn", model.eval(), num_classes=10, in_chans=1, **PRE)
    return path, model


def _images(*sizes):
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(n, 1, 24, 24, generator=g) - 0.5) / 0.25 for n in sizes]


def _reference(model, images):
    with torch.no_grad():
        return [model.eval()(x) for x in images]


def test_tolerances_follow_the_format():
    ref = torch.tensor([[-3.0, 2.0]])
    assert tolerance("folder", ref) == 0  # the same weights through the same code: equal
    assert tolerance("onnx", ref) == tolerance("torchscript", ref) == 1024 * EPS * 3.0


def test_folder_keeps_the_checkpoints_preprocessing(checkpoint, tmp_path):
    path, model = checkpoint
    out = tmp_path / "shared"
    report = export(load_source(str(path)), "folder", out, runs=0)
    assert report.max_diff == 0 and report.folded == 0
    assert sorted(os.listdir(tmp_path)) == ["shared"]
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
    pcfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert pcfg["input_size"] == [1, 24, 24] and pcfg["mean"] == [0.5] and pcfg["std"] == [0.25]
    card = (out / "README.md").read_text()
    assert "bam_small_cnn" in card and "cluttered-digits" in card and "[0.25]" in card
    x = _images(2)
    (ref,) = _reference(model, x)
    with torch.no_grad():
        loaded = torch_bam.create_model(f"local-dir:{out}", pretrained=True).eval()
        assert torch.equal(loaded(x[0]), ref)
        timm = pytest.importorskip("timm")
        assert torch.equal(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x[0]), ref)


def test_torchscript_round_trip_from_the_command(checkpoint, tmp_path, capsys):
    path, model = checkpoint
    out = tmp_path / "m.pt"
    assert main(["export", str(path), "--to", "torchscript", "--out", str(out), "--runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {out} (torchscript, 14 BatchNorms folded)"
    assert lines[1].startswith("largest difference from the original: ")
    assert "batch sizes 1 and 4" in lines[1]
    assert (
        lines[2].startswith("speed on this machine (CPU, batch 4") and "torch.jit.load" in lines[2]
    )
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left
    loaded = torch.jit.load(str(out))
    assert not [m for m in loaded.modules() if "BatchNorm" in m.original_name]  # folded
    images = _images(1, 3)
    with torch.no_grad():
        for x, ref in zip(images, _reference(model, images), strict=True):
            assert (loaded(x) - ref).abs().max() <= tolerance("torchscript", ref)


def _refused(argv, tmp_path, capsys, match):
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torch-bam export: error: "), err
    assert match in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no temporary file


def test_bad_input_gets_one_line_and_leaves_nothing(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # never the user's cache
    path, _ = checkpoint
    other = tmp_path / "other.pt"  # a checkpoint of another model, under this model's name
    net = torch_bam.create_model("small_cnn", in_chans=1)
    save_checkpoint(str(other), "bam_small_cnn", net, in_chans=1, **PRE)
    out = str(tmp_path / "m.onnx")
    _refused(["export", str(other), "--to", "onnx", "--out", out], tmp_path, capsys, "missing")
    _refused(["export", str(path), "--to", "tflite", "--out", out], tmp_path, capsys, "tflite")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _refused(
        ["export", str(path), "--to", "folder", "--out", str(blocker / "m")],
        tmp_path,
        capsys,
        "is a file",
    )
    _refused(["export", str(path), "--to", "onnx", "--out", str(tmp_path)], tmp_path, capsys, "")
    # The output is checked before anything is loaded: a tag is not even looked for.
    bad_out = str(blocker / "m.onnx")
    tag = ["export", "bam_resnet50.ptcv_in1k", "--to", "onnx", "--out", bad_out]
    _refused(tag, tmp_path, capsys, "is a file")
    _refused(["export", "nothing_here", "--to", "onnx", "--out", out], tmp_path, capsys, "tag")


def test_refuses_an_export_that_differs(checkpoint, tmp_path, monkeypatch):
    import torch_bam.export as ex

    def wrong(model, path):  # a broken export: one gate's bias off by a little
        path.write_bytes(b"half a file")
        m = ex._folded(model)
        with torch.no_grad():
            m.bams[0].channel_att.gate_c[-1].bias.add_(0.05)
        return m

    monkeypatch.setattr(ex, "_torchscript_runner", wrong)
    with pytest.raises(UsageError, match="differs from the original") as e:
        export(load_source(str(checkpoint[0])), "torchscript", tmp_path / "a" / "m.pt", runs=0)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_published_weights_become_a_folder_that_needs_no_converter(tmp_path):
    """bam_resnet50.ptcv_in1k from a pytorchcv-layout file (random weights, made here)."""
    bamresnet = pytest.importorskip("pytorchcv.models.bamresnet")
    from torch_bam.compat import convert_pytorchcv_state_dict

    torch.manual_seed(0)
    state = bamresnet.bam_resnet50().state_dict()
    weights = tmp_path / "bam_resnet50-0547-a04adf3c.pth"
    torch.save(state, weights)
    out = tmp_path / "bam_resnet50"
    source = load_source("bam_resnet50.ptcv_in1k", file=str(weights))
    report = export(source, "folder", out, batch_sizes=(1,), runs=0)  # one ResNet-50 image
    assert report.max_diff == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"] == {"stride_in_3x3": True, "combine": "product"}
    assert "converter" not in config["pretrained_cfg"]
    assert "published by the weights' authors" in (out / "README.md").read_text()
    loaded = torch_bam.create_model(f"local-dir:{out}", pretrained=True)
    expected = convert_pytorchcv_state_dict(state)
    own = loaded.state_dict()
    assert all(torch.equal(own[k], v) for k, v in expected.items())
