import json
import re

import torch
from torch import nn

from tests.helpers import bam_param_count
from torch_bam import BAM
from torch_bam.cli import main
from torch_bam.profile import (
    Profile,
    format_profiles,
    paired_ratio,
    profile_model,
    profile_models,
    time_in_turns,
)

C, R, H, W = 8, 2, 8, 8


def _tiny():
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), BAM(C, reduction_ratio=R))


def test_profile_matches_hand_count():
    h = C // R
    conv_macs = C * 3 * 9 * H * W
    bam_macs = (
        2 * C * h  # channel MLP: Linear(C, h) and Linear(h, C)
        + C * h * H * W  # 1x1 reduce
        + 2 * 9 * h * h * H * W  # two dilated 3x3
        + h * H * W  # final 1x1
    )
    p = profile_model(_tiny(), (3, H, W), batch=1, runs=1)
    assert p.params == C * 3 * 9 + bam_param_count(C, R)
    assert p.macs == conv_macs + bam_macs
    [block] = p.bams
    assert block.params == bam_param_count(C, R)
    assert block.macs == bam_macs
    assert block.latency_ms > 0 and p.latency_ms > 0


def test_saved_activations_grow_with_batch_and_leave_model_alone():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a2 = profile_model(model, (3, H, W), batch=2, runs=1).saved_activation_bytes
    a4 = profile_model(model, (3, H, W), batch=4, runs=1).saved_activation_bytes
    # At least the conv output [B, C, H, W] float32 is saved for backward.
    assert a2 >= 2 * C * H * W * 4
    assert a4 > a2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_vs_table_has_ratio_and_bam_share():
    text = format_profiles(
        profile_models([("plain", nn.Conv2d(3, C, 3)), ("bam", _tiny())], (3, H, W), runs=3)
    )
    assert "ratio bam / plain" in text and "BAM blocks in bam" in text
    assert "second / first (bam / plain)" in text


def test_turns_alternate_the_order():
    calls = []
    times = time_in_turns([lambda: calls.append("a"), lambda: calls.append("b")], 4, warmup=1)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert [len(t) for t in times] == [4, 4] and all(v >= 0 for t in times for v in t)


def test_profile_models_are_timed_in_the_same_turns():
    a, b = profile_models([("plain", nn.Conv2d(3, C, 3)), ("bam", _tiny())], (3, H, W), runs=3)
    assert a.timing_run == b.timing_run
    assert len(a.latency_turns_ms) == len(b.latency_turns_ms) == 3
    assert a.latency_ms == sorted(a.latency_turns_ms)[1]  # the median
    assert profile_model(_tiny(), (3, H, W), runs=1).timing_run != a.timing_run


def test_paired_ratio_is_the_median_of_per_turn_ratios():
    # A load spike in turn 2 slows both; turn by turn the second is always 2x the first,
    # while the ratio of the medians (20 / 3) says 6.7x.
    assert paired_ratio([1.0, 100.0, 3.0], [2.0, 200.0, 6.0]) == (2.0, 2.0, 2.0)
    assert paired_ratio([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 5.0]) == (2.5, 1.0, 5.0)


def _profile(name, params, macs, turns, timing_run=0, bam_params=0):
    from torch_bam.profile import BlockShare

    bams = [BlockShare("bam", bam_params, 12, 0.0001)] if bam_params else []
    return Profile(
        model=name,
        input_size=(3, 8, 8),
        batch=1,
        params=params,
        macs=macs,
        saved_activation_bytes=300,
        activation_batch=2,
        latency_ms=sorted(turns)[len(turns) // 2],
        latency_turns_ms=turns,
        timing_run=timing_run,
        bams=bams,
    )


def test_table_prints_no_nonzero_value_as_zero():
    big = _profile("big", 2_500_000, 10**9, [0.0004, 0.0005, 0.0006])
    small = _profile("small", 757, 12_000, [0.0002, 0.0002, 0.0003], bam_params=757)
    text = format_profiles([big, small])
    assert not re.search(r"(?<![\d.])0\.0+(?!\d)", text), text  # no 0.000, 0.000x, 0.00%
    assert "0.000303x" in text  # parameters, small / big, to three significant digits
    assert "0.000500 [0.000400, 0.000600]" in text  # latency median [min, max]
    assert "0.500x [0.400, 0.500]" in text  # per-turn ratios 0.5, 0.4, 0.5
    assert "0.00001200 " in text and "0.000100 ms" in text


def test_unpaired_latency_ratio_is_marked():
    a = _profile("a", 10, 10, [1.0, 2.0, 3.0], timing_run=1)
    b = _profile("b", 10, 10, [2.0, 4.0, 6.0], timing_run=2)
    assert "2.00x (of the medians, unpaired)" in format_profiles([a, b])


def test_cli_profile(capsys):
    assert (
        main(["profile", "bam_small_cnn", "--input", "16", "--vs", "small_cnn", "--runs", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "bam_small_cnn" in out and "small_cnn" in out and "bams.0" in out


def test_cli_profile_json_has_every_turn(capsys):
    argv = ["profile", "bam_small_cnn", "--input", "16", "--vs", "small_cnn", "--runs", "3"]
    assert main([*argv, "--json"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert first["timing_run"] == second["timing_run"]
    assert len(first["latency_turns_ms"]) == len(second["latency_turns_ms"]) == 3
    assert first["latency_min_ms"] <= first["latency_ms"] <= first["latency_max_ms"]


def test_cli_profile_refuses_an_input_that_leaves_bam_maps_1x1(capsys):
    # bam_resnet18's BAMs sit at strides 4, 8 and 16: at 4 pixels every map is 1x1.
    assert main(["profile", "bam_resnet18", "--input", "4", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "1x1 map" in err and "bam1, bam2, bam3" in err and "--input 32 or more" in err
    # At 32 every map is at least 2x2: profiled.
    assert main(["profile", "bam_resnet18", "--input", "32", "--runs", "1"]) == 0


def test_cli_profile_says_out_of_memory_not_too_small(capsys):
    assert main(["profile", "bam_small_cnn", "--input", "1000000", "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "ran out of memory" in err and "too small" not in err
    assert "GiB" in err and "smaller --input" in err
