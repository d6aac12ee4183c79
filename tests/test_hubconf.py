"""hubconf.py, loaded the way torch.hub loads it from a local clone."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_hub_offers_every_model():
    import importlib.util

    import torch_bam

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert set(torch_bam.list_models()) <= entries


def test_hub_pretrained_without_weights_says_so_and_how_to_load_the_official_file():
    with pytest.raises(ValueError, match="no pretrained weights.*official_bam_resnet"):
        torch.hub.load(str(ROOT), "bam_resnet18", source="local", pretrained=True)


def test_hub_lists_only_models():
    import importlib.util

    import torch_bam

    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub.list's rule (it takes GitHub repositories only): every public callable.
    listed = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert sorted(listed) == torch_bam.list_models()
