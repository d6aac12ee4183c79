"""End-to-end runs of ``torch-bam fit | validate | test`` on tiny cluttered digits."""

import csv
import json
import logging
import os
import re
import warnings

import pytest
import torch
import yaml

from torch_bam.cli import main

TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
    "--seed_everything=0",
    "--data.num_train=96",
    "--data.num_val=32",
    "--data.batch_size=16",
    "--data.canvas_size=24",
    "--data.scale=2",
    "--data.num_fragments=2",
    "--model.model=small_cnn",
    "--model.lr=0.05",
]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _write_config(tmp_path, callbacks):
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return str(cfg)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_fit_reduces_loss_and_writes_run_dir(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")
    info = _Records()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(info)
    # The progress bar on: stdout is not a terminal here, so one plain line per epoch.
    bar = [a for a in TINY if "progress_bar" not in a]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["fit", *bar, f"--run_dir={run}", "--trainer.max_epochs=3"]) == 0
    finally:
        logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(info)
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "train/loss_epoch" in epoch_lines[-1] and "val/top1_err" in epoch_lines[-1]
    assert "train/loss_step" not in out  # an epoch's line gives the epoch's mean, by its name
    assert len(out.splitlines()) < 20, out
    assert not [m for m in info.messages if "Tip" in m]
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not [m for m in messages if "get_last_lr" in m or "Jsonargparse" in m], messages
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss_step")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) >= 10
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    # One name, one number: the console's train/loss_epoch is metrics.csv's, epoch by epoch,
    # and it is the mean of that epoch's step losses (not the last step's).
    logged = _rows(run / "logs" / "metrics.csv")
    for e, line in enumerate(epoch_lines):
        shown = float(re.search(r"train/loss_epoch ([\d.e+-]+),", line).group(1))
        means = [float(r["train/loss_epoch"]) for r in logged if r["train/loss_epoch"]]
        steps = [
            float(r["train/loss_step"])
            for r in logged
            if r["train/loss_step"] and int(r["epoch"]) == e
        ]
        assert shown == float(f"{means[e]:.4g}"), (line, means)
        assert abs(means[e] - sum(steps) / len(steps)) < 1e-5
        assert abs(shown - steps[-1]) > 1e-3  # the last step's loss is another number
    assert (run / "logs" / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["fit"]["val/top1_err"] <= 1
    # The last epoch's mean loss and the last step's, each by its own name, as in metrics.csv.
    assert "train/loss" not in metrics["fit"]
    assert metrics["fit"]["train/loss_epoch"] == pytest.approx(means[-1], rel=1e-6)
    assert metrics["fit"]["train/loss_step"] == pytest.approx(steps[-1], rel=1e-6)
    umask = os.umask(0)
    os.umask(umask)
    for p in (run / "checkpoints").iterdir():  # no temporary files, the umask's mode
        assert p.name.endswith(".ckpt") and p.stat().st_mode & 0o777 == 0o666 & ~umask, p

    # Evaluating the run's checkpoint with the run's own config: the training logs stay.
    fit_logs = {p.name: p.read_bytes() for p in (run / "logs").iterdir()}
    config = run / "logs" / "config.yaml"
    ckpt = f"--ckpt_path={run}/checkpoints/last.ckpt"
    assert main(["validate", f"--config={config}", *TINY, ckpt]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["validate"]
    assert 0 <= val["val/top5_err"] <= val["val/top1_err"] <= 1
    assert val["val/top1_err"] == metrics["fit"]["val/top1_err"]  # the same weights, same images
    assert main(["test", f"--config={config}", *TINY, ckpt]) == 0
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert "test/top1_err" in test and test["test/top1_err"] != val["val/top1_err"]
    assert {p.name: p.read_bytes() for p in (run / "logs").iterdir()} == fit_logs
    assert "val/top1_err" in _rows(run / "validate" / "metrics.csv")[0]
    assert "test/top1_err" in _rows(run / "test" / "metrics.csv")[0]


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    common = [*TINY, "--trainer.max_epochs=2"]
    main(["fit", *common, f"--run_dir={tmp_path / 'straight'}"])
    cut = tmp_path / "cut"
    kill = _write_config(
        tmp_path, [{"class_path": "tests.train._callbacks.SigtermAt", "init_args": {"step": 8}}]
    )
    main(["fit", *common, f"--run_dir={cut}", f"--config={kill}"])
    assert _weights(cut / "checkpoints" / "last.ckpt") is not None
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    # A crash while writing a checkpoint leaves a temporary file: the resumed run removes it.
    stale = cut / "checkpoints" / ".torch-bam-tmp-crashed.tmp"
    stale.write_bytes(b"half a checkpoint")
    main(["fit", *common, f"--run_dir={cut}", "--resume"])
    assert not stale.exists()
    # The resumed run's metrics.csv holds every step once, as the uninterrupted run's does.
    straight_rows = _rows(tmp_path / "straight" / "logs" / "metrics.csv")
    cut_rows = _rows(cut / "logs" / "metrics.csv")
    key = ("epoch", "step")
    assert [[r[k] for k in key] for r in cut_rows] == [[r[k] for k in key] for r in straight_rows]
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = _weights(cut / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-6, msg=k)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    nan = _write_config(
        tmp_path, [{"class_path": "tests.train._callbacks.NaNAt", "init_args": {"step": 7}}]
    )
    rc = main(["fit", *TINY, f"--run_dir={run}", "--trainer.max_epochs=3", f"--config={nan}"])
    assert rc == 1
    assert "loss is nan" in capsys.readouterr().err
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, "the epoch-end checkpoint before the NaN must be kept"
    for c in ckpts:
        for v in _weights(c).values():
            assert torch.isfinite(v.float()).all()
