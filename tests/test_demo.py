"""``torch-bam demo`` end to end on tiny data: files, controls, splits, claims, bad input."""

import json
import os
import re
import statistics

import pytest
from PIL import Image

from torch_bam._io import RunDirLock
from torch_bam.cli import main
from torch_bam.compare.claims import summarize
from torch_bam.demo import MODELS
from torch_bam.demo.report import epoch_choice_sentence, error_sentence, localisation_verdict
from torch_bam.viz import load_checkpoint
from torch_bam.viz.pointing_maps import figure_size_px

TINY = ["--epochs", "2", "--seeds", "2", "--train-size", "64", "--val-size", "32"]
TINY += ["--test-size", "48", "--canvas", "24", "--batch-size", "32", "--no-progress"]
CONTROLS = {
    "chance (box area / image area)",
    "centre prior",
    "image intensity",
    "small_cnn feature norm",
    "small_cnn Grad-CAM",
    "untrained bam_small_cnn",
}
PICTURES = {"learning_curves.png", "error_vs_cost.png", "attention.png"}
STALE = ["small_cnn.pt", "bam_small_cnn-seed9.pt", "attention.png", ".torch-bam-tmp-x.tmp"]


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    """One tiny demo, recording when each split is built and when each model is trained."""
    import lightning as L

    import torch_bam.data

    out = tmp_path_factory.mktemp("demo")
    for name in STALE:  # an earlier run's files, and a file of the user's
        (out / name).write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    events, sets = [], {}
    real_cd, real_fit = torch_bam.data.ClutteredDigits, L.Trainer.fit

    def cluttered(split, *args, **kwargs):
        events.append(("data", split))
        sets.setdefault(split, []).append(real_cd(split, *args, **kwargs))
        return sets[split][-1]

    def fit(self, module, *args, **kwargs):
        events.append(("fit", type(module.model).__name__))
        return real_fit(self, module, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_bam.data, "ClutteredDigits", cluttered)
        mp.setattr(L.Trainer, "fit", fit)
        assert main(["demo", *TINY, "--out", str(out)]) == 0
    return out, events, sets


@pytest.fixture(scope="module")
def report(traced_run):
    return json.loads((traced_run[0] / "report.json").read_text())


def test_writes_every_file_and_nothing_stale(traced_run, report):
    out = traced_run[0]
    names = {p.name for p in out.iterdir()}
    expected = {"report.md", "report.json", *PICTURES}
    expected |= {f"{m}-seed{s}.pt" for m in MODELS for s in (0, 1)}
    assert expected <= names
    assert set(report["checkpoints"]) == {n for n in names if n.endswith(".pt")}
    assert not {"small_cnn.pt", "bam_small_cnn-seed9.pt"} & names  # the earlier run's files
    assert not [n for n in names if n.endswith(".tmp")]
    assert (out / "notes.txt").read_text() == "mine"  # not the demo's: kept
    assert (out / "attention.png").read_bytes() != b"old"
    # Four test images; five maps (intensity, feature norm, Grad-CAM, untrained BAM, BAM) and
    # the channel panel; two learning-curve panels.
    with Image.open(out / "attention.png") as im:
        assert im.size == figure_size_px(num_images=4, num_maps=5, channels=True)
    with Image.open(out / "learning_curves.png") as im:
        assert im.size == (920, 360)


def test_checkpoints_load_and_are_the_tested_models(traced_run, report):
    model, meta = load_checkpoint(str(traced_run[0] / "bam_small_cnn-seed1.pt"))
    assert meta["model"] == "bam_small_cnn" and meta["image_size"] == 24
    assert meta["extra"]["seed"] == 1


