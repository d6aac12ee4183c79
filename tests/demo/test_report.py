"""torch_bam.demo.report: sentences that follow from the report's own numbers and claims."""

import math

import pytest

from torch_bam.compare.claims import claims_of
from torch_bam.demo.report import epoch_choice_sentence, error_sentence, localisation_verdict


def _models(*best_epochs):
    return {f"m{i}": {"best_epoch": list(b)} for i, b in enumerate(best_epochs)}


def test_every_run_at_its_last_epoch_says_the_choice_selected_nothing():
    s = epoch_choice_sentence(_models([4, 4, 4], [4, 4, 4]), epochs=4)
    assert "last epoch (4)" in s and "selected nothing" in s and "--epochs" in s


def test_runs_that_chose_an_earlier_epoch_are_counted():
    s = epoch_choice_sentence(_models([4, 2, 4], [3, 4, 4]), epochs=4)
    assert s.startswith("In 2 of 6 runs") and "selected nothing" not in s


def test_one_epoch_has_nothing_to_choose():
    assert "no epoch to choose" in epoch_choice_sentence(_models([1], [1]), epochs=1)


def _report(base_err, bam_err, pointing):
    """A report as the engine makes it: the numbers, then the claims that follow from them."""
    report = {
        "variants": {
            "small_cnn": {"test_top1_error": base_err},
            "bam_small_cnn": {"test_top1_error": bam_err},
        },
        "reference": "small_cnn",
        "pointing": pointing,
    }
    report["claims"] = claims_of(report)
    return report


def test_report_claims_follow_the_rule():
    pointing = {"centre prior": [0.05] * 3, "bam_small_cnn": [0.3, 0.31, 0.32]}
    report = _report([0.10, 0.12, 0.14], [0.08, 0.13, 0.12], pointing)
    claim = report["claims"]["error"]["bam_small_cnn vs small_cnn"]
    assert not claim["exceeds"]
    expected = "The demo does not claim that either network has the lower error."
    assert error_sentence(report) == f"Test top-1 error: {claim['sentence']}. {expected}"
    assert report["claims"]["localisation"]["bam_small_cnn"]["claimed"]
    assert localisation_verdict(report).startswith("BAM localises")
    report = _report([0.20, 0.21, 0.22], [0.10, 0.11, 0.12], None)
    claim = report["claims"]["error"]["bam_small_cnn vs small_cnn"]
    assert claim["exceeds"] and error_sentence(report).endswith("BAM lowers the error here.")
    assert claim["difference"] == pytest.approx(-0.10)
    assert "localisation" not in report["claims"]
    assert math.isclose(claim["spread"], 0.01)


def test_verdict_states_the_order_and_controls_that_beat_bam():
    pointing = {
        "chance": [0.06] * 3,
        "small_cnn feature norm": [0.984, 0.985, 0.986],
        "small_cnn Grad-CAM": [0.975, 0.976, 0.977],
        "bam_small_cnn": [0.941, 0.942, 0.943],
    }
    verdict = localisation_verdict(_report([0.1] * 3, [0.1] * 3, pointing))
    assert verdict.startswith(
        "Hit rates, highest first: small_cnn feature norm 98.5%, small_cnn Grad-CAM 97.6%, "
        "BAM 94.2%, chance 6.0%."
    )
    beaten = "small_cnn feature norm (98.5%) and small_cnn Grad-CAM (97.6%) beat BAM (94.2%)"
    assert beaten in verdict
    assert "no claim that BAM localises" in verdict and "saturated" in verdict
    # Controls far below BAM, BAM ahead beyond the spread: the claim, and no saturation.
    low = {"chance": [0.06] * 3, "bam_small_cnn": [0.5, 0.52, 0.54]}
    verdict = localisation_verdict(_report([0.1] * 3, [0.1] * 3, low))
    assert verdict.startswith("BAM localises") and "saturated" not in verdict
    assert verdict.endswith("Hit rates, highest first: BAM 52.0%, chance 6.0%.")
