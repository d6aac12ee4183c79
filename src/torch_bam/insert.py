"""Put BAM into any image CNN, at its bottlenecks (Park et al., BMVC 2018, Sec. 3).

A bottleneck is the output of the last module before the spatial size falls. ``add_bam`` runs
the model once on a small example input with forward hooks, finds every downsampling, and
inserts a :class:`~torch_bam.BAM` after the shallowest module whose output feeds it.

How a downsampling is found. Each leaf module whose 4-D output is smaller (H or W) than its 4-D
input is a downsampling leaf. Going up from it, its ancestors that also take the
pre-downsampling map and return a smaller one are part of the same downsampling; the outermost
one (a ResNet's ``layer2``, a MobileNetV2's stride-2 ``features.2`` block, a ConvNeXt's
downsample layer, a VGG's max-pool) is the *downsampling module*. The bottleneck is the
shallowest module that returned, as the last thing before the downsampling module started, the
very tensor it takes as input (``layer1`` in a ResNet). So models whose blocks downsample
inside themselves get a BAM after the last block before the downsampling block.

Skipped on purpose, as in the paper:
- the stem: the strided convolutions and pools before the first stage, where a stage is a run
  of layers with a convolution that keeps the spatial size. A downsampling with no such
  convolution since the previous one (or since the input) gets no BAM before it: a ResNet's
  max-pool after its 7x7/2 conv, a MobileNetV3's first stride-2 block after its 3x3/2 conv, so
  no BAM at 112x112. Only leaf convolutions count, so how the stem is nested (flat, or in a
  ``Sequential``) changes nothing. A deep stem with stride-1 convolutions (ResNet-D) is a stage
  by this rule and gets a BAM before its max-pool;
- the last stage: a downsampling after which no convolution runs (global pooling, a VGG's last
  max-pool before the classifier);
- global pooling to 1x1.

Dilated backbones (DeepLab's ResNets, torchvision's ``replace_stride_with_dilation``, timm's
``output_stride``) replace a stage's downsampling by dilated convs, so the map keeps its size
from one stage to the next. Such a stage -- the outermost call that keeps the map's size,
widens it and holds a dilated conv -- counts as a downsampling module, so the BAMs go where the
paper puts them, at the ends of the stages before it: ``layer1``, ``layer2``, ``layer3`` in a
ResNet, dilated or not.

How BAM is inserted, and what happens to state_dict keys. The original keys never change:
- the bottleneck is a plain ``nn.Sequential`` (``layer1``, ``features.3``): BAM is appended to
  it as a child named ``bam`` (new keys ``layer1.bam.*``);
- its parent is a plain ``nn.Sequential`` (a VGG's ReLU in ``features``): BAM goes into the
  parent right after it, named ``<name>_bam`` (new keys ``features.2_bam.*``);
- otherwise the module is wrapped in :class:`BAMAfter` (``module`` then ``bam``); its state_dict
  hooks drop the ``module.`` level, so the keys stay ``<path>.*`` and ``<path>.bam.*``.
So pretrained weights load before or after ``add_bam``; load them with ``strict=False`` after it
(the BAM keys are missing from a baseline checkpoint), or, the usual way, load then add BAM.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._validate import check_norm, check_positive_int
from .bam import BAM
from .norm import is_frozen_norm

__all__ = ["BAMAfter", "BAMInsertion", "BAMReport", "add_bam"]


@dataclass(frozen=True)
class BAMInsertion:
    """One BAM placed by :func:`add_bam`: after module ``path``, on ``channels`` x ``size``."""

    path: str
    channels: int
    size: tuple[int, int]  # (H, W) at the example input's size
    bam_path: str  # where the BAM lives in the model (its state_dict prefix)
    norm: str = "batch"  # the BAM's norm layers: "batch" or "frozen" (see add_bam's norm=)


class BAMReport(list):
    """The list of :class:`BAMInsertion` s, with a readable ``str``."""

    def __str__(self) -> str:
        rows = [f"{'after':<32} {'channels':>8}  size     norm"]
        rows += [
            f"{p.path:<32} {p.channels:>8}  {f'{p.size[0]}x{p.size[1]}':<8} {p.norm}" for p in self
        ]
        return "\n".join(rows)


class BAMAfter(nn.Module):
    """``bam(module(x))`` for a module that cannot take BAM inside or beside itself.

    The state_dict keeps the wrapped module's keys at this level (``conv.weight``, not
    ``conv.module.weight``), so checkpoints written before wrapping still load.
    """

    def __init__(self, module: nn.Module, bam: BAM) -> None:
        super().__init__()
        self.module = module
        self.bam = bam
        self._register_state_dict_hook(_drop_module_level)
        self._register_load_state_dict_pre_hook(_add_module_level)

    def forward(self, x: Tensor) -> Tensor:
        return self.bam(self.module(x))


def _drop_module_level(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "module.")]:
        state_dict[prefix + key[len(prefix) + len("module.") :]] = state_dict.pop(key)
    return state_dict


def _add_module_level(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    # Every key but the BAM's is the wrapped module's, even one that starts with "module."
    # (its own child of that name): the state_dict hook dropped exactly one level from each.
    # (A child named "bam" cannot occur: add_bam refuses to wrap such a module.)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if not rest.startswith("bam."):
            state_dict[prefix + "module." + rest] = state_dict.pop(key)


# ---------------------------------------------------------------------------------------------
# Finding the bottlenecks


@dataclass
class _Call:
    path: str
    module: nn.Module
    start: int
    end: int = -1
    input: Tensor | None = None
    output: Tensor | None = None


def _is_map(t: object) -> bool:
    return isinstance(t, Tensor) and t.dim() == 4


def _has_conv(module: nn.Module) -> bool:
    return any(p.dim() == 4 for p in module.parameters(recurse=False))


def _trace_calls(model: nn.Module, example_input: Tensor) -> list[_Call]:
    """Run ``model`` once and record every module call: order, first input and output."""
    calls: list[_Call] = []
    open_calls: dict[int, list[_Call]] = {}
    counter = iter(range(1 << 62))
    handles = []

    def pre_hook(path):
        def hook(module, args):
            call = _Call(path, module, next(counter))
            call.input = args[0] if args and _is_map(args[0]) else None
            open_calls.setdefault(id(module), []).append(call)
            calls.append(call)

        return hook

    def post_hook(module, args, output):
        call = open_calls[id(module)].pop()
        call.end = next(counter)
        call.output = output if _is_map(output) else None

    for path, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(pre_hook(path)))
        handles.append(module.register_forward_hook(post_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    except Exception as err:
        raise ValueError(
            f"add_bam: the model failed on an example image batch of shape "
            f"{list(example_input.shape)} ({type(err).__name__}: {err}). add_bam needs an image "
            f"CNN that takes [B, C, H, W]; pass example_input= with a shape the model accepts."
        ) from err
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return calls


def _can_downsample(c: _Call) -> bool:
    """A conv, a pooling layer, or a parameter-free leaf that keeps batch and channels (so not
    a channels-last permute, nor a Linear on a channels-last map)."""
    if _has_conv(c.module) or isinstance(c.module, _POOLS):
        return True
    leaf = not any(True for _ in c.module.children()) and not any(
        True for _ in c.module.parameters()
    )
    return (
        leaf
        and c.input is not None
        and c.output is not None
        and (c.input.shape[:2] == c.output.shape[:2])
    )


_POOLS = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def _smaller(a: Tensor, b: Tensor) -> bool:
    """Is map ``b`` spatially smaller than map ``a``?"""
    return (b.shape[2] < a.shape[2] or b.shape[3] < a.shape[3]) and b.shape[2:] != (1, 1)


def _keeps_size(c: _Call) -> bool:
    """A call on a feature map (not a pooled 1x1 one, as in squeeze-and-excitation) that
    returns a map of the same height and width."""
    return (
        c.input is not None
        and c.output is not None
        and c.input.shape[2:] == c.output.shape[2:]
        and c.input.shape[2:] != (1, 1)
    )


def _dilated_stage(c: _Call) -> bool:
    """A stage whose first block would downsample but dilates instead (DeepLab's ResNets,
    ``replace_stride_with_dilation``): a call that keeps the map's size, widens it, and holds
    a dilated conv. (A segmentation head's ASPP dilates too, but narrows the map.)"""
    return (
        _keeps_size(c)
        and c.output.shape[1] > c.input.shape[1]
        and any(
            isinstance(m, nn.Conv2d) and max(m.dilation) > 1 and max(m.kernel_size) > 1
            for m in c.module.modules()
        )
    )


def _find_bottlenecks(model: nn.Module, example_input: Tensor | None = None) -> list[_Call]:
    """The module calls after which :func:`add_bam` puts a BAM (see the module docstring)."""
    example_input = _default_input(model) if example_input is None else example_input
    calls = _trace_calls(model, example_input)
    n_calls: dict[str, int] = {}
    for c in calls:
        n_calls[c.path] = n_calls.get(c.path, 0) + 1

    def shrinks(c: _Call, leaf: _Call) -> bool:  # from the leaf's input size to its output's
        return (
            c.input is not None
            and c.output is not None
            and c.input.shape[2:] == leaf.input.shape[2:]
            and c.output.shape[2:] == leaf.output.shape[2:]
            and _smaller(c.input, c.output)
        )

    # Downsampling modules: from each downsampling leaf, go up through the enclosing calls that
    # take the same map size and shrink it; the outermost of that unbroken chain.
    downs: dict[int, _Call] = {}
    for leaf in calls:
        if not _can_downsample(leaf) or not shrinks(leaf, leaf):
            continue
        top = leaf
        enclosing = [c for c in calls if c.start < leaf.start and c.end > leaf.end]
        for c in sorted(enclosing, key=lambda c: -c.start):  # innermost first
            if not shrinks(c, leaf):
                break
            top = c
        downs[top.start] = top
    # Dilated stages stand where the downsampling was (see the module docstring).
    dilated = [c for c in calls if _dilated_stage(c)]
    for c in dilated:
        if not any(o.start < c.start and o.end > c.end for o in dilated):
            downs.setdefault(c.start, c)

    conv_starts = sorted(c.start for c in calls if _has_conv(c.module))
    # Convs that keep the spatial size: the layers of a stage, as opposed to a stem's strided
    # conv. Leaf calls only, so nesting a stem in a Sequential does not turn it into a stage.
    stage_conv_starts = sorted(c.start for c in calls if _has_conv(c.module) and _keeps_size(c))
    points: list[_Call] = []
    prev_start = -1
    for d in sorted(downs.values(), key=lambda c: c.start):
        # A stage since the previous downsampling began, and a conv from this one on.
        convs_before = any(prev_start < s < d.start for s in stage_conv_starts)
        convs_after = any(s >= d.start for s in conv_starts)
        prev_start = d.start
        if not (convs_before and convs_after):
            continue
        # Calls that ended just before d started, with nothing starting in between.
        last_events = [c for c in calls if c.end < d.start]
        if not last_events:
            continue
        latest_start = max((c.start for c in calls if c.start < d.start), default=-1)
        producers = [
            c
            for c in last_events
            if c.end > latest_start and c.output is d.input and n_calls[c.path] == 1
        ]
        if producers:
            points.append(min(producers, key=lambda c: (c.path.count("."), c.start)))
    return points


def _default_input(model: nn.Module) -> Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError(
            f"add_bam: {type(model).__name__} has no nn.Conv2d; BAM goes into image CNNs. "
            f"For another kind of model, place BAM by hand (torch_bam.BAM(channels))."
        )
    p = next(model.parameters())
    # Two samples, 128x128: small, yet five halvings still leave 4x4 maps.
    return torch.randn(2, first_conv.in_channels, 128, 128, device=p.device, dtype=p.dtype)


# ---------------------------------------------------------------------------------------------
# Inserting


def _plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _placement(model: nn.Module, path: str) -> tuple[str, str]:
    """How a BAM goes after the module at ``path`` (``"append"``, ``"beside"`` or ``"wrap"``)
    and the BAM's own path; a ValueError where a BAM is there already or the keys would clash."""
    module = model.get_submodule(path)
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    beside = f"{parent_path + '.' if parent_path else ''}{name}_bam"
    existing = None
    if isinstance(module, BAM):
        existing = path
    elif isinstance(module, BAMAfter) or (
        _plain_sequential(module) and isinstance(module._modules.get("bam"), BAM)
    ):
        existing = f"{path}.bam"
    elif _plain_sequential(parent) and isinstance(parent._modules.get(f"{name}_bam"), BAM):
        existing = beside
    if existing is not None:
        raise ValueError(
            f"add_bam: {path} already has a BAM after it ({existing}); a second one would stack "
            f"two BAMs on one map (and share its state_dict keys). Leave {path!r} out of at=."
        )
    if _plain_sequential(module) and "bam" not in module._modules:
        return "append", f"{path}.bam"
    if _plain_sequential(parent) and f"{name}_bam" not in parent._modules:
        return "beside", beside
    # BAMAfter keeps the module's keys at this level, beside its own bam.*: they must not meet.
    if "bam" in module._modules or any(k.split(".")[0] == "bam" for k in module.state_dict()):
        raise ValueError(
            f"add_bam: {path} has its own child named 'bam', so a BAM after it would share the "
            f"state_dict keys {path}.bam.* and one would be lost on load. Put BAM after another "
            f"module with at=, or place torch_bam.BAM by hand."
        )
    return "wrap", f"{path}.bam"


def _insert(model: nn.Module, path: str, bam: BAM) -> str:
    """Put ``bam`` after the module at ``path``; return the BAM's own path."""
    how, bam_path = _placement(model, path)
    module = model.get_submodule(path)
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if how == "append":
        module.add_module("bam", bam)
    elif how == "beside":
        items = list(parent._modules.items())
        parent._modules.clear()
        for key, child in items:
            parent._modules[key] = child
            if key == name:
                parent._modules[f"{name}_bam"] = bam
    else:
        setattr(parent, name, BAMAfter(module, bam))
    return bam_path


@torch.no_grad()
def _identity_init_(bam: BAM, attention: float) -> None:
    """Zero the gates' last layers and set their biases so that sigmoid(...) = ``attention``."""
    logit = math.log(attention / (1 - attention))
    final_c = bam.channel_att.gate_c[-1]
    final_s = bam.spatial_att.gate_s.gate_s_conv_final
    for layer in (final_c, final_s):
        layer.weight.zero_()
    if bam.combine == "sum":
        final_c.bias.fill_(logit / 2)
        final_s.bias.fill_(logit / 2)
    else:  # product: (-a) * a = logit
        final_c.bias.fill_(-math.sqrt(-logit))
        final_s.bias.fill_(math.sqrt(-logit))


def _norms_of(module: nn.Module) -> list[nn.Module]:
    """The norm layers of ``module`` outside any BAM: BatchNorms and frozen BatchNorms."""
    inside_bam = {id(m) for b in module.modules() if isinstance(b, BAM) for m in b.modules()}
    return [
        m
        for m in module.modules()
        if id(m) not in inside_bam
        and (isinstance(m, nn.modules.batchnorm._BatchNorm) or is_frozen_norm(m))
    ]


def _follow_norm(model: nn.Module, module: nn.Module) -> str:
    """``"frozen"`` if the norms of the module BAM goes after (or, if it has none, of the
    model) are all frozen; else ``"batch"``."""
    norms = _norms_of(module) or _norms_of(model)
    return "frozen" if norms and all(is_frozen_norm(m) for m in norms) else "batch"


def add_bam(
    model: nn.Module,
    example_input: Tensor | None = None,
    *,
    at: Iterable[str] | None = None,
    identity_init: bool = False,
    init_attention: float = 1e-3,
    norm: str = "auto",
    **bam_kwargs,
) -> nn.Module:
    """Insert a BAM at each bottleneck of an image CNN, in place; return the model.

    Args:
        model: any ``nn.Module`` that takes an image batch ``[B, C, H, W]``.
        example_input: a batch the model accepts, used once (eval mode, no grad) to find the
            bottlenecks. Default: ``randn(2, C, 128, 128)`` with ``C`` from the first Conv2d.
        at: module paths to put BAM after, instead of the found bottlenecks (e.g.
            ``["layer1", "layer2"]``).
        identity_init: start each BAM near identity, for fine-tuning a pretrained backbone:
            the gates' last layers get zero weights and biases such that the attention is
            ``init_attention`` everywhere, so ``F' = F * (1 + init_attention)``.
        init_attention: the starting attention with ``identity_init`` (small, but not so small
            that the sigmoid saturates and the gates cannot learn).
        norm: the BAMs' norm layers. ``"auto"``: follow the backbone, per BAM: ``"frozen"``
            where the norms of the module BAM goes after (or, if it has none, all of the
            model's) are frozen -- torchvision's or timm's ``FrozenBatchNorm2d``, or BatchNorms
            whose weight and bias have ``requires_grad=False`` -- else ``"batch"``.
            ``"batch"`` or ``"frozen"``: that for every BAM (see :class:`~torch_bam.BAM`).
            Frozen BAM norms keep their starting statistics (mean 0, variance 1), so training
            with one image per batch behaves as the frozen backbone does.
        **bam_kwargs: passed to every :class:`~torch_bam.BAM` (``reduction_ratio``,
            ``combine``, ...). ``device`` and ``dtype`` default to the model's.

    Returns:
        ``model``, changed in place, with ``model.bam_report``: a :class:`BAMReport` listing
        every insertion (module path, channels, (H, W) at the example input's size).

    Raises:
        ValueError: no Conv2d or the model fails on an image batch; no spatial downsampling;
            an unknown name in ``at`` (the error lists the valid ones), a name given twice, or
            a module that already has a BAM after it; too few channels for the reduction
            ratio.

    Example:
        >>> model = add_bam(torchvision.models.resnet50())
        >>> [p.path for p in model.bam_report]
        ['layer1', 'layer2', 'layer3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"add_bam expects an nn.Module, got {type(model).__name__}.")
    if not 0 < init_attention < 0.5:
        raise ValueError(f"add_bam: init_attention must be in (0, 0.5), got {init_attention}.")
    if norm != "auto":
        check_norm(norm, "add_bam")
    if example_input is None:
        example_input = _default_input(model)
    elif not _is_map(example_input):
        raise ValueError(
            f"add_bam: example_input must be a 4-D image batch [B, C, H, W], got "
            f"{type(example_input).__name__} of shape {list(getattr(example_input, 'shape', []))}."
        )
    existing = sum(isinstance(m, BAM) for m in model.modules())
    if existing and at is None:
        raise ValueError(
            f"add_bam: {type(model).__name__} already has {existing} BAM block(s); adding BAM at "
            f"the same bottlenecks again would stack them. Pass at=[module names] to add more."
        )
    if at is None:
        points = _find_bottlenecks(model, example_input)
        if not points:
            raise ValueError(
                f"add_bam: found no bottleneck in {type(model).__name__}: no spatial "
                f"downsampling with convolutions before and after it at input size "
                f"{tuple(example_input.shape[2:])}. Pass at=[module names] to place BAM by hand."
            )
    else:
        at = [at] if isinstance(at, str) else list(at)
        traced = _trace_calls(model, example_input)
        calls = {c.path: c for c in traced if c.output is not None}
        unknown = [name for name in at if name not in calls]
        if unknown:
            raise ValueError(
                f"add_bam: no module {unknown} with a 4-D output in {type(model).__name__}. "
                f"Valid names: {', '.join(calls)}."
            )
        twice = sorted({name for name in at if at.count(name) > 1})
        if twice:
            raise ValueError(
                f"add_bam: at names {twice} more than once; that would stack BAMs on one map. "
                f"Name each module once."
            )
        runs = {name: sum(c.path == name for c in traced) for name in at}
        reused = [f"{name} runs {n} times in one forward" for name, n in runs.items() if n > 1]
        if reused:
            # As the automatic placement requires: a BAM after a module that runs more than
            # once would run at every call, on other maps, and its report would name one.
            raise ValueError(
                f"add_bam: {'; '.join(reused)} (one module object reused, as torchvision's "
                f"blocks reuse their relu), so a BAM after it would run at every call. Name a "
                f"module that runs once, such as the block that contains it."
            )
        points = [calls[name] for name in at]
        for name in at:  # every check before the first change: all of at, or nothing
            _placement(model, name)
    p = next(model.parameters(), None)
    if p is not None:
        bam_kwargs.setdefault("device", p.device)
        bam_kwargs.setdefault("dtype", p.dtype)
    r = check_positive_int("reduction_ratio", bam_kwargs.get("reduction_ratio", 16), "add_bam")
    too_small = [(c.path, c.output.shape[1]) for c in points if c.output.shape[1] // r < 1]
    if too_small:
        least = min(ch for _, ch in too_small)
        raise ValueError(
            f"add_bam: {too_small} (module, channels) have fewer channels than reduction_ratio="
            f"{r}, so BAM's bottleneck would be empty. Use reduction_ratio<={least}, or at= to "
            f"leave those points out."
        )
    report = BAMReport()
    for c in points:
        channels, size = int(c.output.shape[1]), tuple(int(s) for s in c.output.shape[2:])
        bam_norm = _follow_norm(model, c.module) if norm == "auto" else norm
        bam = BAM(channels, norm=bam_norm, **bam_kwargs)
        if identity_init:
            _identity_init_(bam, init_attention)
        bam.train(model.training)
        bam_path = _insert(model, c.path, bam)
        report.append(BAMInsertion(c.path, channels, size, bam_path, bam_norm))
    model.bam_report = report
    return model


# ---------------------------------------------------------------------------------------------
# The finder and the insertion for any module (torch_bam.peers places SE, ECA, CBAM with them)


def bottlenecks(
    model: nn.Module, example_input: Tensor | None = None
) -> list[tuple[str, int, tuple[int, int]]]:
    """``(path, channels, (H, W))`` of each bottleneck :func:`add_bam` would put BAM after."""
    x = _default_input(model) if example_input is None else example_input
    calls = _find_bottlenecks(model, x)
    return [
        (c.path, int(c.output.shape[1]), (int(c.output.shape[2]), int(c.output.shape[3])))
        for c in calls
    ]


def insert_after(model: nn.Module, path: str, module: nn.Module) -> str:
    """Put ``module`` after the module at ``path``, as :func:`add_bam` places a BAM; returns
    the inserted module's own path."""
    _placement(model, path)  # its checks first: nothing changes if it refuses
    return _insert(model, path, module)  # type: ignore[arg-type]
