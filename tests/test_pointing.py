import math

import pytest
import torch

from torch_bam.pointing import chance_rate, pointing_game, pointing_hits


def _random_boxes(gen, n, size, lo=4, hi=12):
    wh = torch.randint(lo, hi, (n, 2), generator=gen)
    x0 = (torch.rand(n, generator=gen) * (size - wh[:, 0])).long()
    y0 = (torch.rand(n, generator=gen) * (size - wh[:, 1])).long()
    return torch.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], dim=1)


def test_gate_peaking_inside_box_scores_100_percent():
    gen = torch.Generator().manual_seed(0)
    size, n = 32, 200
    boxes = _random_boxes(gen, n, size)
    att = torch.rand(n, 1, size, size, generator=gen)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        att[i, 0, (y0 + y1) // 2, (x0 + x1) // 2] = 10.0
    hit, chance = pointing_game(att, boxes, (size, size))
    assert hit == 1.0
    assert 0 < chance < 0.2


def test_peak_outside_box_misses():
    att = torch.zeros(1, 1, 8, 8)
    att[0, 0, 0, 0] = 1.0
    assert not pointing_hits(att, torch.tensor([[4, 4, 8, 8]]), (8, 8)).item()


def test_random_gate_scores_about_chance():
    gen = torch.Generator().manual_seed(1)
    size, n = 32, 4000
    boxes = _random_boxes(gen, n, size)
    att = torch.rand(n, 1, size, size, generator=gen)
    hit, chance = pointing_game(att, boxes, (size, size))
    # Hits are independent Bernoulli(p_i): the mean's std is at most sqrt(chance/n). Six sigma:
    # a false failure has probability ~1e-9, and the seed is fixed.
    assert abs(hit - chance) < 6 * math.sqrt(chance / n)


def test_chance_is_box_area_over_image_area():
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 10, 6]])
    assert chance_rate(boxes, (8, 8)).tolist() == [16 / 64, (6 * 4) / 64]


def test_bad_shapes_name_the_fix():
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        pointing_hits(torch.rand(2, 1, 4, 4), torch.zeros(3, 4), (8, 8))
    with pytest.raises(ValueError, match="spatial_logits"):
        pointing_hits(torch.rand(2, 3, 4, 4), torch.zeros(2, 4), (8, 8))


def test_centre_prior_peaks_at_the_centre():
    from torch_bam.pointing import centre_prior

    maps = centre_prior(3, (9, 12))
    assert maps.shape == (3, 1, 9, 12)
    centre = torch.tensor([[5, 3, 7, 6]]).expand(3, 4)  # holds pixel (x=6, y=4)
    assert pointing_hits(maps, centre, (9, 12)).all()
    assert not pointing_hits(maps, torch.tensor([[0, 0, 6, 4]]).expand(3, 4), (9, 12)).any()


def test_intensity_map_finds_the_brightest_patch():
    from torch_bam.pointing import intensity_map

    images = torch.zeros(2, 3, 20, 20)
    images[0, :, 2:6, 12:16] = 1.0  # a 4x4 bright square
    images[0, :, 15, 3] = 1.0  # one brighter-looking pixel, but less ink over 4x4
    images[1, :, 10:14, 5:9] = 0.5
    boxes = torch.tensor([[12, 2, 16, 6], [5, 10, 9, 14]])
    maps = intensity_map(images, window=4)
    assert maps.shape == (2, 1, 20, 20)
    assert pointing_hits(maps, boxes, (20, 20)).all()
    with pytest.raises(ValueError, match="window"):
        intensity_map(images, window=0)
