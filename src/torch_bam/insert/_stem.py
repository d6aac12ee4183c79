"""The stem rule: where a network's first stage starts.

The stem is every layer that runs before the network's first *block*, and it never gets a
BAM. A block is a module that runs two or more convolutions in a forward of its own: a residual
or inverted-residual block, an Inception, dense, Xception or DLA-tree module. Not a block: a
plain ``nn.Sequential`` (however deep: a ResNet-D's three-conv stem), a conv-norm-act, and a
module the model itself names as its stem (timm's ``group_matcher()["stem"]``: CoAtNet's and
EfficientViT's stems hold small blocks). A network with no block at all (a plain stack of
convolutions, such as VGG) has its first convolution as its stem.

Only which modules run, in which order, decides: how the stem is nested does not.
"""

from __future__ import annotations

import re

from torch import nn

from ..bam import BAM
from ._trace import Call, has_conv, is_map


def named_stem(model: nn.Module) -> re.Pattern | None:
    """The regular expression that timm's ``group_matcher`` gives for the stem, if any."""
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        return None
    try:
        groups = matcher()
    except Exception:  # a matcher that needs arguments or state we do not have
        return None
    stem = groups.get("stem") if isinstance(groups, dict) else None
    if isinstance(stem, (list, tuple)):  # [(regex, ordinal), ...]
        stem = "|".join(f"(?:{s[0] if isinstance(s, (list, tuple)) else s})" for s in stem)
    return re.compile(stem) if isinstance(stem, str) and stem else None


def _is_block(c: Call, n_convs: dict[int, int]) -> bool:
    """Two or more convolutions in a forward of its own, on the feature map (a head's
    ConvMlp, which pools the last map to 1x1, is no block)."""
    m = c.module
    if isinstance(m, BAM) or type(m).forward is nn.Sequential.forward:
        return False
    out = c.result[0] if isinstance(c.result, (list, tuple)) and c.result else c.result
    if not is_map(out) or out.shape[2:] == (1, 1):
        return False
    if id(m) not in n_convs:
        n_convs[id(m)] = sum(has_conv(sub) for sub in m.modules())
    return n_convs[id(m)] >= 2


def stage_start(model: nn.Module, calls: list[Call]) -> float:
    """The hook counter at which the first stage starts: a call that ended before it is in
    the stem. ``inf`` for a network with a single convolution and no block."""
    stem = named_stem(model)
    n_convs: dict[int, int] = {}
    blocks = [
        c for c in calls if _is_block(c, n_convs) and not (stem is not None and stem.match(c.path))
    ]
    if blocks:
        # The block that ends first: a wrapper around the whole body (torchvision's
        # IntermediateLayerGetter) is a block too, but the first block inside it ends earlier.
        return min(blocks, key=lambda c: c.end).start
    convs = sorted(c.start for c in calls if has_conv(c.module))
    return convs[1] if len(convs) > 1 else float("inf")
