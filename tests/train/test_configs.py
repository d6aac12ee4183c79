"""Every recipe in configs/ parses with the CLI and names a known model."""

from pathlib import Path

import pytest
import yaml

import torch_bam
from torch_bam.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
# The paper's networks (issue 4); a config may name them before they are registered here.
PAPER_NETWORKS = {
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wrn18_w1_5", "wrn18_w2",
    "resnext50_32x4d", "mobilenet_v1", "mobilenet_v1_0_7", "cifar_resnet50", "preresnet110",
    "wrn28_8", "wrn28_10", "resnext29_8x64d",
}  # fmt: skip
KNOWN = set(torch_bam.list_models()) | PAPER_NETWORKS | {f"bam_{n}" for n in PAPER_NETWORKS}


def test_there_is_a_recipe_per_network_baseline_and_bam():
    names = {p.stem for p in CONFIGS}
    for net in PAPER_NETWORKS:
        data = (
            "cifar100"
            if net in {"cifar_resnet50", "preresnet110"} or "28" in net or "29" in net
            else "imagenet"
        )
        assert {f"{net}_{data}", f"bam_{net}_{data}"} <= names, net


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_parses_and_names_a_known_model(path, capsys):
    header = path.read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header)
    text = " ".join(header)
    assert "epochs" in text and "batch size" in text and "learning rate" in text
    cfg = yaml.safe_load(path.read_text())
    assert cfg["model"]["model"] in KNOWN
    with pytest.raises(SystemExit) as exit_:  # parse only: keys and types checked, nothing built
        main(["fit", f"--config={path}", "--print_config"])
    assert exit_.value.code in (0, None)
    assert f"model: {cfg['model']['model']}" in capsys.readouterr().out
