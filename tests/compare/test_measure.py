"""compare.measure: each variant's error and each map's hit rate, against direct computation."""

import pytest
import torch

from torch_bam import create_model
from torch_bam.compare.measure import map_at, measure, spatial_maps
from torch_bam.compare.saliency import feature_norm_and_grad_cam
from torch_bam.pointing import pointing_hits

SIZE = (24, 24)


def _networks(seed):
    torch.manual_seed(seed)
    return {
        "none": create_model("small_cnn", num_classes=10, in_chans=1).eval(),
        "bam": create_model("bam_small_cnn", num_classes=10, in_chans=1).eval(),
    }


def _rate(m, boxes):
    return pointing_hits(m, boxes, SIZE).float().mean().item()


@pytest.mark.parametrize("reference", ["none", "bam"])
def test_every_map_is_scored_whichever_variant_is_the_reference(reference):
    # The reference's own maps are controls even where the reference has a spatial map itself.
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, *SIZE, generator=g), torch.randint(0, 10, (6,), generator=g)
    boxes = torch.tensor([[2, 2, 10, 10]] * 3 + [[12, 12, 20, 20]] * 3)
    models = {0: _networks(0), 1: _networks(1)}
    models = {
        s: {v: m[v] for v in sorted(m, key=lambda v: v != reference)} for s, m in models.items()
    }

    def untrained(seed, variant):
        return _networks(100 + seed)[variant]

    errors, pointing, site = measure(models, untrained, reference, x, y, boxes, 8)
    assert site.spatial == ["bam"] and site.size == (12, 12)
    for i, (seed, nets) in enumerate(models.items()):
        norm, cam, _ = feature_norm_and_grad_cam(nets[reference], site.layer, x)
        assert pointing[f"{reference} feature norm"][i] == pytest.approx(_rate(norm, boxes))
        assert pointing[f"{reference} Grad-CAM"][i] == pytest.approx(_rate(cam, boxes))
        maps, _ = spatial_maps(nets["bam"], x)
        assert pointing["bam"][i] == pytest.approx(_rate(map_at(maps, site.size), boxes))
        raw, _ = spatial_maps(untrained(seed, "bam"), x)
        assert pointing["untrained bam"][i] == pytest.approx(_rate(map_at(raw, site.size), boxes))
        for v, net in nets.items():
            with torch.no_grad():
                wrong = (net(x).argmax(1) != y).float().mean().item()
            assert errors[v][i] == pytest.approx(wrong)
    assert len(set(pointing["centre prior"])) == 1  # a control that owes nothing to the seed


def test_no_boxes_no_pointing_game():
    x, y = torch.rand(4, 1, *SIZE), torch.randint(0, 10, (4,))
    errors, pointing, site = measure({0: _networks(0)}, None, "none", x, y, None, None)
    assert pointing is None and site is None and set(errors) == {"none", "bam"}
