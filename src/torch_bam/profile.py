"""``torch-bam profile``: parameters, MACs, activation memory and latency of a model.

GFLOPs follow the paper: multiply-accumulates for ONE image, counted by
``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC) and halved.
Activation memory is the bytes autograd saves for backward during one training-mode forward
pass of the batch (what training must hold), measured with ``saved_tensors_hooks``.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .bam import BAM

__all__ = ["Profile", "profile_model", "format_profiles"]


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
    latency_ms: float
    bams: list[BlockShare] = field(default_factory=list)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gflops_paper_convention"] = self.gmacs
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


def _median_ms(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


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


def profile_model(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    batch: int = 1,
    name: str | None = None,
    warmup: int = 2,
    runs: int = 5,
) -> Profile:
    """Profile ``model`` on CPU with random input; MACs are for one image, latency for ``batch``."""
    model = model.eval()
    one = torch.randn(1, *input_size)
    xb = torch.randn(batch, *input_size)
    macs, per_module = count_macs(model, one)
    root = type(model).__name__
    with torch.no_grad():
        latency = _median_ms(lambda: model(xb), warmup, runs)
    bam_lat = _bam_latencies(model, xb, runs) if runs else {}
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
    act_batch = max(batch, 2)
    act = saved_activation_bytes(model, torch.randn(act_batch, *input_size))
    return Profile(
        model=name or root,
        input_size=tuple(input_size),
        batch=batch,
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        saved_activation_bytes=act,
        activation_batch=act_batch,
        latency_ms=latency,
        bams=bams,
    )


def _row_values(p: Profile) -> list[tuple[str, float, str]]:
    bam_params = sum(b.params for b in p.bams)
    bam_macs = sum(b.macs for b in p.bams)
    return [
        ("parameters (M)", p.params / 1e6, "{:.3f}"),
        ("GFLOPs (MACs, 1 image)", p.gmacs, "{:.4f}"),
        (
            f"saved activations, train fwd, batch {p.activation_batch} (MiB)",
            p.saved_activation_bytes / 2**20,
            "{:.2f}",
        ),
        (f"latency, CPU, batch {p.batch} (ms, median)", p.latency_ms, "{:.2f}"),
        ("BAM parameters (M)", bam_params / 1e6, "{:.4f}"),
        ("BAM GFLOPs", bam_macs / 1e9, "{:.5f}"),
    ]


def format_profiles(profiles: list[Profile]) -> str:
    """A text table: one column per model, a ratio column when there are two."""
    rows = [_row_values(p) for p in profiles]
    header = ["metric"] + [p.model for p in profiles] + (["ratio"] if len(profiles) == 2 else [])
    lines = []
    for i, (label, _, fmt) in enumerate(rows[0]):
        cells = [label] + [fmt.format(r[i][1]) for r in rows]
        if len(profiles) == 2:
            a, b = rows[0][i][1], rows[1][i][1]
            cells.append(f"{b / a:.3f}x" if a else "-")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    for p in profiles:
        if p.bams:
            out.append(f"\nBAM blocks in {p.model} (share of the whole model):")
            for b in p.bams:
                out.append(
                    f"  {b.name}: {b.params:,} params ({b.params / p.params:.2%}), "
                    f"{b.macs / 1e6:.3f} MMACs ({b.macs / max(p.macs, 1):.2%}), "
                    f"{b.latency_ms:.3f} ms ({b.latency_ms / p.latency_ms:.1%} of latency)"
                )
    out.append(
        "\nGFLOPs: multiply-accumulates for one image (the paper's convention). Saved "
        "activations: bytes autograd keeps for backward in one training forward."
    )
    return "\n".join(out)


def run(
    model: str,
    input: int = 224,
    vs: str | None = None,
    batch: int = 1,
    num_classes: int = 1000,
    in_chans: int = 3,
    runs: int = 5,
    as_json: bool = False,
) -> str:
    """Profile registered models by name and return the printed text."""
    import json

    from .models import create_model

    profiles = []
    for name in [model] + ([vs] if vs else []):
        m = create_model(name, num_classes=num_classes, in_chans=in_chans)
        profiles.append(profile_model(m, (in_chans, input, input), batch, name=name, runs=runs))
    if as_json:
        return json.dumps([p.to_dict() for p in profiles], indent=2)
    return format_profiles(profiles)
