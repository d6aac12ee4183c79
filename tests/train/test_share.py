"""The round trip from training to shipping: a tiny ``torch-bam fit`` leaves ``<run_dir>/model``
(timm's folder, with a model card), and ``torch-bam export`` turns the run into ONNX and
TorchScript; each loads back (create_model and timm "local-dir:", onnxruntime,
torch.jit.load) and gives the trained network's outputs within its format's tolerance."""

import json
import os

import pytest
import torch

import torch_bam
from torch_bam.cli import main
from torch_bam.export import tolerance
from torch_bam.viz.checkpoint import load_checkpoint

pytest.importorskip("safetensors")
TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--seed_everything=0",
    "--data.num_train=32",
    "--data.num_val=16",
    "--data.batch_size=16",
    "--data.canvas_size=24",
    "--data.scale=2",
    "--data.num_fragments=2",
    "--model.model=bam_small_cnn",
    "--model.lr=0.05",
    "--trainer.max_epochs=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("share") / "run"
    assert main(["fit", *TINY, f"--run_dir={run}"]) == 0
    return run


def _trained(run):
    """The network in the checkpoint ModelCheckpoint kept as best, and its images."""
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [s for k, s in last["callbacks"].items() if "Checkpoint" in k]
    model, _ = load_checkpoint(state["best_model_path"])
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(n, 1, 24, 24, generator=g) for n in (2, 5)]
    with torch.no_grad():
        return model, images, [model(x) for x in images]


def test_fit_leaves_a_shareable_folder_with_a_model_card(run):
    folder = run / "model"
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "bam_small_cnn" and config["num_classes"] == 10
    assert config["pretrained_cfg"]["input_size"] == [1, 24, 24]
    card = (folder / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())["fit"]
    assert f"val/top1_err {metrics['val/top1_err']:.4f}" in card
    assert str(run / "metrics.json") in card and "cluttered-digits" in card
    # The checkpoints stay ModelCheckpoint's: the folder added none.
    assert all(p.suffix == ".ckpt" for p in (run / "checkpoints").iterdir())
    model, images, refs = _trained(run)
    ours = torch_bam.create_model(f"local-dir:{folder}", pretrained=True).eval()
    timm = pytest.importorskip("timm")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        for x, ref in zip(images, refs, strict=True):
            assert torch.equal(ours(x), ref) and torch.equal(theirs(x), ref)


def test_export_the_run_to_onnx_and_torchscript(run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx, script = tmp_path / "m.onnx", tmp_path / "m.pt"
    assert main(["export", str(run), "--to", "onnx", "--out", str(onnx), "--runs", "0"]) == 0
    ckpt = str(run / "checkpoints" / "last.ckpt")
    assert main(["export", ckpt, "--to", "torchscript", "--out", str(script), "--runs", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("largest difference from the original") == 2
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.pt"]
    _, images, refs = _trained(run)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    loaded = torch.jit.load(str(script))
    for x, ref in zip(images, refs, strict=True):  # two batch sizes: the batch is dynamic
        (y,) = session.run(None, {"image": x.numpy()})
        assert (torch.from_numpy(y) - ref).abs().max() <= tolerance("onnx", ref)
        with torch.no_grad():
            assert (loaded(x) - ref).abs().max() <= tolerance("torchscript", ref)
