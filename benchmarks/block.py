"""One BAM block: how much faster than the seed's block, and how much memory it keeps.

CPU, float32, B=32, at ResNet-50's three BAM shapes (256@56, 512@28, 1024@14): inference and
forward+backward of the seed's block in eager mode and under ``torch.compile`` (NCHW and
channels_last), ours in eager mode, ours with ``fuse_for_inference()`` and ``inplace=True``, and
two floors: the spatial gate's convolutions alone, and the block's floor
(:class:`torch_bam.floor.BAMFloor`: its convolutions and one gate pass). All variants of a row
are timed in the same turns. Then the bytes saved for backward over the input's bytes.

CUDA, bf16 autocast, channels_last: the block's gradients through the CUDA path against the
plain path; ours against the seed's block at 256@56, 512@28, 1024@14, B 32 and 64, eager
(forward+backward and inference) and compiled (B=64); kernel time against wall time
(torch.profiler) at 256@56, B=64; a compiled block step in a CUDA graph.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import contextlib
import copy

import torch

from benchmarks._plan import Ctx, Row
from benchmarks._timer import Times
from tests.reference.seed_bam import BAM as SeedBAM
from torch_bam import BAM
from torch_bam.floor import BAMFloor, _conv_1x1
from torch_bam.functional import get_backend, set_backend

CL = torch.channels_last
FORMATS = (("NCHW", torch.contiguous_format), ("CL", CL))


class ConvsAlone(BAMFloor):
    """The spatial gate's convolutions alone, with the block's weights (no gate pass)."""

    def forward(self, x):
        s = x
        for conv in self.convs:
            s = _conv_1x1(s, conv) if conv.kernel_size == (1, 1) else conv(s)
        return s


def _pair(channels: int, device: str = "cpu"):
    seed = SeedBAM(channels).to(device)
    ours = BAM(channels).to(device)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed, ours


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


# ------------------------------------------------------------------------------------- CPU
CPU_SHAPES = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14)]
DRY_CPU_SHAPES = [(2, 32, 8, 8)]
# (vs seed eager, vs seed compiled): speed-ups of ours that the block must reach.
CPU_GOALS = {"inference": (4.0, 1.3), "fwd+bwd": (2.0, 1.0)}


def cpu_block(shape):
    def run(ctx: Ctx) -> None:
        seed, ours = _pair(shape[1])
        x0 = torch.randn(shape)
        for mode in ("inference", "fwd+bwd"):
            fns, before = {}, {}
            for fmt, mf in FORMATS:
                x = x0.contiguous(memory_format=mf)
                s_mod = copy.deepcopy(seed).to(memory_format=mf).train(mode != "inference")
                o_mod = copy.deepcopy(ours).to(memory_format=mf).train(mode != "inference")
                comp = torch.compile(s_mod)
                floor, convs = BAMFloor(o_mod), ConvsAlone(o_mod)
                if mode == "inference":
                    fused = copy.deepcopy(o_mod).fuse_for_inference()
                    fused.inplace = True
                    xi = x.clone()
                    fns[f"seed eager {fmt}"] = _no_grad(lambda m=s_mod, x=x: m(x))
                    fns[f"seed compile {fmt}"] = _no_grad(lambda m=comp, x=x: m(x))
                    fns[f"ours {fmt}"] = _no_grad(lambda m=o_mod, x=x: m(x))
                    fns[f"ours fused+inplace {fmt}"] = _no_grad(lambda m=fused, x=xi: m(x))
                    # It writes into xi: every call starts from x again (untimed), or each would
                    # run on the last one's output, growing up to 2x per call.
                    before[f"ours fused+inplace {fmt}"] = lambda xi=xi, x=x: xi.copy_(x)
                    fns[f"floor {fmt}"] = _no_grad(lambda m=floor, x=x: m(x))
                    fns[f"convs alone {fmt}"] = _no_grad(lambda m=convs, x=x: m(x))
                else:
                    xg = x.clone().requires_grad_()
                    dy = torch.randn_like(x)
                    dy1 = torch.randn(shape[0], 1, *shape[2:]).contiguous(memory_format=mf)
                    for name, m, g in (("seed eager", s_mod, dy), ("seed compile", comp, dy),
                                       ("ours", o_mod, dy), ("floor", floor, dy),
                                       ("convs alone", convs, dy1)):  # fmt: skip
                        fns[f"{name} {fmt}"] = lambda m=m, g=g, xg=xg: m(xg).backward(g)
            t = ctx.measure(fns, 8, min_s=0.5, max_turns=50, before=before)
            torch._dynamo.reset()
            ours_names = ["ours NCHW", "ours CL"]
            if mode == "inference":
                ours_names += ["ours fused+inplace NCHW", "ours fused+inplace CL"]
            # Each turn's best layout of each: the comparison a user who picks the layout makes.
            best = {
                "ours": t.per_turn_best(*ours_names),
                "seed eager": t.per_turn_best("seed eager NCHW", "seed eager CL"),
                "seed compile": t.per_turn_best("seed compile NCHW", "seed compile CL"),
                "floor": t.per_turn_best("floor NCHW", "floor CL"),
                "convs alone": t.per_turn_best("convs alone NCHW", "convs alone CL"),
            }
            bt = Times(best)
            eager, comp = bt.ratio("seed eager", "ours"), bt.ratio("seed compile", "ours")
            over_floor = bt.ratio("ours", "floor")
            need_eager, need_comp = CPU_GOALS[mode]
            where = f"C={shape[1]} {shape[2]}x{shape[3]}"
            ctx.ratio_verdict(
                f"CPU block {mode}, {where}: seed eager / ours", eager, need_eager, at_most=False
            )
            ctx.ratio_verdict(
                f"CPU block {mode}, {where}: seed compiled / ours", comp, need_comp, at_most=False
            )
            ctx.report.table(
                f"One block on CPU, {where}, B={shape[0]}, {mode}, float32",
                ["variant", "NCHW ms", "channels_last ms"],
                [
                    [name, f"{t.median(name + ' NCHW'):.1f}", f"{t.median(name + ' CL'):.1f}"]
                    for name in (
                        "seed eager",
                        "seed compile",
                        "ours",
                        "ours fused+inplace",
                        "floor",
                        "convs alone",
                    )
                    if name + " NCHW" in t.ms
                ],  # fmt: skip
                after=[
                    f"Per-turn ratios, each turn's best layout (median [95% CI] over {len(best['ours'])} turns): "
                    f"seed eager / ours {eager}; seed compiled / ours {comp}; ours / floor {over_floor}; "
                    f"seed eager / convs alone {bt.ratio('seed eager', 'convs alone')} (the most any "
                    "implementation could gain over the seed in eager mode). ms: medians.",
                ],
            )

    return run


def _saved_bytes(model, x):
    """Bytes of the distinct activation storages autograd keeps for backward (parameters
    left out: the model holds them anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def cpu_memory(ctx: Ctx) -> None:
    rows = []
    shapes = [(2, 32, 8, 8)] if ctx.dry else [(8, *s[1:]) for s in CPU_SHAPES]
    for shape in shapes:
        seed, ours = _pair(shape[1])
        x = torch.randn(shape, requires_grad=True)
        nbytes = x.numel() * 4
        r_seed = _saved_bytes(seed.train(), x) / nbytes
        r_ours = _saved_bytes(ours.train(), x) / nbytes
        xc = x.detach().contiguous(memory_format=CL).requires_grad_()
        r_cl = _saved_bytes(copy.deepcopy(ours).to(memory_format=CL).train(), xc) / nbytes
        rows.append([str(list(shape)), f"{r_seed:.2f}", f"{r_ours:.2f}", f"{r_cl:.2f}"])
        v = ctx.report.verdict(
            f"CPU block saved bytes / input bytes, C={shape[1]} (seed {r_seed:.2f})",
            f"{r_ours:.2f} (NCHW), {r_cl:.2f} (channels_last)",
            "<= 1.15",
            max(r_ours, r_cl) <= 1.15,
        )
        v.met = max(r_ours, r_cl) <= 1.15  # a count, not a timing: it holds in a dry run too
    ctx.report.table(
        "Bytes saved for backward / input bytes (one block in training, distinct activation storages, parameters excluded)",
        ["shape", "seed", "ours NCHW", "ours channels_last"],
        rows,
    )


# ------------------------------------------------------------------------------------- CUDA
BLOCK_SHAPES = [(c, hw, b) for c, hw in ((256, 56), (512, 28), (1024, 14)) for b in (32, 64)]
DRY_BLOCK_SHAPES = [(32, 8, 2), (64, 4, 2)]


@contextlib.contextmanager
def cuda_path(ctx: Ctx):
    """The CUDA room (the Triton path) for our blocks: backend "triton" (the default on CUDA is
    the plain path); in a dry run on CPU, the same code under the Triton interpreter."""
    backend = get_backend()
    set_backend("triton")
    try:
        yield
    finally:
        set_backend(backend)


def _autocast(ctx: Ctx):
    return torch.autocast(ctx.tensor_device, dtype=torch.bfloat16)


def _block_train(ctx, block, x, dy):
    def step():
        with _autocast(ctx):
            y = block(x)
        y.backward(dy)

    return step


def _block_infer(ctx, block, x):
    def step():
        with torch.no_grad(), _autocast(ctx):
            block(x)

    return step


def _block_pair(ctx, c, hw, b):
    device = ctx.tensor_device
    x = torch.randn(b, c, hw, hw, device=device).to(torch.bfloat16, memory_format=CL)
    x.requires_grad_()
    dy = torch.randn_like(x)
    seed, ours = _pair(c, device)
    return x, dy, ours.to(memory_format=CL).train(), seed.to(memory_format=CL).train()


def cuda_block_correctness(ctx: Ctx) -> None:
    device = ctx.tensor_device
    c, hw, b = (64, 8, 4) if ctx.dry else (256, 28, 8)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, c, hw, hw, device=device, generator=gen).to(torch.bfloat16, memory_format=CL)
    dy = torch.randn(x.shape, device=device, generator=gen, dtype=x.dtype)
    ours = BAM(c).to(device).to(memory_format=CL).train()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2, generator=gen)
    plain = copy.deepcopy(ours)
    results = []
    backend = get_backend()
    try:
        for block, name in ((ours, "triton" if device == "cpu" else "auto"), (plain, "reference")):
            set_backend(name)
            xx = x.clone().requires_grad_()
            _block_train(ctx, block, xx, dy)()
            results.append([xx.grad] + [p.grad for p in block.parameters()])
    finally:
        set_backend(backend)
    # bf16 against bf16 mixes two roundings; judge both paths against float64 instead: ours
    # may be at most 0.05 (scaled) off, or no further than the plain bf16 path itself is.
    truth = copy.deepcopy(plain).double()
    set_backend("reference")
    try:
        for p in truth.parameters():
            p.grad = None
        xt = x.double().clone().requires_grad_()
        truth(xt).backward(dy.double())
    finally:
        set_backend(backend)
    exact = [xt.grad] + [p.grad for p in truth.parameters()]
    worst = worst_plain = 0.0
    for a, e, t in zip(*results, exact, strict=True):
        scale = max(1.0, t.abs().max().item())
        err = (a.double() - t).abs().max().item() / scale
        worst = max(worst, err if torch.isfinite(a).all() else float("inf"))
        worst_plain = max(worst_plain, (e.double() - t).abs().max().item() / scale)
    bound = max(0.05, worst_plain)
    v = ctx.report.verdict(
        "CUDA block grads against float64 (bf16 autocast, worst scaled error; plain bf16 path: "
        f"{worst_plain:.3f})",
        worst, f"<= {bound:.3f}", worst <= bound,
    )  # fmt: skip
    v.met = worst <= bound  # a correctness check: it holds in a dry run too


