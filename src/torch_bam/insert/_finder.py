"""The forward-pass finder: bottlenecks of a network that does not describe its stages.

A downsampling leaf is a leaf module whose output map is smaller than its input map: a strided
convolution, a pool, or a parameter-free layer that keeps batch and channels and shrinks both
height and width (not a window partition, which only reshapes). Going up from it, its
ancestors that take the same map and return the same smaller one are part of the same
downsampling; the outermost is the *downsampling module* (a ResNet's ``layer2``, a
MobileNetV2's stride-2 block, a ConvNeXt's downsample layer, a VGG's max-pool). The bottleneck
before it is the shallowest module that returned the very map the downsampling module takes,
with nothing else run since but the containers the downsampling module sits in and sibling
branches that read the same map (HRNet's transitions).

Dilated backbones (DeepLab's ResNets, torchvision's ``replace_stride_with_dilation``, timm's
``output_stride``) replace a stage's downsampling by dilated convs: such a stage -- the
outermost call that keeps the map's size, widens it and holds a dilated conv -- counts as a
downsampling module, so the BAMs stay at the ends of the stages before it.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._trace import Call, has_conv

_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def smaller(a: Tensor, b: Tensor) -> bool:
    """Is map ``b`` a spatial downsampling of map ``a``: neither side longer, one shorter, and
    not pooled to 1x1? (A reshape that trades height for width is not.)"""
    (ha, wa), (hb, wb) = a.shape[2:], b.shape[2:]
    return hb <= ha and wb <= wa and (hb, wb) != (ha, wa) and (hb, wb) != (1, 1)


def keeps_size(c: Call) -> bool:
    """A call on a feature map (not a pooled 1x1 one, as in squeeze-and-excitation) that
    returns a map of the same height and width."""
    i, o = c.input, c.output
    return i is not None and o is not None and i.shape[2:] == o.shape[2:] and i.shape[2:] != (1, 1)


def dilated_stage(c: Call) -> bool:
    """A stage whose first block would downsample but dilates instead: a call that keeps the
    map's size, widens it, and holds a dilated conv. (A segmentation head's ASPP dilates too,
    but narrows the map.)"""
    return (
        keeps_size(c)
        and c.output.shape[1] > c.input.shape[1]
        and any(
            isinstance(m, nn.Conv2d) and max(m.dilation) > 1 and max(m.kernel_size) > 1
            for m in c.module.modules()
        )
    )


def _can_downsample(c: Call) -> bool:
    """A conv, a pooling layer, or a parameter-free leaf that keeps batch and channels (so not
    a channels-last permute, nor a Linear on a channels-last map)."""
    if has_conv(c.module) or isinstance(c.module, _POOLS):
        return True
    leaf = not any(True for _ in c.module.children()) and not any(
        True for _ in c.module.parameters()
    )
    i, o = c.input, c.output
    return leaf and i is not None and o is not None and i.shape[:2] == o.shape[:2]


def downsamplings(calls: list[Call]) -> list[Call]:
    """The downsampling modules (and dilated stages), in the order they start."""

    def shrinks(c: Call, leaf: Call) -> bool:  # from the leaf's input size to its output's
        i, o = c.input, c.output
        return (
            i is not None
            and o is not None
            and i.shape[2:] == leaf.input.shape[2:]
            and o.shape[2:] == leaf.output.shape[2:]
            and smaller(i, o)
        )

    downs: dict[int, Call] = {}
    for leaf in calls:
        if not _can_downsample(leaf) or not shrinks(leaf, leaf):
            continue
        top = leaf
        for c in leaf.ancestors():  # innermost first; the chain ends at the first that does not
            if not shrinks(c, top):
                break
            top = c
        downs[top.start] = top
    dilated = {id(c) for c in calls if dilated_stage(c)}
    for c in calls:
        if id(c) in dilated and not any(id(a) in dilated for a in c.ancestors()):
            downs.setdefault(c.start, c)
    return sorted(downs.values(), key=lambda c: c.start)


def producer(calls: list[Call], d: Call) -> Call | None:
    """The shallowest module that returned the map ``d`` takes, ran once, and was still open
    at the last call that started before ``d`` -- not counting ``d``'s own containers (a
    ``blocks`` Sequential that starts right before its first block), nor sibling branches that
    read the same map, with what runs inside them (HRNet's transitions, SelecSLS's lists)."""
    t = d.input
    if t is None:
        return None
    containers = {id(a) for a in d.ancestors()}
    # (An in-place layer that returns the map it took made it, as far as we can tell.)
    readers = {id(c) for c in calls if c.start < d.start and c.takes(t) and c.result is not t}
    latest = -1
    for c in reversed(calls):  # in reverse order of start
        if c.start >= d.start or id(c) in containers:
            continue
        if id(c) in readers or any(id(a) in readers for a in c.ancestors()):
            continue
        if isinstance(c.module, nn.Identity):  # an empty slot (torch_bam's bam1) changes nothing
            continue
        latest = c.start
        break
    made = [
        c
        for c in calls
        if latest < c.end < d.start
        and c.result is t
        and c.runs == 1
        and not isinstance(c.module, nn.Identity)
    ]
    return min(made, key=lambda c: (c.path.count("."), c.start), default=None)


def find_bottlenecks(calls: list[Call], first_stage: float) -> list[Call]:
    """The calls after which a BAM goes: the producer of each downsampling's input, where a
    stage ran since the previous downsampling (a conv that keeps the size), a stage conv runs
    after it (so not before a head's 7x7 conv on the last pooled map), and not in the stem."""
    stage_convs = sorted(c.start for c in calls if has_conv(c.module) and keeps_size(c))
    points: list[Call] = []
    prev_start = -1
    for d in downsamplings(calls):
        convs_before = any(prev_start < s < d.start for s in stage_convs)
        convs_after = any(s >= d.start for s in stage_convs)
        prev_start = d.start
        if not (convs_before and convs_after):
            continue
        p = producer(calls, d)
        if p is not None and p.end >= first_stage and all(p is not q for q in points):
            points.append(p)
    return points
