"""``torch-bam profile``: parameters, MACs, activation memory and latency of a model.

GFLOPs follow the paper: multiply-accumulates for ONE image, counted by
``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC) and halved.
Activation memory is the bytes autograd saves for backward during one training-mode forward
pass of the batch (what training must hold), measured with ``saved_tensors_hooks``.
Latency is timed in turns, every model once per turn (:func:`time_in_turns`), and reported as
the median and range over the turns; two models compare by the median of their per-turn ratios
(:func:`paired_ratio`), each ratio taken under one load.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn

from .bam import BAM
from .errors import UsageError

__all__ = [
    "Profile",
    "format_profiles",
    "paired_ratio",
    "profile_model",
    "profile_models",
    "time_in_turns",
]


@dataclass
class BlockShare:
    name: str
    params: int
    macs: int
    latency_ms: float


@dataclass
class Profile:
    model: str
    input_size: tuple[int, int, int]
    batch: int
    params: int
    macs: int
    saved_activation_bytes: int
    activation_batch: int
    latency_ms: float  # median over the turns
    latency_turns_ms: list[float] = field(default_factory=list)
    # Profiles with the same timing_run were timed in the same turns: turn i of one ran
    # beside turn i of the other, so their per-turn ratios are paired.
    timing_run: int = -1
    bams: list[BlockShare] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def latency_range_ms(self) -> tuple[float, float]:
        return min(self.latency_turns_ms), max(self.latency_turns_ms)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gflops_paper_convention"] = self.gmacs
        d["latency_min_ms"], d["latency_max_ms"] = self.latency_range_ms
        return d


def count_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total MACs of ``model(x)`` and per-module MACs (FlopCounterMode FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    per_module = {k: sum(v.values()) // 2 for k, v in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, per_module


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training-mode forward (parameters excluded)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key[0] not in param_ptrs and key not in seen:
            seen.add(key)
            total += key[1]
        return t

    # A copy in training mode, so BatchNorm running statistics of the caller's model stay put.
    model = copy.deepcopy(model).train()
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return total


def time_in_turns(
    fns: list[Callable[[], object]], turns: int, warmup: int = 2
) -> list[list[float]]:
    """Milliseconds of every call of each function, the functions called in turns.

    Each turn calls every function once, the order reversed every other turn (A B, B A, ...),
    so that a change of load on a shared machine hits all of them alike and none always runs
    first. ``result[k][i]`` is function ``k``'s time in turn ``i``.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for turn in range(turns):
        for k in order if turn % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def paired_ratio(first: list[float], second: list[float]) -> tuple[float, float, float]:
    """``second / first`` turn by turn (both calls of a turn ran under the same load):
    the median, min and max of the per-turn ratios."""
    ratios = [b / a for a, b in zip(first, second, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _bam_latencies(model: nn.Module, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median time spent inside each BAM block during whole-model forward passes."""
    elapsed: dict[str, list[float]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, BAM):
            start: dict[str, float] = {}
            elapsed[name] = []

            def pre(_m, _i, start=start):
                start["t"] = time.perf_counter()

            def post(_m, _i, _o, start=start, name=name):
                elapsed[name].append((time.perf_counter() - start["t"]) * 1e3)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with torch.no_grad():
            for _ in range(runs):
                model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: statistics.median(v) for k, v in elapsed.items() if v}


_timing_runs = itertools.count()


def profile_models(
    models: Sequence[tuple[str, nn.Module]],
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch: int = 1,
    warmup: int = 2,
    runs: int = 10,
) -> list[Profile]:
    """Profile ``(name, model)`` pairs on CPU with random input: MACs for one image, latency
    for ``batch``. The models' latencies are timed in the same ``runs`` turns
    (:func:`time_in_turns`), so :func:`paired_ratio` compares them turn by turn."""
    if batch < 1 or runs < 1:
        raise ValueError(f"profile_models: batch and runs must be >= 1, got {batch} and {runs}.")
    models = [(name, model.eval()) for name, model in models]
    xb = torch.randn(batch, *input_size)
    with torch.no_grad():
        turns = time_in_turns([partial(model, xb) for _, model in models], runs, warmup)
    run_id = next(_timing_runs)
    return [
        _profile_one(model, name, input_size, xb, times, run_id, runs)
        for (name, model), times in zip(models, turns, strict=True)
    ]


def profile_model(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch: int = 1,
    name: str | None = None,
    warmup: int = 2,
    runs: int = 10,
) -> Profile:
    """Profile one model (:func:`profile_models`); ``name`` defaults to its class name."""
    [p] = profile_models([(name or type(model).__name__, model)], input_size, batch, warmup, runs)
    return p


def _profile_one(
    model: nn.Module,
    name: str,
    input_size: tuple[int, int, int],
    xb: torch.Tensor,
    turns_ms: list[float],
    run_id: int,
    runs: int,
) -> Profile:
    macs, per_module = count_macs(model, torch.randn(1, *input_size))
    root = type(model).__name__
    bam_lat = _bam_latencies(model, xb, runs)
    bams = []
    for bname, m in model.named_modules():
        if isinstance(m, BAM):
            key = f"{root}.{bname}" if bname else root
            bams.append(
                BlockShare(
                    name=bname or root,
                    params=sum(p.numel() for p in m.parameters()),
                    macs=per_module.get(key, 0),
                    latency_ms=bam_lat.get(bname, float("nan")),
                )
            )
    # Training needs a batch of at least 2 (BatchNorm); measure there, report per batch used.
    act_batch = max(len(xb), 2)
    act = saved_activation_bytes(model, torch.randn(act_batch, *input_size))
    return Profile(
        model=name,
        input_size=tuple(input_size),
        batch=len(xb),
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        saved_activation_bytes=act,
        activation_batch=act_batch,
        latency_ms=statistics.median(turns_ms),
        latency_turns_ms=list(turns_ms),
        timing_run=run_id,
        bams=bams,
    )


def _num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (more for large values), no exponent: a
    value that is not zero never prints as 0."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def _pct(fraction: float) -> str:
    return _num(100 * fraction) + "%"


def _ratio(first: float, second: float) -> str:
    """``second / first``, or "-" where either is zero (a model without BAM blocks, say)."""
    return f"{_num(second / first)}x" if first and second else "-"


def _latency_cell(p: Profile) -> str:
    low, high = p.latency_range_ms
    return f"{_num(p.latency_ms)} [{_num(low)}, {_num(high)}]"


def _paired(a: Profile, b: Profile) -> bool:
    return a.timing_run == b.timing_run and len(a.latency_turns_ms) == len(b.latency_turns_ms)


def format_profiles(profiles: list[Profile]) -> str:
    """A text table: one column per model, and for two models a ratio column, second / first.

    Latency is the median [min, max] over the turns; its ratio is the median [min, max] of the
    per-turn ratios when the two were timed in the same turns (:func:`profile_models`).
    """
    first = profiles[0]
    rows: list[tuple[str, list[str], tuple[float, float] | None]] = []

    def row(label: str, values: list[float], fmt) -> None:
        ends = (values[0], values[1]) if len(values) == 2 else None
        rows.append((label, [fmt(v) for v in values], ends))

    row("parameters", [p.params for p in profiles], "{:,}".format)
    row("GFLOPs (MACs, 1 image)", [p.gmacs for p in profiles], lambda v: _num(v, 4))
    row(
        f"saved activations, train fwd, batch {first.activation_batch} (MiB)",
        [p.saved_activation_bytes / 2**20 for p in profiles],
        _num,
    )
    latency_label = f"latency, CPU, batch {first.batch} (ms): median [min, max]"
    rows.append((latency_label, [_latency_cell(p) for p in profiles], None))
    row("BAM parameters", [sum(b.params for b in p.bams) for p in profiles], "{:,}".format)
    row("BAM GFLOPs", [sum(b.macs for b in p.bams) / 1e9 for p in profiles], lambda v: _num(v, 4))

    header = ["metric"] + [p.model for p in profiles]
    notes = []
    if len(profiles) == 2:
        a, b = profiles
        header.append(f"ratio {b.model} / {a.model}")
        for _, cells, ends in rows:
            if ends is not None:
                cells.append(_ratio(*ends))
            elif _paired(a, b):
                med, low, high = paired_ratio(a.latency_turns_ms, b.latency_turns_ms)
                cells.append(f"{_num(med)}x [{_num(low)}, {_num(high)}]")
            else:
                cells.append(f"{_ratio(a.latency_ms, b.latency_ms)} (of the medians, unpaired)")
        notes.append(
            f"Ratio: second / first ({b.model} / {a.model}); '-' where either is zero. For "
            f"latency: the median [min, max] of the per-turn ratios."
        )
    lines = [[label, *cells] for label, cells, _ in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    for p in profiles:
        if p.bams:
            out.append(f"\nBAM blocks in {p.model} (share of the whole model):")
            for blk in p.bams:
                out.append(
                    f"  {blk.name}: {blk.params:,} params ({_pct(blk.params / p.params)}), "
                    f"{_num(blk.macs / 1e6)} MMACs ({_pct(blk.macs / max(p.macs, 1))}), "
                    f"{_num(blk.latency_ms)} ms ({_pct(blk.latency_ms / p.latency_ms)} of the "
                    f"median latency)"
                )
    turns = len(first.latency_turns_ms)
    each = "each turn runs every model once, in alternating order" if len(profiles) > 1 else ""
    out.append(
        "\nGFLOPs: multiply-accumulates for one image (the paper's convention). Saved "
        "activations: bytes autograd keeps for backward in one training forward. Latency: "
        f"{turns} timed turns on this machine's CPU after warm-up{'; ' if each else ''}{each}. "
        "A BAM block's time: the median over as many more forward passes."
    )
    out += notes
    return "\n".join(out)


_SIDES = "224 for the ImageNet networks, 32 for the CIFAR ones and small_cnn"


def _check_args(input: int, batch: int, num_classes: int, in_chans: int, runs: int) -> None:
    """Refuse numbers no model can take, before building anything."""
    if input < 2:
        raise UsageError(
            f"--input must be at least 2 pixels, got {input}: BAM's spatial attention needs an "
            f"image with a spatial layout. Pass the side the model is built for: {_SIDES}."
        )
    for flag, value, fix in (
        ("--batch", batch, "--batch 1"),
        ("--num-classes", num_classes, "--num-classes 1000"),
        ("--in-chans", in_chans, "--in-chans 3 for RGB images, 1 for greyscale"),
        ("--runs", runs, "--runs 10; the latency is the median over that many timed turns"),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}. Pass e.g. {fix}.")


def _check_names(names: list[str]) -> None:
    from .models import list_models
    from .models._registry import unknown_model_hint

    for name in names:
        if name not in list_models():
            raise UsageError(
                f"unknown model {name!r}.{unknown_model_hint(name)} The names are: "
                f"{', '.join(list_models())}."
            )


def _is_out_of_memory(error: BaseException) -> bool:
    """An allocation that failed (torch's CPU allocator, CUDA, or Python's own)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return "can't allocate memory" in text or "not enough memory" in text


def _out_of_memory(name: str, input: int, batch: int, error: BaseException) -> UsageError:
    import re

    text = str(error).strip()
    asked = re.search(r"allocate (\d+) bytes", text)
    if asked:  # torch's CPU allocator: say how much, without its C++ location
        cause = f"one allocation of {int(asked.group(1)) / 2**30:,.1f} GiB failed"
    else:
        cause = text.splitlines()[0] if text else type(error).__name__
    return UsageError(
        f"--input {input} (batch {batch}) ran out of memory for {name} on this machine "
        f"({cause[:200]}). Pass a smaller --input or --batch, e.g. --input {_SIDES}."
    )


def _bam_map_sides(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """``{BAM name: (h, w)}`` of each BAM's spatial map for input ``x``."""
    from .attention import record_attention

    with record_attention(model) as maps, torch.no_grad():
        model(x)
    return {k: tuple(m.spatial_logits.shape[-2:]) for k, m in maps.items()}


def _check_bam_maps(name: str, model: nn.Module, in_chans: int, input: int) -> None:
    """Refuse an input so small that a BAM sees a 1x1 map: its spatial attention would have
    nothing to choose between, and the profile would not be of the model as it is used."""
    if not any(isinstance(m, BAM) for m in model.modules()):
        return
    sides = _bam_map_sides(model, torch.randn(1, in_chans, input, input))
    flat = [k for k, (h, w) in sides.items() if h * w == 1]
    if not flat:
        return
    probe = 256  # any side large enough that every map is wider than 1: gives each stride
    strides = {
        k: probe / max(hw)
        for k, hw in _bam_map_sides(model, torch.randn(1, in_chans, probe, probe)).items()
    }
    need = math.ceil(2 * max(strides[k] for k in flat))
    raise UsageError(
        f"--input {input} is too small for the BAMs of {name}: {len(flat)} of its {len(sides)} "
        f"BAMs ({', '.join(flat)}) would see a 1x1 map, where spatial attention has nothing to "
        f"attend to. Pass --input {need} or more (the model is built for {_SIDES})."
    )


def _build(name: str, num_classes: int, in_chans: int, input: int) -> nn.Module:
    """The model, after one forward pass that shows the input size suits it."""
    from .models import create_model

    model = create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
    try:
        with torch.no_grad():
            model(torch.randn(1, in_chans, input, input))
    except (RuntimeError, MemoryError) as e:
        if _is_out_of_memory(e):
            raise _out_of_memory(name, input, 1, e) from None
        # A feature map shrank to nothing: the image is too small.
        cause = str(e).strip().splitlines()[0]
        raise UsageError(
            f"--input {input} is too small for {name} ({cause}). Pass a larger side, e.g. {_SIDES}."
        ) from e
    _check_bam_maps(name, model, in_chans, input)
    return model


def run(
    model: str,
    input: int = 224,
    vs: str | None = None,
    batch: int = 1,
    num_classes: int = 1000,
    in_chans: int = 3,
    runs: int = 10,
    as_json: bool = False,
) -> str:
    """Profile registered models by name (``vs``: a second one, timed in the same turns) and
    return the printed text. Bad input raises :class:`~torch_bam.errors.UsageError`."""
    import json

    _check_args(input, batch, num_classes, in_chans, runs)
    names = [model] + ([vs] if vs else [])
    _check_names(names)
    models = [(name, _build(name, num_classes, in_chans, input)) for name in names]
    try:
        profiles = profile_models(models, (in_chans, input, input), batch, runs=runs)
    except (RuntimeError, MemoryError) as e:
        if not _is_out_of_memory(e):
            raise
        raise _out_of_memory(" and ".join(names), input, batch, e) from None
    if as_json:
        return json.dumps([p.to_dict() for p in profiles], indent=2)
    return format_profiles(profiles)