def test_test_split_is_built_once_after_all_training(traced_run):
    _, events, sets = traced_run
    fits = [i for i, e in enumerate(events) if e[0] == "fit"]
    tests = [i for i, e in enumerate(events) if e == ("data", "test")]
    assert len(fits) == 2 * len(MODELS) and len(tests) == 1
    assert tests[0] > fits[-1]
    # Validation comes before training, from other source digits than the test split.
    assert events.index(("data", "val")) < fits[0]
    val, test = sets["val"][0], sets["test"][0]
    assert not set(val.sources.tolist()) & set(test.sources.tolist())
    assert not set(sets["train"][0].sources.tolist()) & set(test.sources.tolist())


def test_report_has_every_control_and_models_alternate(traced_run, report):
    pointing = report["pointing"]
    assert set(pointing) == CONTROLS | {"bam_small_cnn"}
    assert all(len(v) == 2 and all(0 <= x <= 1 for x in v) for v in pointing.values())
    md = (traced_run[0] / "report.md").read_text()
    for name in pointing:
        assert f"| {name} |" in md
    # The timed turns alternate: baseline first for seed 0, BAM first for seed 1.
    assert report["timing"]["order"] == [
        "small_cnn (seed 0)",
        "bam_small_cnn (seed 0)",
        "bam_small_cnn (seed 1)",
        "small_cnn (seed 1)",
    ]
    for m in MODELS:
        t = report["timing"]["models"][m]
        assert t["p25_s"] <= t["median_s"] <= t["p75_s"] and len(t["per_turn_median_s"]) == 2
    assert "bam_small_cnn / small_cnn" in md


def test_claims_in_the_report_follow_from_its_numbers(traced_run, report):
    pointing = dict(report["pointing"])
    bam = summarize(pointing.pop("bam_small_cnn"))
    best = max(pointing, key=lambda k: summarize(pointing[k])["mean"])
    spread = max(bam["std"], summarize(pointing[best])["std"])
    claimed = bam["mean"] - summarize(pointing[best])["mean"] > spread
    loc = report["claims"]["localisation"]["bam_small_cnn"]
    assert loc["claimed"] == claimed and loc["best_control"] == best
    md = (traced_run[0] / "report.md").read_text()
    assert localisation_verdict(report) in md and error_sentence(report) in md
    assert all(f"- {s}" in md for s in loc["against_each_control"])
    errors = [report["variants"][m]["test_top1_error"] for m in MODELS]
    diff = summarize(errors[1])["mean"] - summarize(errors[0])["mean"]
    spread = max(summarize(e)["std"] for e in errors)
    error = report["claims"]["error"]["bam_small_cnn vs small_cnn"]
    assert error["exceeds"] == (abs(diff) > spread)


def test_report_tables_agree_with_json(traced_run, report):
    md = (traced_run[0] / "report.md").read_text()
    for m in MODELS:
        per_seed = ", ".join(f"{100 * v:.1f}%" for v in report["variants"][m]["test_top1_error"])
        assert per_seed in md
        assert f"{report['variants'][m]['parameters']:,}" in md
    for name, values in report["pointing"].items():
        assert f"| {name} | " in md and ", ".join(f"{100 * v:.1f}%" for v in values) in md
    assert len(report["history"]["small_cnn"]) == 2  # one curve per seed
    assert all(len(h["val/top1_err"]) == 2 for h in report["history"]["small_cnn"])
    assert all(len(h["train/loss_epoch"]) == 2 for h in report["history"]["small_cnn"])
    # What the choice of epoch did, from the chosen epochs report.json records.
    assert epoch_choice_sentence(report["variants"], report["config"]["epochs"]) in md


