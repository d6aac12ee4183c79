"""``validate`` and ``test`` evaluate a trained checkpoint, say which one, and feed it its data."""

import json

import pytest

from torch_bam.cli import main

from .test_cli_fit import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("evaluation") / "run"
    assert main(["fit", *TINY, f"--run_dir={run}", "--trainer.max_epochs=2"]) == 0  # 6 a time
    return run


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_every_recorded_result_names_its_checkpoint(run):
    ckpts = run / "checkpoints"
    assert _metrics(run)["fit"]["checkpoint"] == {
        "path": str(ckpts / "last.ckpt"),
        "global_step": 12,
        "epoch": 1,
    }
    config = f"--config={run / 'logs' / 'config.yaml'}"
    first = ckpts / "epoch=0-step=6.ckpt"
    assert main(["validate", config, *TINY, f"--ckpt_path={first}"]) == 0
    assert _metrics(run)["validate"]["checkpoint"] == {
        "path": str(first),
        "global_step": 6,
        "epoch": 0,
    }
    assert main(["test", config, *TINY, "--ckpt_path=last"]) == 0  # --resume's choice
    assert _metrics(run)["test"]["checkpoint"] == {
        "path": str(ckpts / "last.ckpt"),
        "global_step": 12,
        "epoch": 1,
    }


@pytest.mark.parametrize("command", ["validate", "test"])
def test_without_a_checkpoint_nothing_untrained_is_evaluated_into_the_run(run, command, capsys):
    before = (run / "metrics.json").read_text()
    config = f"--config={run / 'logs' / 'config.yaml'}"
    assert main([command, config, *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"torch-bam {command}: error: ")
    assert "untrained" in err and "--ckpt_path" in err
    assert (run / "metrics.json").read_text() == before


def test_evaluating_with_other_preprocessing_than_training_is_refused(run, capsys):
    # small_cnn pools globally, so 32x32 canvases would run and be scored without a word.
    before = (run / "metrics.json").read_text()
    ckpt = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    assert main(["validate", *TINY, f"--run_dir={run}", ckpt, "--data.canvas_size=32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "image_size 24" in err and "image_size 32" in err
    assert "logs/config.yaml" in err
    assert (run / "metrics.json").read_text() == before
