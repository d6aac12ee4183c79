"""RNG states travel in checkpoints, so a resumed run draws the same random numbers."""

import random

import numpy as np
import torch

from torch_bam.train.callbacks import RNGState


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_state_round_trip_restores_every_generator():
    cb = RNGState()
    torch.manual_seed(1)
    state = cb.state_dict()
    expected = _draw()
    _draw()  # move every generator on
    cb.load_state_dict(state)
    assert _draw() == expected


def test_checkpoint_of_a_fit_holds_the_rng_state(tmp_path):
    from tests.train.test_cli_fit import TINY
    from torch_bam.train.cli import main

    run = tmp_path / "run"
    main(["fit", *TINY, f"--run_dir={run}", "--trainer.max_epochs=1"])  # not 1000 by default
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("RNGState")]
    assert set(state) >= {"python", "numpy", "torch"}
    assert isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8


def test_state_loads_with_weights_only(tmp_path):
    path = tmp_path / "rng.pt"
    torch.save({"rng": RNGState().state_dict()}, path)
    state = torch.load(path, weights_only=True)["rng"]
    expected = _draw()
    RNGState().load_state_dict(state)
    assert _draw() == expected


def test_per_rank_states_load_with_weights_only_and_one_process_takes_rank_0(tmp_path):
    torch.manual_seed(1)
    first = RNGState().state_dict()
    expected = _draw()
    second = RNGState().state_dict()
    path = tmp_path / "rng.pt"
    torch.save({"rng": {"ranks": [first, second]}}, path)  # as a 2-process DDP run saves it
    state = torch.load(path, weights_only=True)["rng"]
    RNGState().load_state_dict(state)
    assert _draw() == expected
