"""The models through timm.create_model and torch.hub.load."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torch_bam

ROOT = Path(__file__).resolve().parents[2]


def run(code):
    env_path = str(ROOT / "src")
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": ""},
        timeout=120,
    )


def test_timm_create_model_after_import_torch_bam():
    pytest.importorskip("timm")
    # torch_bam first, timm after: registration happens when timm is imported, not before.
    code = (
        "import sys, torch_bam\n"
        "assert 'timm' not in sys.modules\n"
        "import timm\n"
        "m = timm.create_model('bam_resnet50', num_classes=10)\n"
        "assert type(m).__module__ == 'torch_bam.models.resnet', type(m)\n"
        "assert m.layer2[0].conv1.stride == (2, 2)\n"
        # timm's own resnet50 is untouched; ours is there under a prefixed name.
        "assert type(timm.create_model('resnet50')).__module__.startswith('timm')\n"
        "assert type(timm.create_model('torch_bam_resnet50')).__module__.startswith('torch_bam')\n"
        "print('ok')\n"
    )
    result = run(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_timm_already_imported():
    timm = pytest.importorskip("timm")
    from torch_bam.models._timm import install

    install()
    model = timm.create_model("bam_preresnet110")
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 100)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("bam_resnet18", pretrained=True)


def test_torch_hub_load_local():
    model = torch.hub.load(str(ROOT), "bam_resnet18", source="local", num_classes=5)
    assert isinstance(model, torch.nn.Module)
    assert sum(isinstance(m, torch_bam.BAM) for m in model.modules()) == 3
    assert model.fc.out_features == 5
