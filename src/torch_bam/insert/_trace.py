"""One forward pass with hooks: every module call, in order, with what it took and returned."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._train_flags import evaluating


@dataclass
class Call:
    """One call of a submodule. ``start`` and ``end`` count hook events, so a call encloses
    another exactly when it starts before it and ends after it."""

    path: str
    module: nn.Module
    start: int
    end: int = -1
    arg: object = None  # the first positional argument, as given (a tensor, a list, ...)
    result: object = None  # what it returned, as returned
    parent: Call | None = None  # the innermost call this one runs in
    runs: int = 1  # how often this module ran in the forward pass

    @property
    def input(self) -> Tensor | None:
        """The first argument if it is a feature map ``[B, C, H, W]``."""
        return self.arg if is_map(self.arg) else None

    @property
    def output(self) -> Tensor | None:
        """The result if it is a feature map ``[B, C, H, W]``."""
        return self.result if is_map(self.result) else None

    def encloses(self, other: Call) -> bool:
        return self.start < other.start and self.end > other.end

    def ancestors(self) -> list[Call]:
        """The calls this one runs in, innermost first."""
        out, c = [], self.parent
        while c is not None:
            out.append(c)
            c = c.parent
        return out

    def takes(self, t: Tensor) -> bool:
        """Is ``t`` this call's first argument, or one of the maps in a list it took (the
        stages of HRNet or SelecSLS pass lists of maps)?"""
        if self.arg is t:
            return True
        return isinstance(self.arg, (list, tuple)) and any(a is t for a in self.arg)


def is_map(t: object) -> bool:
    return isinstance(t, Tensor) and t.dim() == 4


def has_conv(module: nn.Module) -> bool:
    """A convolution itself (a 4-D weight of its own), not a container of some."""
    return any(p.dim() == 4 for p in module.parameters(recurse=False))


def trace_calls(model: nn.Module, example_input: Tensor, owner: str = "add_bam") -> list[Call]:
    """Run ``model`` once (eval mode, no grad) and record every submodule call."""
    calls: list[Call] = []
    stack: list[Call] = []  # the calls open now: hooks fire in nested order
    counter = iter(range(1 << 62))
    handles = []

    def pre_hook(path):
        def hook(module, args):
            parent = stack[-1] if stack else None
            call = Call(path, module, next(counter), arg=args[0] if args else None, parent=parent)
            stack.append(call)
            calls.append(call)

        return hook

    def post_hook(module, args, output):
        call = stack.pop()
        call.end = next(counter)
        call.result = output

    for path, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(pre_hook(path)))
        handles.append(module.register_forward_hook(post_hook))
    try:
        with evaluating(model), torch.no_grad():
            model(example_input)
    except Exception as err:
        raise ValueError(
            f"{owner}: the model failed on an example image batch of shape "
            f"{list(example_input.shape)} ({type(err).__name__}: {err}). {owner} needs an image "
            f"CNN that takes [B, C, H, W]; pass example_input= with a shape the model accepts."
        ) from err
    finally:
        for h in handles:
            h.remove()
    runs: dict[str, int] = {}
    for c in calls:
        runs[c.path] = runs.get(c.path, 0) + 1
    for c in calls:
        c.runs = runs[c.path]
    return calls


def default_input(model: nn.Module, owner: str = "add_bam") -> Tensor:
    """``randn(2, C, 128, 128)`` (or the model's own fixed input size): small, yet five
    halvings still leave 4x4 maps. ``C`` is the model's: timm's ``pretrained_cfg`` or
    ``in_chans`` where it has them (a TResNet's first conv sees 48 channels, after its
    space-to-depth), else the first Conv2d's."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ValueError(
            f"{owner}: {type(model).__name__} has no nn.Conv2d; BAM goes into image CNNs. "
            f"For another kind of model, place BAM by hand (torch_bam.BAM(channels))."
        )
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    channels, size = first_conv.in_channels, (128, 128)
    input_size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(input_size, (tuple, list)) and len(input_size) == 3:
        channels = int(input_size[0])
        if cfg.get("fixed_input_size"):  # position tables or windows made for one size
            size = (int(input_size[1]), int(input_size[2]))
    elif isinstance(getattr(model, "in_chans", None), int):
        channels = model.in_chans
    p = next(model.parameters())
    return torch.randn(2, channels, *size, device=p.device, dtype=p.dtype)