def cuda_blocks(compiled: bool):
    def run(ctx: Ctx) -> None:
        shapes = DRY_BLOCK_SHAPES if ctx.dry else BLOCK_SHAPES
        if compiled:
            shapes = [s for s in shapes if s[2] == max(t[2] for t in shapes)]  # compile time
        kind = "compiled" if compiled else "eager"
        rows, train_r, infer_r = [], [], []
        with cuda_path(ctx):
            for c, hw, b in shapes:
                if ctx.time_left() < (60 if compiled else 15):
                    break
                x, dy, ours, seed = _block_pair(ctx, c, hw, b)
                if compiled:
                    ours, seed = torch.compile(ours), torch.compile(seed)
                fns = {
                    "ours": _block_train(ctx, ours, x, dy),
                    "seed": _block_train(ctx, seed, x, dy),
                }
                if not compiled:  # copies in eval mode, the same weights
                    fns["ours inference"] = _block_infer(
                        ctx, copy.deepcopy(ours).eval(), x.detach()
                    )
                    fns["seed inference"] = _block_infer(
                        ctx, copy.deepcopy(seed).eval(), x.detach()
                    )
                t = ctx.measure(fns, 10, warmup=3)
                r = t.ratio("seed", "ours")
                train_r.append(r)
                row = [f"{c}@{hw}", b, t.median("seed"), t.median("ours"), str(r)]
                if not compiled:
                    ri = t.ratio("seed inference", "ours inference")
                    infer_r.append(ri)
                    row += [t.median("seed inference"), t.median("ours inference"), str(ri)]
                rows.append(row)
                del x, dy, ours, seed, fns
                if compiled:
                    torch._dynamo.reset()
                ctx.free()
        cols = ["shape", "B", "seed fwd+bwd ms", "ours fwd+bwd ms", "seed / ours"]
        if not compiled:
            cols += ["seed inference ms", "ours inference ms", "seed / ours"]
        ctx.report.table(
            f"One block on CUDA, {kind}, bf16 autocast, channels_last (medians; ratios: median [95% CI] of per-turn ratios)",
            cols,
            rows,
        )
        complete = len(rows) == len(shapes)
        _worst(
            ctx,
            f"CUDA block fwd+bwd, seed / ours, {kind}, worst shape",
            train_r,
            1.3 if compiled else 2.0,
            complete,
        )
        if not compiled:
            _worst(
                ctx, "CUDA block inference, seed eager / ours, worst shape", infer_r, 2.0, complete
            )

    return run


