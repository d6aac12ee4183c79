import torch
from torch import nn

from tests.helpers import bam_param_count
from torch_bam import BAM
from torch_bam.cli import main
from torch_bam.profile import format_profiles, profile_model

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
        [
            profile_model(nn.Conv2d(3, C, 3), (3, H, W), name="plain", runs=1),
            profile_model(_tiny(), (3, H, W), name="bam", runs=1),
        ]
    )
    assert "ratio" in text and "BAM blocks in bam" in text


def test_cli_profile(capsys):
    assert (
        main(["profile", "bam_small_cnn", "--input", "16", "--vs", "small_cnn", "--runs", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "bam_small_cnn" in out and "small_cnn" in out and "bams.0" in out