def test_cost_paragraph_gives_the_measured_macs_time_and_floor(traced_run, report):
    md = (traced_run[0] / "report.md").read_text()
    cost = report["cost"]
    base, bam = MODELS
    # The MACs are the models' own, and the time ratios are the recorded turns' medians.
    macs = {m: report["variants"][m]["macs"] for m in MODELS}
    macs_ratio = macs[bam] / macs[base]
    nets = cost["networks"]
    for name in (bam, "floor"):
        for kind in ("train_step", "inference"):
            times, ref = nets[name][f"{kind}_s"], nets[base][f"{kind}_s"]
            turns = [t / b for t, b in zip(times, ref, strict=True)]
            assert len(turns) == cost["turns"]
            assert cost["ratios"][kind][name] == pytest.approx(statistics.median(turns))
    section = md[md.index("## What BAM costs") :]
    assert all(f"| {macs[m] / 1e6:.2f} |" in section for m in MODELS)
    assert f"BAM adds {100 * (macs_ratio - 1):.1f}% to the multiply-adds" in section
    assert f"a training step of {bam} took {cost['ratios']['train_step'][bam]:.2f}x" in section
    assert f"its floor) would take {cost['ratios']['train_step']['floor']:.2f}x" in section
    assert f"{report['timing']['ratios'][bam]['median_ratio']:.2f}x" in section


# The demo is compare's first case: one engine, so the same numbers, claims and pictures.

NAMES = {"none": "small_cnn", "bam": "bam_small_cnn"}  # compare's variants, the demo's names


def _as_demo(value):
    """A value of compare's report with its variants under the demo's names (the networks')."""
    text = json.dumps(value)
    for variant, network in NAMES.items():
        text = re.sub(rf"\b{variant}\b", network, text)
    return json.loads(text)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """``torch-bam compare`` with the demo's backbone, variants, seeds and sizes."""
    out = tmp_path_factory.mktemp("compare")
    args = ["--backbone", "small_cnn", "--variants", ",".join(NAMES), *TINY, "--cost-turns", "2"]
    assert main(["compare", *args, "--out", str(out)]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_the_demo_measures_and_claims_what_compare_does(report, compared):
    _, other = compared
    assert list(other["variants"]) == list(NAMES) and list(report["variants"]) == list(MODELS)
    same = ["parameters", "macs", "test_top1_error", "val_top1_error_best", "best_epoch"]
    same += ["kind", "placement", "module_kwargs", "network"]
    for variant, network in NAMES.items():
        mine, theirs = report["variants"][network], other["variants"][variant]
        assert {k: mine[k] for k in same} == {k: theirs[k] for k in same}, network
        assert mine["network"] == network
    assert report["history"] == _as_demo(other["history"])  # the same training, epoch by epoch
    assert report["pointing_layer"] == other["pointing_layer"]
    assert report["pointing"] == _as_demo(other["pointing"])  # every control, every seed
    assert report["claims"] == _as_demo(other["claims"])  # the same claims, in the same words
    assert report["claims"]["localisation"]  # (there was a pointing game to claim from)


def test_both_commands_draw_the_same_pictures(traced_run, report, compared):
    out, other = compared
    assert set(report["files"].values()) == set(other["files"].values()) == PICTURES
    for name in PICTURES:
        with Image.open(traced_run[0] / name) as mine, Image.open(out / name) as theirs:
            assert mine.size == theirs.size, name
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in PICTURES)


# Bad input: one line on stderr, exit status 2, nothing written.


def _fails_cleanly(capsys, tmp_path, args, *needles):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("torch-bam demo: error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run directory left
    return err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--train-size", "2"], "--train-size 2 is smaller than --batch-size 64"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--batch-size", "1", "--train-size", "8"], "--batch-size 1"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--seeds", "-1"], "--seeds must be positive"),
        (["--train-size", "0"], "--train-size must be positive"),
        (["--val-size", "0"], "--val-size must be positive"),
        (["--test-size", "0"], "--test-size must be positive"),
        (["--canvas", "0"], "--canvas must be positive"),
        (["--canvas", "8"], "--canvas 8 is too small"),
        (["--seed", "-3"], "--seed must be 0 or more"),
        (["--dataset", "mnist"], "cluttered-digits, cifar10, cifar100"),
    ],
)
def test_bad_options_fail_cleanly(capsys, tmp_path, args, needle):
    _fails_cleanly(capsys, tmp_path, [*args, "--out", str(tmp_path / "run")], needle)


