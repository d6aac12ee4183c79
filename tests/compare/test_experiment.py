"""``torch-bam compare`` end to end at tiny sizes: files, variants, costs, maps, bad options."""

import json

import pytest

from torch_bam.cli import main
from torch_bam.compare import build_variant
from torch_bam.compare.claims import summarize
from torch_bam.flops import count_params
from torch_bam.peers import attention_variants

pytest.importorskip("lightning")
pytest.importorskip("matplotlib")
pytest.importorskip("timm")

VARIANTS = "none,bam-spatial,cbam"
TINY = ["--variants", VARIANTS, "--epochs", "1", "--seeds", "2", "--train-size", "32"]
TINY += ["--val-size", "16", "--test-size", "32", "--canvas", "24", "--batch-size", "16"]
TINY += ["--cost-turns", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    (out / "report.md").write_text("an earlier run's")
    assert main(["compare", *TINY, "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_writes_the_report_the_pictures_and_nothing_else(run):
    out, report = run
    names = {p.name for p in out.iterdir()}
    pictures = {"error_vs_cost.png", "learning_curves.png", "attention.png"}
    assert names == {"report.md", "report.json", *pictures}  # no checkpoints, no temporaries
    assert set(report["files"].values()) == pictures
    text = (out / "report.md").read_text()
    assert text.startswith("# torch-bam compare") and "an earlier run's" not in text
    for name in pictures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    assert report["machine"] in text


def test_every_variant_every_seed_and_its_cost(run):
    _, report = run
    assert list(report["variants"]) == VARIANTS.split(",") and report["reference"] == "none"
    for name, r in report["variants"].items():
        assert len(r["test_top1_error"]) == 2 and all(0 <= e <= 1 for e in r["test_top1_error"])
        assert r["train_step_ratio"] > 0 and r["inference_ratio"] > 0
        model = build_variant("small_cnn", attention_variants()[name], 10, 1, 24)
        assert r["parameters"] == count_params(model)
    v = report["variants"]
    assert v["cbam"]["parameters"] > v["none"]["parameters"]
    assert v["bam-spatial"]["macs"] > v["none"]["macs"]
    assert v["none"]["train_step_ratio"] == 1.0


def test_pointing_game_of_every_spatial_map_beside_controls(run):
    _, report = run
    pointing = report["pointing"]
    for key in ("bam-spatial", "cbam", "untrained cbam", "centre prior", "none Grad-CAM"):
        assert len(pointing[key]) == 2 and all(0 <= h <= 1 for h in pointing[key])
    assert "none" not in pointing  # no attention map: it gives the controls
    assert set(report["claims"]["localisation"]) == {"bam-spatial", "cbam"}


def test_claims_follow_the_spread_rule(run):
    _, report = run
    for pair, c in report["claims"]["error"].items():
        a, b = pair.split(" vs ")
        ea, eb = (report["variants"][n]["test_top1_error"] for n in (a, b))
        spread = max(summarize(ea)["std"], summarize(eb)["std"])
        assert c["exceeds"] == (abs(summarize(ea)["mean"] - summarize(eb)["mean"]) > spread)
        assert ("more than" if c["exceeds"] else "within") in c["sentence"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--variants", "none,gc"], "unknown --variants gc"),
        (["--variants", "none"], "two or more"),
        (["--backbone", "vgg"], "unknown --backbone"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--devices", "x"], "--devices"),
    ],
)
def test_bad_options_one_line_exit_2_nothing_written(args, words, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not out.exists()
