"""The torch-bam command line."""

import pytest

from torch_bam.cli import main
from torch_bam.example import quadrant_hit_rate, run


def test_example_run_learns(capsys):
    result = run(steps=60, batch_size=16, size=24, seed=0)
    assert result["last_loss"] < result["first_loss"]
    assert 0.0 <= result["attention_quadrant_hit_rate"] <= 1.0
    assert "spatial attention peaks" in capsys.readouterr().out


def test_quadrant_hit_rate_on_known_maps():
    import torch

    maps = torch.zeros(4, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    for i, (r, c) in enumerate([(1, 1), (1, 6), (6, 1), (6, 6)]):
        maps[i, 0, r, c] = 1.0
    assert quadrant_hit_rate(maps, labels) == 1.0
    assert quadrant_hit_rate(maps, torch.tensor([3, 2, 1, 0])) == 0.0


def test_cli_example_as_the_guide_shows_it(capsys):
    """<!-- test: getting started example --> (docs/index.md), run here in-process."""
    import shlex

    from tests.docs.markdown_blocks import block_after

    (command,) = block_after("<!-- test: getting started example").strip().splitlines()
    argv = shlex.split(command)
    assert argv[:2] == ["torch-bam", "example"] and "--steps" in argv
    assert main(argv[1:]) == 0
    steps = argv[argv.index("--steps") + 1]
    assert f"step {steps:>4}/{steps}" in capsys.readouterr().out


def test_cli_requires_a_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "torch-bam: error:" in capsys.readouterr().err


# Each bad input, and a word the one-line message must contain (the flag or the cause).
BAD_INPUTS = {
    "profile unknown model": (["profile", "bam_resnet_50"], "unknown model 'bam_resnet_50'"),
    "profile unknown --vs": (["profile", "small_cnn", "--vs", "nope"], "unknown model 'nope'"),
    "profile --input 0": (["profile", "small_cnn", "--input", "0"], "--input"),
    "profile --input 1": (["profile", "resnet18", "--input", "1"], "--input"),
    "profile --input too small for the model": (
        ["profile", "bam_small_cnn", "--input", "3", "--runs", "1"],
        "--input",
    ),
    "profile --runs 0": (["profile", "small_cnn", "--runs", "0"], "--runs"),
    "profile --in-chans 0": (["profile", "small_cnn", "--in-chans", "0"], "--in-chans"),
    "profile --batch 0": (["profile", "small_cnn", "--batch", "0"], "--batch"),
    "profile --num-classes 0": (["profile", "small_cnn", "--num-classes", "0"], "--num-classes"),
    "example --steps 0": (["example", "--steps", "0"], "--steps"),
    "example --steps -3": (["example", "--steps", "-3"], "--steps"),
}


@pytest.mark.parametrize("argv, says", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before doing anything
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"torch-bam {argv[0]}: error: ") and "Traceback" not in err
    assert says in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_suggests_the_close_name(capsys):
    assert main(["profile", "bam_resnet_50"]) == 2
    assert "'bam_resnet50'" in capsys.readouterr().err


def test_misspelled_command_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["exampel"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "torch-bam: error: argument COMMAND: invalid choice: 'exampel'" in err
    assert "Traceback" not in err


def test_bad_flag_value_is_argparse_error_in_the_same_format(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "small_cnn", "--runs", "many"])
    assert exit_.value.code == 2
    assert "torch-bam profile: error: argument --runs: invalid int value: 'many'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("argv", [["--help"], ["profile", "--help"], ["example", "--help"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: torch-bam")


def test_output_piped_into_a_reader_that_leaves_is_not_a_traceback():
    # `torch-bam profile ... | head -1`: the pipe closes before everything is printed.
    import subprocess
    import sys

    code = "import sys; from torch_bam.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "profile",
            "small_cnn",
            "--input",
            "32",
            "--runs",
            "1",
            "--num-classes",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader leaves before anything is printed (as `| head -0`)
    with proc.stderr:
        err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_demo_on_a_full_disk_is_one_line_and_leaves_none_of_its_files(
    tmp_path, capsys, monkeypatch
):
    import errno
    import os
    import stat

    import torch_bam._io as io

    # The disk fills while the demo writes its third file: the first two were written whole.
    fsync, written = io.os.fsync, []

    def fsync_until_full(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a file's data, not a directory entry
            written.append(fd)
            if len(written) >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync_until_full)
    out = tmp_path / "runs" / "demo"
    argv = ["demo", "--epochs", "1", "--seeds", "1", "--train-size", "64", "--val-size", "32",
            "--test-size", "32", "--canvas", "16", "--batch-size", "32", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("torch-bam demo: error: No space left on device writing ")
    assert str(out) in err and "removed" in err
    assert len(written) >= 3  # it did fail on a write, after writing two files
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even runs/
