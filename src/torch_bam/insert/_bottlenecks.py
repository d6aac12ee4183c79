"""Where BAM goes: after each stage that is followed by a downsampling, none in the stem, none
after the last stage (Park et al., BMVC 2018, Sec. 3: "at each bottleneck").

The stages come from the model's own description where it has one (``_described``), else from
one forward pass (``_finder``); the stem, by one rule for both (``_stem``).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ._described import described_stages
from ._finder import dilated_stage, find_bottlenecks, smaller
from ._stem import stage_start
from ._trace import Call, default_input, is_map, trace_calls


class Bottleneck(NamedTuple):
    """A place for an attention block: after module ``path``, on a ``channels`` x ``size``
    map (``size`` = (H, W) at the example input's size)."""

    path: str
    channels: int
    size: tuple[int, int]


def after_stages(stages: list[Call], first_stage: float, found: list[Call]) -> list[Call]:
    """The described stages that get a BAM: out of the stem, and followed by a stage that
    downsamples (or, in a dilated backbone, dilates instead). Where the forward pass finds a
    later bottleneck at the same size before the next stage ends, BAM goes there instead:
    GhostNet lists the first block at each size (``blocks.1``), not the last (``blocks.2``)."""
    stages = [s for s in stages if s.end >= first_stage]
    points = []
    for s, nxt in zip(stages[:-1], stages[1:], strict=True):
        if not (smaller(s.output, nxt.output) or dilated_stage(nxt)):
            continue
        size = s.output.shape[2:]
        later = [
            q for q in found if s.end < q.start and q.end < nxt.end and q.output.shape[2:] == size
        ]
        points.append(max(later, key=lambda q: q.end) if later else s)
    return points


def bottleneck_calls(model: nn.Module, example_input: Tensor, owner: str) -> list[Call]:
    calls = trace_calls(model, example_input, owner)
    first_stage = stage_start(model, calls)
    found = find_bottlenecks(calls, first_stage)
    stages = described_stages(model, calls)
    return found if stages is None else after_stages(stages, first_stage, found)


def check_example_input(example_input: object, owner: str) -> None:
    if not is_map(example_input):
        raise ValueError(
            f"{owner}: example_input must be a 4-D image batch [B, C, H, W], got "
            f"{type(example_input).__name__} of shape {list(getattr(example_input, 'shape', []))}."
        )


def bottlenecks(model: nn.Module, example_input: Tensor | None = None) -> list[Bottleneck]:
    """The places :func:`~torch_bam.add_bam` puts a BAM, in order, without changing the model.

    Args:
        model: an image CNN that takes ``[B, C, H, W]``.
        example_input: a batch the model accepts, run once (eval mode, no grad). Default:
            ``randn(2, C, 128, 128)``, ``C`` the model's input channels.

    Returns:
        a list of :class:`Bottleneck` ``(path, channels, size)``: put a block of ``channels``
        channels after module ``path`` (with :func:`insert_after`). Empty where the network
        has no bottleneck (no stage followed by a downsampling).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bottlenecks expects an nn.Module, got {type(model).__name__}.")
    if example_input is None:
        example_input = default_input(model, "bottlenecks")
    check_example_input(example_input, "bottlenecks")
    return [
        Bottleneck(c.path, int(c.output.shape[1]), (int(c.output.shape[2]), int(c.output.shape[3])))
        for c in bottleneck_calls(model, example_input, "bottlenecks")
    ]