def _worst(ctx, target, ratios, goal, complete):
    if not ratios:
        ctx.report.verdict(target, "out of time", f">= {goal}", None)
        return
    worst = min(ratios, key=lambda r: r.value)
    met = worst.verdict(goal, at_most=False)
    if met and not complete:
        met = None
    ctx.report.verdict(
        target, str(worst) + ("" if complete else f" ({len(ratios)} shapes)"), f">= {goal}", met
    )


def cuda_profile(ctx: Ctx) -> None:
    """Where a block's training step spends its time: kernel time against wall time, ours and
    the seed's, at 256@56, B=64 (the baseline: 1.6 of 6.5 ms in kernels)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if ctx.tensor_device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    c, hw, b = (32, 8, 2) if ctx.dry else (256, 56, 64)
    rows = []
    with cuda_path(ctx):
        x, dy, ours, seed = _block_pair(ctx, c, hw, b)
        steps = {"seed": _block_train(ctx, seed, x, dy), "ours": _block_train(ctx, ours, x, dy)}
        t = ctx.measure(steps, 10, warmup=3)
        for name, step in steps.items():
            with profile(activities=activities) as prof:
                for _ in range(5):
                    step()
                if ctx.tensor_device == "cuda":
                    torch.cuda.synchronize()
            events = prof.key_averages()
            kernel_us = sum(
                getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                for e in events
            )
            aten = sum(e.count for e in events if e.key.startswith("aten::")) / 5
            rows.append([name, t.median(name), kernel_us / 5 / 1e3, aten])
    ctx.report.table(f"One block on CUDA at {c}@{hw}, B={b}, bf16, fwd+bwd: wall time against kernel time",
                     ["block", "wall ms (median)", "kernel ms (profiler)", "aten calls"], rows)  # fmt: skip


def cuda_graph(ctx: Ctx) -> None:
    target = "CUDA: compiled block training step in a CUDA graph (mode='reduce-overhead')"
    if ctx.tensor_device != "cuda":
        ctx.report.verdict(target, "not on CUDA (dry run)", "runs", None)
        return
    x, dy, ours, _ = _block_pair(ctx, 256, 56, 32)
    step = _block_train(ctx, torch.compile(ours, mode="reduce-overhead"), x, dy)
    try:
        for _ in range(4):
            step()
        torch.cuda.synchronize()
        ctx.report.verdict(target, "runs", "runs", True)
    except Exception as exc:  # report it, go on
        ctx.report.verdict(target, f"{type(exc).__name__}: {exc}"[:200], "runs", False)
    torch._dynamo.reset()


def rows(device: str, dry: bool) -> list[Row]:
    if device == "cpu":
        return [
            *(Row("block", f"block {s[1]}@{s[2]}, CPU", cpu_block(s), est_s=240, order=30 + i)
              for i, s in enumerate(DRY_CPU_SHAPES if dry else CPU_SHAPES)),
            Row("block", "bytes saved for backward, CPU", cpu_memory, est_s=10, order=10),
        ]  # fmt: skip
    return [
        Row("block", "block gradients, CUDA path vs plain", cuda_block_correctness, est_s=20, order=1),
        Row("block", "blocks eager vs seed", cuda_blocks(False), est_s=60, order=30,
            targets=["CUDA block fwd+bwd, seed / ours, eager", "CUDA block inference"]),
        Row("block", "block profile", cuda_profile, est_s=20, order=60),
        Row("block", "blocks compiled vs seed", cuda_blocks(True), est_s=120, order=50,
            targets=["CUDA block fwd+bwd, seed / ours, compiled"]),
        Row("block", "block in a CUDA graph", cuda_graph, est_s=40, order=70,
            targets=["CUDA: compiled block in a CUDA graph"]),
    ]  # fmt: skip
