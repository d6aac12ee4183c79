"""A run stopped mid-epoch and resumed draws exactly the random numbers of an uninterrupted one:
random augmentation in the training data and noise in the training step, with or without
worker processes."""

import pytest
import torch
import yaml

from torch_bam.cli import main

from .test_cli_fit import TINY


def _cb(name, **init_args):
    return {"class_path": f"tests.train._callbacks.{name}", "init_args": init_args}


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_and_step_noise_after_mid_epoch_resume_match_uninterrupted_run(
    tmp_path, workers
):
    common = [
        "--data=tests.train._data.AugmentedDigits",  # first: the options below are for it
        *TINY,
        f"--data.num_workers={workers}",
        "--trainer.max_epochs=2",
    ]

    def fit(run, callbacks, *args):
        cfg = tmp_path / f"{run.name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
        cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        return main(["fit", *common, f"--run_dir={run}", f"--config={cfg}", *args])

    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert fit(straight, [_cb("NoisyBatch")]) == 0
    # 96 samples in batches of 16: 6 steps an epoch; stop after step 8, in the second epoch.
    assert fit(cut, [_cb("NoisyBatch"), _cb("SigtermAt", step=8)]) == 143
    ckpt = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    (loader_state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["epoch"] == 1 and loader_state["batches"] == 2
    (rng,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("RNGState")]

    first = tmp_path / "first_batch_rng.pt"
    resume = [_cb("SaveFirstBatchRNG", path=str(first)), _cb("NoisyBatch")]
    # The resume runs under another seed_everything: the run's own seed travels in the
    # checkpoint (loader state), so the data order and augmentation still follow it.
    assert fit(cut, resume, "--resume", "--seed_everything=7") == 0
    # Nothing drew from the global RNG between the restore and the first resumed step.
    assert torch.equal(torch.load(first, weights_only=True), rng["torch"])
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)
    assert b["global_step"] == a["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
