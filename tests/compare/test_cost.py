"""compare.cost: BAM's time beside its floor's, measured in turns, and said in words."""

from statistics import median

import torch

from torch_bam import create_model
from torch_bam.compare.cost import FLOOR, measure, sentence
from torch_bam.floor import bam_floor


def _measured(turns=3):
    torch.manual_seed(0)
    base = create_model("small_cnn", num_classes=10, in_chans=1)
    bam = create_model("bam_small_cnn", num_classes=10, in_chans=1)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    nets = {"small_cnn": base, "bam_small_cnn": bam, FLOOR: bam_floor(bam)}
    return measure(nets, x, y, turns=turns, warmup=1)


def test_every_network_is_timed_in_every_turn_and_ratios_are_per_turn_medians():
    cost = _measured(turns=3)
    assert cost["batch"] == 4 and cost["turns"] == 3
    base = cost["networks"]["small_cnn"]
    for name in ("bam_small_cnn", FLOOR):
        for kind in ("train_step", "inference"):
            times = cost["networks"][name][f"{kind}_s"]
            assert len(times) == 3 and all(t > 0 for t in times)
            per_turn = [t / b for t, b in zip(times, base[f"{kind}_s"], strict=True)]
            assert cost["ratios"][kind][name] == median(per_turn)
            assert cost["networks"][name][f"median_{kind}_s"] == median(times)
    assert "small_cnn" not in cost["ratios"]["train_step"]  # the reference itself


def test_the_sentence_gives_the_measured_numbers():
    cost = _measured(turns=1)
    text = sentence(cost, "small_cnn", "bam_small_cnn", macs_ratio=1.0237)
    train, infer = cost["ratios"]["train_step"], cost["ratios"]["inference"]
    assert "adds 2.4% to the multiply-adds" in text
    for value in (train["bam_small_cnn"], train[FLOOR], infer["bam_small_cnn"], infer[FLOOR]):
        assert f"{value:.2f}x" in text


def test_the_sentence_follows_the_numbers_it_is_given():
    cost = {
        "batch": 64,
        "turns": 10,
        "ratios": {
            "train_step": {"bam": 1.31, FLOOR: 1.08},
            "inference": {"bam": 1.2, FLOOR: 1.05},
        },
    }
    text = sentence(cost, "base", "bam", macs_ratio=1.022)
    assert "took 1.31x as long as base's, and an inference 1.20x" in text
    assert "would take 1.08x and 1.05x" in text
    assert "the remaining 0.23x of a training step is overhead of the implementation" in text
    assert "The floor itself costs more" in text  # 8% against 2.2% of the multiply-adds
    cost["ratios"]["train_step"] = {"bam": 1.02, FLOOR: 1.03}
    text = sentence(cost, "base", "bam", macs_ratio=1.022)
    assert "no slower than its floor" in text and "remaining" not in text
    assert "The floor itself" not in text
