"""Every recipe in configs/ parses with the CLI and names a known model."""

import re
from pathlib import Path

import pytest
import yaml

import torch_bam
from torch_bam.cli import main
from torch_bam.train.cli import import_string

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
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"] == cfg["model"]["model"]
    # The batch size the header states is the one the recipe runs with.
    batch = int(re.search(r"batch size (\d+)", text).group(1))
    data = printed["data"]
    assert import_string(data["class_path"])(**data["init_args"]).batch_size == batch


def test_recipe_pointed_at_other_data_takes_that_data_defaults(capsys):
    recipe = CONFIGS[0].parent / "bam_resnet50_imagenet.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "fit",
                f"--config={recipe}",
                "--data=torch_bam.data.ClutteredDigitsDataModule",
                "--print_config",
            ]
        )
    assert exit_.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["class_path"] == "torch_bam.data.ClutteredDigitsDataModule"
    data = import_string(cfg["data"]["class_path"])(**cfg["data"]["init_args"])
    assert data.batch_size == 64 and data.num_workers == 0  # the digits' own, not ImageNet's
    # Set from the data, not options: the printed config no longer claims 3 channels.
    assert cfg["model"].get("in_chans", 1) == 1 and cfg["model"].get("num_classes", 10) == 10


def test_recipe_batch_size_set_by_the_user_is_kept(capsys):
    recipe = CONFIGS[0].parent / "bam_resnet50_imagenet.yaml"
    with pytest.raises(SystemExit):
        main(["fit", f"--config={recipe}", "--data.batch_size=32", "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["init_args"]["batch_size"] == 32


def test_fit_help_lists_resume_and_warns_nothing(monkeypatch, capsys):
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", ["torch-bam", "fit", "--help"])  # as from a shell
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        main(sys.argv[1:])
    out = capsys.readouterr().out
    assert out.startswith("usage: torch-bam [options] fit")
    assert "--resume" in out
    assert not [w for w in caught if "args" in str(w.message)], [str(w.message) for w in caught]
