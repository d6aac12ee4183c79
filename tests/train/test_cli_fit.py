"""End-to-end runs of ``torch-bam fit | validate | test`` on tiny cluttered digits."""

import json

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
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _write_config(tmp_path, callbacks):
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return str(cfg)


def test_fit_reduces_loss_and_writes_run_dir(tmp_path):
    run = tmp_path / "run"
    main(["fit", *TINY, f"--run_dir={run}", "--trainer.max_epochs=3"])
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert len(losses) >= 10
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert (run / "logs" / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["fit"]["val/top1_err"] <= 1

    main(["validate", *TINY, f"--run_dir={run}", f"--ckpt_path={run}/checkpoints/last.ckpt"])
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["validate"]
    assert 0 <= val["val/top5_err"] <= val["val/top1_err"] <= 1
    main(["test", *TINY, f"--run_dir={run}", f"--ckpt_path={run}/checkpoints/last.ckpt"])
    assert "test/top1_err" in json.loads((run / "metrics.json").read_text())["test"]


def test_sigterm_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    common = [*TINY, "--trainer.max_epochs=2"]
    main(["fit", *common, f"--run_dir={tmp_path / 'straight'}"])
    cut = tmp_path / "cut"
    kill = _write_config(
        tmp_path, [{"class_path": "tests.train._callbacks.SigtermAt", "init_args": {"step": 8}}]
    )
    main(["fit", *common, f"--run_dir={cut}", f"--config={kill}"])
    assert _weights(cut / "checkpoints" / "last.ckpt") is not None
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    main(["fit", *common, f"--run_dir={cut}", "--resume"])
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
