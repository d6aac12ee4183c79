"""Stages from the model's own description.

timm models list their stages in ``feature_info`` (``module``, ``num_chs``, ``reduction`` per
level, the stem's output often first); torchvision's detection and segmentation backbones are an
``IntermediateLayerGetter`` whose children are the network's top-level layers, its stages among
them. Either way the description gives the stages in order; the trace says which ran, on what.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._trace import Call, has_conv, is_map


def _feature_info(model: nn.Module) -> list[dict] | None:
    info = getattr(model, "feature_info", None)
    info = getattr(info, "info", info)  # timm's FeatureInfo (features_only) keeps every level
    if not isinstance(info, (list, tuple)) or len(info) < 2:
        return None
    if not all(isinstance(d, dict) and isinstance(d.get("module"), str) for d in info):
        return None
    return list(info)


def _getter(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The outermost torchvision ``IntermediateLayerGetter`` in ``model``, if any."""
    for path, m in model.named_modules():
        if type(m).__name__ == "IntermediateLayerGetter" and type(m).__module__.startswith(
            "torchvision"
        ):
            return path, m
    return None


def _producer_inside(calls: list[Call], outer: Call, t: Tensor) -> Call | None:
    """The shallowest call inside ``outer`` (or ``outer`` itself) that returned ``t`` and ran
    once: a stage that returns a list of maps (SelecSLS) is placed after the layer that made
    its first map."""
    inside = [
        c for c in calls if (c is outer or outer.encloses(c)) and c.result is t and c.runs == 1
    ]
    return min(inside, key=lambda c: (c.path.count("."), c.start), default=None)


def described_stages(model: nn.Module, calls: list[Call]) -> list[Call] | None:
    """The calls that end the model's described stages, in order; ``None`` where the model
    describes none, or where the description does not match what ran (then the forward-pass
    finder places BAM).

    A stage is skipped where it ran no convolution since the previous one (a VGG's last
    max-pool, listed by timm as the last level); levels that a ``features_only`` network cut
    off, or a first level that names no module, are left out.
    """
    by_path: dict[str, list[Call]] = {}
    for c in calls:
        by_path.setdefault(c.path, []).append(c)
    info = _feature_info(model)
    if info is not None:
        paths = [d["module"] for d in info]
    else:
        found = _getter(model)
        if found is None:
            return None
        prefix, getter = found
        paths = [f"{prefix}.{name}" if prefix else name for name in getter._modules]
    resolved: list[Call | None] = []
    for path in paths:
        runs = by_path.get(path) or by_path.get(path.replace(".", "_"))  # timm's flattened
        if not runs or len(runs) != 1:
            resolved.append(None)
            continue
        call = runs[0]
        if isinstance(call.module, nn.Identity):  # a placeholder (torch_bam's bam1 slots)
            call = next((c for c in calls if c.result is call.arg and c.end < call.start), None)
            call = call and _producer_inside(calls, call, call.result)
        elif not is_map(call.result) and isinstance(call.result, (list, tuple)) and call.result:
            call = _producer_inside(calls, call, call.result[0])
        resolved.append(call if call is not None and call.output is not None else None)
    # Unresolved levels at either end (a stem named '' as in TResNet, levels cut off by
    # features_only) are left out; one in the middle means the description is not usable.
    while resolved and resolved[0] is None:
        resolved.pop(0)
    while resolved and resolved[-1] is None:
        resolved.pop()
    if len(resolved) < 2 or any(c is None for c in resolved):
        return None
    conv_starts = [c.start for c in calls if has_conv(c.module)]
    stages: list[Call] = []
    prev_end = -1
    for c in resolved:
        if any(prev_end < s < c.end for s in conv_starts):
            stages.append(c)
        prev_end = max(prev_end, c.end)
    return stages
