"""The claim rule on made-up numbers: a difference counts only beyond the seed-to-seed spread."""

import math

import pytest

from torch_bam.demo.claims import compare, localisation_claim, summarize
from torch_bam.demo.report import claims_of


def test_summarize_uses_the_sample_std():
    s = summarize([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.1, 0.3, 3)
    assert summarize([0.4])["std"] is None


def test_difference_beyond_the_larger_spread_counts():
    c = compare([0.60, 0.62, 0.64], [0.50, 0.50, 0.50])
    assert c.difference == pytest.approx(0.12) and c.spread == pytest.approx(0.02)
    assert c.exceeds
    # The control's spread is the larger one here: 0.05 > |0.62 - 0.58|.
    c = compare([0.60, 0.62, 0.64], [0.53, 0.58, 0.63])
    assert c.spread == pytest.approx(0.05) and not c.exceeds


def test_one_seed_claims_nothing():
    c = compare([0.9], [0.1])
    assert c.spread is None and not c.exceeds


def test_localisation_needs_to_beat_the_best_control():
    bam = [0.60, 0.61, 0.62]
    weak = {"centre prior": [0.05] * 3, "chance": [0.04] * 3}
    claimed, best, sentences = localisation_claim(bam, weak)
    assert claimed and best == "centre prior" and len(sentences) == 2
    assert "more than the seed-to-seed spread" in sentences[0]
    # A control as good as BAM, within the spread: no claim, even though BAM's mean is higher.
    close = dict(weak, **{"Grad-CAM": [0.55, 0.60, 0.65]})
    claimed, best, sentences = localisation_claim(bam, close)
    assert not claimed and best == "Grad-CAM"
    assert sentences[0].startswith("Grad-CAM:") and "within" in sentences[0]
    # A control clearly better than BAM: no claim either.
    claimed, best, _ = localisation_claim(bam, dict(weak, better=[0.9, 0.9, 0.9]))
    assert not claimed and best == "better"
    # One seed: no spread, no claim.
    assert not localisation_claim([0.9], {"chance": [0.1]})[0]


def _report(base_err, bam_err, pointing):
    return {
        "models": {
            "small_cnn": {"test_top1_error": base_err},
            "bam_small_cnn": {"test_top1_error": bam_err},
        },
        "pointing": pointing,
    }


def test_report_claims_follow_the_rule():
    pointing = {"centre prior": [0.05] * 3, "bam_small_cnn BAM": [0.3, 0.31, 0.32]}
    claims = claims_of(_report([0.10, 0.12, 0.14], [0.08, 0.13, 0.12], pointing))
    assert not claims["error"]["exceeds"]
    assert "does not claim" in claims["error"]["sentence"]
    assert claims["localisation"]["claimed"]
    assert claims["localisation"]["verdict"].startswith("BAM localises")
    claims = claims_of(_report([0.20, 0.21, 0.22], [0.10, 0.11, 0.12], None))
    assert claims["error"]["exceeds"] and "BAM lowers the error" in claims["error"]["sentence"]
    assert claims["error"]["difference"] == pytest.approx(-0.10)
    assert "localisation" not in claims
    assert math.isclose(claims["error"]["spread"], 0.01)


def test_sentence_difference_is_that_of_the_rounded_table_values():
    from torch_bam.demo.claims import describe
    from torch_bam.demo.report import pct

    # The tables print 16.3% and 14.7%; the exact difference, 1.52 points, would print as
    # 1.5: the sentence says what the tables show.
    a, b = [0.1626, 0.1626], [0.1474, 0.1474]
    assert (pct(a[0]), pct(b[0])) == ("16.3%", "14.7%")
    c = compare(a, b)
    assert f"{100 * c.difference:.1f}" == "1.5"
    assert describe(c, "BAM", "higher", "lower").startswith("BAM is 1.6 points higher")


def test_verdict_states_the_order_and_controls_that_beat_bam():
    pointing = {
        "chance": [0.06] * 3,
        "small_cnn feature norm": [0.984, 0.985, 0.986],
        "small_cnn Grad-CAM": [0.975, 0.976, 0.977],
        "bam_small_cnn BAM": [0.941, 0.942, 0.943],
    }
    verdict = claims_of(_report([0.1] * 3, [0.1] * 3, pointing))["localisation"]["verdict"]
    assert verdict.startswith(
        "Hit rates, highest first: small_cnn feature norm 98.5%, small_cnn Grad-CAM 97.6%, "
        "BAM 94.2%, chance 6.0%."
    )
    beaten = "small_cnn feature norm (98.5%) and small_cnn Grad-CAM (97.6%) beat BAM (94.2%)"
    assert beaten in verdict
    assert "no claim that BAM localises" in verdict and "saturated" in verdict
    # Controls far below BAM, BAM ahead beyond the spread: the claim, and no saturation.
    low = {"chance": [0.06] * 3, "bam_small_cnn BAM": [0.5, 0.52, 0.54]}
    verdict = claims_of(_report([0.1] * 3, [0.1] * 3, low))["localisation"]["verdict"]
    assert verdict.startswith("BAM localises") and "saturated" not in verdict
    assert verdict.endswith("Hit rates, highest first: BAM 52.0%, chance 6.0%.")
