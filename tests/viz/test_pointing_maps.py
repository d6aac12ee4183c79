"""The demo's attention figure: one 0-1 scale and one colour bar, flat maps said, readable."""

import matplotlib.pyplot as plt
import pytest
import torch

from torch_bam.viz.pointing_maps import MEDIAN_LABEL, draw_pointing_maps, plot_pointing_maps

from ._figures import small_texts

N, SIDE = 2, 24
PROBABILITIES = ("untrained BAM: sigmoid(M_s)", "BAM bams.1: sigmoid(M_s)")


def _inputs():
    g = torch.Generator().manual_seed(0)
    maps = {
        "feature norm": 5 + 3 * torch.rand(N, 1, 6, 6, generator=g),  # no scale of its own
        PROBABILITIES[0]: 0.456 + 0.003 * torch.rand(N, 1, 6, 6, generator=g),  # flat
        PROBABILITIES[1]: torch.rand(N, 1, 6, 6, generator=g) * 0.8 + 0.1,
    }
    return dict(
        images=torch.rand(N, 1, SIDE, SIDE, generator=g),
        boxes=torch.tensor([[2, 2, 10, 10], [8, 8, 16, 16]]),
        labels=torch.tensor([3, 7]),
        maps=maps,
        predictions={"small_cnn": torch.tensor([3, 1]), "BAM": torch.tensor([3, 7])},
        probabilities=PROBABILITIES,
        channel_gate=torch.rand(N, 32, generator=g),
        bam_name="bams.1",
    )


@pytest.fixture
def fig():
    f = draw_pointing_maps(**_inputs())
    yield f
    plt.close(f)


def _map_images(fig):
    return [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "viridis"]


def test_every_map_on_one_fixed_scale_with_one_colour_bar(fig):
    images = _map_images(fig)
    assert len(images) == N * 3
    assert {im.get_clim() for im in images} == {(0.0, 1.0)}
    assert len({id(im.norm) for im in images}) == 1  # one norm, so one colour bar fits all
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    # A sigmoid map is drawn as it is, not stretched: its values stay where they are.
    data = _inputs()
    bam = [im for im in images if im.axes.get_title().startswith(PROBABILITIES[1])]
    shown = torch.tensor(bam[0].get_array().data)
    lo, hi = data["maps"][PROBABILITIES[1]][0].min(), data["maps"][PROBABILITIES[1]][0].max()
    assert lo - 1e-6 <= shown.min() and shown.max() <= hi + 1e-6


def test_a_flat_map_says_so_and_a_stretched_map_says_it_is_stretched(fig):
    flat = [ax for ax in fig.axes if ax.get_title().startswith(PROBABILITIES[0])]
    assert len(flat) == N
    notes = [t.get_text() for ax in flat for t in ax.texts]
    assert len(notes) == N and all(n.startswith("flat: 0.45") for n in notes), notes
    bam = [ax for ax in fig.axes if ax.get_title().startswith(PROBABILITIES[1])]
    assert all(t.get_text().startswith("range ") for ax in bam for t in ax.texts)
    norm = [ax for ax in fig.axes if ax.get_title().startswith("feature norm")]
    assert norm and all("(stretched)" in ax.get_title() for ax in norm)


def test_channel_chart_names_its_bam_and_shows_the_median_of_all_channels(fig):
    gate = _inputs()["channel_gate"]
    charts = [ax for ax in fig.axes if ax.patches and "channels" in ax.get_title()]
    assert len(charts) == N
    for i, ax in enumerate(charts):
        assert "bams.1" in ax.get_title() and "of 32 channels" in ax.get_title()
        (median,) = [line for line in ax.lines if line.get_label() == MEDIAN_LABEL]
        assert median.get_ydata()[0] == pytest.approx(float(gate[i].median()))
        assert "all 32 channels" in ax.get_xlabel()


def test_every_text_is_readable_at_the_saved_size(fig):
    assert small_texts(fig) == []


def test_saved_png_has_the_figure_size(tmp_path):
    from PIL import Image

    from torch_bam.viz.pointing_maps import figure_size_px

    data = _inputs()
    path = plot_pointing_maps(path=str(tmp_path / "a.png"), **data)
    with Image.open(path) as im:
        assert im.size == figure_size_px(N, len(data["maps"]), channels=True)


def test_probabilities_must_name_maps():
    data = _inputs()
    data["probabilities"] = ("no such map",)
    with pytest.raises(ValueError, match="no such map"):
        draw_pointing_maps(**data)
