"""Bad input: a clear message naming the cause, and no run directory left behind."""

import pytest
import torch
from PIL import Image

from torch_bam.cli import main

from .test_cli_fit import TINY


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model.model=bam_resnet5"], "unknown model 'bam_resnet5'"),
        (["--data=torch_bam.data.ImageFolderDataModule", "--data.root={tmp}/none"], "no data"),
        (["--data=torch_bam.data.CIFAR100DataModule", "--data.root={tmp}/none"], "no data"),
    ],
)
def test_bad_input_has_clear_message_and_writes_nothing(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    args = [a.format(tmp=tmp_path) for a in args]
    # With the epochs given: Lightning's "max_epochs was not set" is about the input, not ours.
    assert main(["fit", *TINY[:5], "--trainer.max_epochs=1", f"--run_dir={run}", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not run.exists()


def test_config_typo_is_rejected_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", *TINY, f"--run_dir={run}", "--model.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "lrr" in err and err.count("\n") == 1  # one line, not the parser's usage
    assert not run.exists()


def test_unreadable_image_is_named(tmp_path, capsys):
    root = tmp_path / "images"
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8).numpy()).save(
                    d / f"{i}.png"
                )
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    args = [
        *TINY[:5],
        "--model.model=small_cnn",
        f"--run_dir={tmp_path / 'run'}",
        "--data=torch_bam.data.ImageFolderDataModule",
        f"--data.root={root}",
        "--data.image_size=8",
        "--data.resize_size=8",
        "--data.batch_size=5",
        "--data.num_workers=0",
        "--trainer.max_epochs=1",
    ]
    assert main(["fit", *args]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_training_split_smaller_than_a_batch_is_refused(tmp_path, capsys):
    # Training drops the last incomplete batch: 12 images in batches of 16 would train nothing.
    run = tmp_path / "run"
    args = [*TINY, "--data.num_train=12", "--trainer.max_epochs=1", f"--run_dir={run}"]
    assert main(["fit", *args]) == 2
    # The error's line (Lightning's INFO lines go to stderr too).
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("torch-bam")]
    assert len(lines) == 1 and "12 images" in lines[0] and "--data.batch_size 16" in lines[0]
    assert not run.exists()
