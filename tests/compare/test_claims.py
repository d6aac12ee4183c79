"""The claim rule on made-up numbers: a difference counts only beyond the seed-to-seed spread."""

import pytest

from torch_bam.compare.claims import claims_of, compare, localisation_claim, summarize


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


def test_sentence_difference_is_that_of_the_rounded_table_values():
    from torch_bam.compare.claims import describe
    from torch_bam.compare.report import pct

    # The tables print 16.3% and 14.7%; the exact difference, 1.52 points, would print as
    # 1.5: the sentence says what the tables show.
    a, b = [0.1626, 0.1626], [0.1474, 0.1474]
    assert (pct(a[0]), pct(b[0])) == ("16.3%", "14.7%")
    c = compare(a, b)
    assert f"{100 * c.difference:.1f}" == "1.5"
    assert describe(c, "BAM", "higher", "lower").startswith("BAM is 1.6 points higher")


def test_report_claims_pair_every_variant_with_the_reference_and_bam():
    variants = {
        "none": {"test_top1_error": [0.20, 0.21, 0.22]},
        "bam": {"test_top1_error": [0.10, 0.11, 0.12]},
        "se": {"test_top1_error": [0.19, 0.22, 0.25]},
    }
    pointing = {
        "centre prior": [0.05] * 3,
        "none Grad-CAM": [0.2, 0.3, 0.4],
        "untrained bam": [0.04, 0.05, 0.06],
        "bam": [0.5, 0.52, 0.54],
    }
    claims = claims_of({"variants": variants, "reference": "none", "pointing": pointing})
    assert list(claims["error"]) == ["bam vs none", "se vs none", "se vs bam"]
    bam = claims["error"]["bam vs none"]
    assert bam["exceeds"] and bam["difference"] == pytest.approx(-0.10)
    assert bam["sentence"].startswith("bam is 10.0 points lower than none, more than")
    assert not claims["error"]["se vs none"]["exceeds"]  # 1 point, spread 3
    (local,) = claims["localisation"].values()
    assert local["claimed"] and local["best_control"] == "none Grad-CAM"
    # Every control, the network's own untrained copy among them, best first.
    assert [s.split(":")[0] for s in local["against_each_control"]] == [
        "none Grad-CAM",
        "centre prior",
        "untrained bam",
    ]
    pointing["none Grad-CAM"] = [0.45, 0.55, 0.65]  # as good as BAM, within the spread
    local = claims_of({"variants": variants, "reference": "none", "pointing": pointing})
    assert not local["localisation"]["bam"]["claimed"]
    assert "no claim that it localises" in local["localisation"]["bam"]["sentence"]
