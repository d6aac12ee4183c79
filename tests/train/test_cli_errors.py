"""Bad input to ``torch-bam fit | validate | test``: exit status 2, one line naming the cause and
the fix, no traceback, and nothing written."""

import pytest
import torch

from torch_bam.cli import main
from torch_bam.train import ImageClassifier

from .test_cli_fit import TINY


def _run(capsys, *args):
    rc = main(list(args))
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line_error(rc, err, command, needle):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("torch-bam")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"torch-bam {command}: error: ")
    assert needle in lines[0], err


def _write_checkpoint(path, **kwargs):
    model = ImageClassifier("small_cnn", in_chans=1, **kwargs)
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": "2.6.6"}, path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_broken_checkpoint(tmp_path, capsys, damage, command):
    ckpt = tmp_path / "model.ckpt"
    _write_checkpoint(ckpt)
    data = ckpt.read_bytes()
    broken = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"x" * 99}
    ckpt.write_bytes(broken[damage])
    run = tmp_path / "run"
    rc, err = _run(capsys, command, *TINY, f"--run_dir={run}", f"--ckpt_path={ckpt}")
    _assert_one_line_error(rc, err, command, "model.ckpt")
    assert "truncated, empty or not a checkpoint" in err
    assert not run.exists()


def test_checkpoint_of_another_model(tmp_path, capsys):
    ckpt = tmp_path / "model.ckpt"
    _write_checkpoint(ckpt, num_classes=3)  # the data has 10 classes
    run = tmp_path / "run"
    rc, err = _run(capsys, "validate", *TINY, f"--run_dir={run}", f"--ckpt_path={ckpt}")
    _assert_one_line_error(rc, err, "validate", "does not match")
    assert "[3, " in err and "[10, " in err
    assert not run.exists()


def test_missing_checkpoint_leaves_no_config(tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = _run(capsys, "test", *TINY, f"--run_dir={run}", f"--ckpt_path={tmp_path}/no.ckpt")
    _assert_one_line_error(rc, err, "test", "no.ckpt")
    assert not run.exists()


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = _run(capsys, "fit", *TINY, f"--run_dir={run}", "--resume")
    _assert_one_line_error(rc, err, "fit", "nothing to resume")
    assert not run.exists()


def test_empty_image_folder(tmp_path, capsys):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    run = tmp_path / "run"
    rc, err = _run(
        capsys,
        "fit",
        *TINY[:5],
        f"--run_dir={run}",
        "--data=torch_bam.data.ImageFolderDataModule",
        f"--data.root={tmp_path / 'images'}",
    )
    _assert_one_line_error(rc, err, "fit", "no class folders")
    assert not run.exists()


def test_run_dir_in_use_is_refused(tmp_path, capsys):
    from torch_bam._io import RunDirLock

    run = tmp_path / "run"
    with RunDirLock(run):
        rc, err = _run(capsys, "fit", *TINY, f"--run_dir={run}", "--trainer.max_epochs=1")
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    _assert_one_line_error(rc, err, "fit", "in use")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--config=/nonexistent/recipe.yaml"], "recipe.yaml"),
        (["--bogus_option=1"], "--bogus_option"),
        (["--trainer.max_epochs=abc"], "max_epochs"),
    ],
)
def test_parser_errors_are_one_line(tmp_path, capsys, args, needle):
    # The option parser's own errors: one line and the way to the help, not its 60-line usage.
    run = tmp_path / "run"
    rc, err = _run(capsys, "fit", f"--run_dir={run}", *args)
    _assert_one_line_error(rc, err, "fit", needle)
    assert "torch-bam fit --help" in err and "usage:" not in err
    assert not run.exists()


def test_negative_keep_last_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    rc, err = _run(capsys, "fit", *TINY, f"--run_dir={run}", "--keep_last=-5")
    _assert_one_line_error(rc, err, "fit", "--keep_last -5")
    assert "-1" in err
    assert not run.exists()