def test_out_that_is_a_file_or_below_one(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    _fails_cleanly(capsys, tmp_path, ["--out", str(tmp_path / "f")], "is a file")
    _fails_cleanly(capsys, tmp_path, ["--out", str(tmp_path / "f" / "run")], "is a file")
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_directory(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _fails_cleanly(capsys, ro, ["--out", str(ro / "run")], "not writable")


def test_missing_cifar_names_the_demo_flag(capsys, tmp_path):
    err = _fails_cleanly(
        capsys,
        tmp_path,
        ["--dataset", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "r")],
        "--data-root",
        str(tmp_path),
    )
    assert "--data." not in err


def test_missing_imagefolder_names_the_dataset_flag(capsys, tmp_path):
    err = _fails_cleanly(
        capsys,
        tmp_path,
        ["--dataset", f"imagefolder:{tmp_path / 'nope'}", "--out", str(tmp_path / "r")],
        "--dataset imagefolder:PATH",
    )
    assert "--data-root" not in err and "--data." not in err


def test_a_second_demo_on_the_same_out_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    with RunDirLock(out):
        assert main(["demo", *TINY, "--out", str(out)]) == 2
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the holder's, untouched
    err = capsys.readouterr().err
    assert "in use" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []  # released: no lock file left


def test_a_run_that_fails_midway_leaves_no_directory(tmp_path, monkeypatch):
    import torch_bam.compare.engine as engine

    def crash(*args, **kwargs):
        raise RuntimeError("killed while training")

    monkeypatch.setattr(engine, "_run_locked", crash)
    with pytest.raises(RuntimeError, match="killed"):
        main(["demo", *TINY, "--out", str(tmp_path / "a" / "run")])
    assert list(tmp_path.iterdir()) == []


def test_piped_output_is_a_line_per_epoch_without_tips(tmp_path):
    # A log file or a pipe (not a terminal): no progress-bar redraws, no Lightning tips, no
    # per-run hardware banner; one plain line per epoch instead.
    import subprocess
    import sys

    args = [a for a in TINY if a != "--no-progress"]
    args[args.index("--seeds") + 1] = "1"
    code = "import sys; from torch_bam.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "demo", *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "it/s" not in out and "\r" not in out
    assert "Tip:" not in out and "GPU available" not in out
    assert out.count("epoch 2/2") == 2  # one line for each model's last epoch
    # One name, one number: each epoch line's values are report.json's under the same names.
    import json
    import re

    report = json.loads((tmp_path / "run" / "report.json").read_text())
    model, shown = None, {m: {} for m in MODELS}
    for line in proc.stdout.splitlines():
        if line.startswith("training "):
            model = line.split()[1].rstrip(",")
        elif line.startswith("epoch "):
            for name, value in re.findall(r"([\w/]+) ([\d.e+-]+)[,(]?", line.split(": ", 1)[1]):
                shown[model].setdefault(name, []).append(float(value))
    for m in MODELS:
        (history,) = report["history"][m]
        assert set(history) <= set(shown[m]), (shown[m], history)
        for name, values in history.items():
            assert shown[m][name] == [float(f"{v:.4g}") for v in values], (m, name)


def test_a_torchvision_of_another_torch_ends_in_one_line(tmp_path):
    # A torchvision built for another torch fails while it is imported (here: as it does when
    # its compiled operators do not match); the demo says so in one line, naming both versions.
    import subprocess
    import sys

    import torch

    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n'
    )
    (fake / "torchvision-0.0.1.dist-info").mkdir()
    (fake / "torchvision-0.0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchvision\nVersion: 0.0.1\nRequires-Dist: torch (==1.0.0)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), *sys.path]))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch_bam", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "torchvision 0.0.1, which asks for torch ==1.0.0," in err
    assert f"installed torch {torch.__version__}" in err and "nms does not exist" in err
    assert "pip install --force-reinstall torch==" in err
    assert not out.exists()
