import json
import re

import pytest
from PIL import Image

from torch_bam.demo import MODELS, ROWS
from torch_bam.viz import load_checkpoint
from torch_bam.viz.attention import figure_size_px


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from torch_bam.cli import main

    out = tmp_path_factory.mktemp("demo")
    args = ["demo", "--epochs", "1", "--train-size", "64", "--test-size", "32", "--canvas", "24"]
    assert main(args + ["--batch-size", "32", "--no-progress", "--out", str(out)]) == 0
    return out


def test_demo_writes_every_file(run_dir):
    expected = {"report.md", "report.json", "learning_curves.png", "attention.png"}
    expected |= {f"{m}.pt" for m in MODELS}
    assert expected <= {p.name for p in run_dir.iterdir()}
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_demo_pngs_open_with_expected_size(run_dir):
    with Image.open(run_dir / "attention.png") as im:
        assert im.size == figure_size_px(num_images=4, num_bams=2)
    with Image.open(run_dir / "learning_curves.png") as im:
        assert im.size == (800, 320)  # two metrics, 4 x 3.2 inches each at 100 dpi


def test_report_markdown_agrees_with_json(run_dir):
    report = json.loads((run_dir / "report.json").read_text())
    md = (run_dir / "report.md").read_text()
    table = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("metric", "---"):
            table[cells[0]] = cells[1:]
    for key, label in ROWS:
        for name, cell in zip(MODELS, table[label], strict=True):
            value = report["results"][name].get(key)
            if value is None:
                assert cell == "n/a"
                continue
            number = float(re.sub(r"[,%]", "", cell))
            if cell.endswith("%"):
                number /= 100
            decimals = len(cell.rstrip("%").split(".")[1]) if "." in cell else 0
            tol = 0.5 * 10 ** (-decimals) / (100 if cell.endswith("%") else 1)
            assert abs(number - value) <= tol * 1.0001, (label, name, cell, value)
    for name in MODELS:  # one epoch: one point per curve
        assert len(report["history"][name]["train_loss"]) == 1
        assert len(report["history"][name]["val_top1_error"]) == 1
    bam = report["results"]["bam_small_cnn"]
    assert 0 <= bam["pointing_hit_rate"] <= 1 and 0 < bam["pointing_chance"] < 1
    assert bam["parameters"] > report["results"]["small_cnn"]["parameters"]


def test_demo_checkpoint_loads(run_dir):
    model, meta = load_checkpoint(str(run_dir / "bam_small_cnn.pt"))
    assert meta["model"] == "bam_small_cnn" and meta["image_size"] == 24


def test_unknown_dataset_names_the_choices(tmp_path):
    from torch_bam.cli import main

    with pytest.raises(SystemExit, match="cluttered-digits, cifar10, cifar100"):
        main(["demo", "--dataset", "mnist", "--out", str(tmp_path)])


def test_missing_cifar_names_the_demo_flag(tmp_path):
    from torch_bam.cli import main

    with pytest.raises(SystemExit) as info:
        main(["demo", "--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path)])
    msg = str(info.value)
    assert "--data-root" in msg and "--data." not in msg and str(tmp_path) in msg
