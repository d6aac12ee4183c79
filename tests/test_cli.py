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


def test_cli_example(capsys):
    assert main(["example", "--steps", "5"]) == 0
    assert "step    5/5" in capsys.readouterr().out


def test_cli_requires_a_command():
    with pytest.raises(SystemExit):
        main([])
