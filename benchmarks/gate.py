"""The gate alone, ``x * (1 + sigmoid(c + s))``: is the fused kernel as fast as a copy of x?

CPU: the reference ATen expression, ``torch.compile`` of it, the registered op with the ATen
composition and with the fused C kernel (NCHW, channels_last, in place), forward and
forward+backward, against a copy of x (the bandwidth floor), at B=32, C=256, 56x56.

CUDA: every kernel of ``torch_bam.cuda.kernels`` against a float64 reference (fresh random
inputs, the caching allocator poisoned with NaN before each call; float32, float16, bfloat16;
NCHW and channels_last); then the kernels' times (L2 flushed before each call, the launch hidden
behind the flush) against a copy of x, ``torch.add(a, b, out=c)`` (read two, write one: the
one-pass backward's floor) and the ATen composition each kernel replaces, at
``B in {32, 64} x {256@56, 512@28, 1024@14, 2048@7}``, bfloat16 and float32, both layouts.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from benchmarks._plan import Ctx, Row

CL = torch.channels_last
LAYOUTS = {"NCHW": torch.contiguous_format, "CL": CL}
R = 16  # BAM's reduction ratio: h = C / 16


# ------------------------------------------------------------------------------------- CPU
def cpu_gate(ctx: Ctx) -> None:
    from torch_bam import functional

    b, c, h, w = (2, 16, 8, 8) if ctx.dry else (32, 256, 56, 56)
    x = torch.randn(b, c, h, w)
    cl, sl = torch.randn(b, c), torch.randn(b, 1, h, w)
    xc = x.contiguous(memory_format=CL)
    xi = x.clone()
    compiled_ref = torch.compile(functional.bam_gate_ref)

    def op(backend, xx, inplace=False):
        def run():
            functional.set_backend(backend)
            try:
                with torch.no_grad():
                    functional.bam_gate(xx, cl, sl, inplace=inplace)
            finally:
                functional.set_backend("auto")

        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    fwd = {
        "copy of x (bandwidth floor)": no_grad(lambda: x.clone()),
        "reference: x * sigmoid(c + s) + x": no_grad(lambda: functional.bam_gate_ref(x, cl, sl)),
        "torch.compile(reference)": no_grad(lambda: compiled_ref(x, cl, sl)),
        "registered op, ATen composition": op("aten", x),
        "registered op, fused C kernel (NCHW)": op("auto", x),
        "registered op, fused C kernel (channels_last)": op("auto", xc),
        "registered op, fused C kernel, in place": op("auto", xi, inplace=True),
    }
    dy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, cl, sl)]

    def fb(fn, backend="auto"):
        def run():
            functional.set_backend(backend)
            try:
                fn(*leaves).backward(dy)
            finally:
                functional.set_backend("auto")

        return run

    bwd = {
        "fwd+bwd: copy of x and of dy (floor)": no_grad(lambda: (x.clone(), dy.clone())),
        "fwd+bwd: reference (autograd)": fb(functional.bam_gate_ref),
        "fwd+bwd: torch.compile(reference)": fb(compiled_ref),
        "fwd+bwd: registered op, ATen composition": fb(functional.bam_gate, "aten"),
        "fwd+bwd: registered op, fused C kernel": fb(functional.bam_gate),
    }
    rows = []

    # The in-place call writes into xi: every call starts from x again (untimed), or each would
    # run on the last one's output, growing up to 2x per call.
    restore = {"registered op, fused C kernel, in place": lambda: xi.copy_(x)}

    def table(fns, ref):
        t = ctx.measure(fns, 10, min_s=0.5, max_turns=50, before=restore)
        for name in fns:
            lo, hi = t.spread(name)
            rows.append(
                [name, f"{t.median(name):.1f}", f"{lo:.1f}-{hi:.1f}", str(t.ratio(name, ref))]
            )
        return t

    t = table(fwd, "copy of x (bandwidth floor)")
    fused, aten = "registered op, fused C kernel (NCHW)", "registered op, ATen composition"
    ctx.ratio_verdict(
        "CPU gate forward, fused C kernel / ATen composition", t.ratio(fused, aten), 1.0
    )
    t = table(bwd, "fwd+bwd: copy of x and of dy (floor)")
    fused, aten = (
        "fwd+bwd: registered op, fused C kernel",
        "fwd+bwd: registered op, ATen composition",
    )
    ctx.ratio_verdict(
        "CPU gate fwd+bwd, fused C kernel / ATen composition", t.ratio(fused, aten), 1.0
    )
    torch._dynamo.reset()
    ctx.report.table(
        f"The gate alone on CPU, x = {list(x.shape)} float32",
        [
            "variant",
            "ms (median)",
            "interquartile range",
            "/ copy (median of per-turn ratios, 95% CI)",
        ],
        rows,
        after=[
            "The copy is the bandwidth floor: a kernel that reads x and writes y once cannot be faster."
        ],
    )


# ------------------------------------------------------------------------------------- CUDA
SHAPES = [(b, c, s, s) for b in (32, 64) for c, s in ((256, 56), (512, 28), (1024, 14), (2048, 7))]
DRY_SHAPES = [(3, 48, 3, 7)]
CHECK_SHAPES = [(3, 37, 7, 9), (32, 256, 56, 56)]
DRY_CHECK_SHAPES = [(2, 21, 3, 5)]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
FWD_TARGET, BWD_TARGET = 0.8, 0.7  # copy / forward, 2r1w / backward


def _poison(device: str, nbytes: int) -> None:
    # The caching allocator hands these NaN blocks to the next allocations of a similar size.
    for n in (nbytes, nbytes // 16, 1 << 16):
        torch.full((max(n // 4, 1),), float("nan"), device=device)


def _gate64(x, c, s, product):
    b, ch = x.shape[:2]
    c4, s64 = c.double().reshape(b, ch, 1, 1), s.double()
    return torch.sigmoid(c4 * s64 if product else c4 + s64)


def _err(actual, expected, tol) -> float:
    """Worst |error| over the allowed (tol relative, tol * max|expected| absolute); > 1 fails."""
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = max(1.0, expected.abs().max().item())
    allowed = tol * scale + tol * expected.abs()
    return ((actual.double() - expected).abs() / allowed).max().item() if actual.numel() else 0.0


def _checks(kernels, shape, dtype, fmt, product, device, gen):
    """(kernel name, worst error ratio) for every kernel at one shape / dtype / layout."""
    b, ch, h, w = shape
    k = max(1, ch // R)

    def rand(*size, dt=dtype, scale=1.0):
        return (scale * torch.randn(*size, generator=gen, dtype=torch.float64)).to(device, dt)

    x = rand(*shape).contiguous(memory_format=fmt)
    dy = rand(*shape).contiguous(memory_format=fmt)
    c, s = rand(b, ch, dt=torch.float32, scale=2.0), rand(b, 1, h, w, dt=torch.float32, scale=2.0)
    wr, br = rand(k, ch, 1, 1, dt=torch.float32, scale=0.3), rand(k, dt=torch.float32)
    dr, dpool = rand(b, k, h, w), rand(b, ch, dt=torch.float32)
    g = _gate64(x, c, s, product)
    dl = dy.double() * x.double() * g * (1 - g)
    dc_ref = (dl * s.double()).sum((2, 3)) if product else dl.sum((2, 3))
    ds_ref = (dl * c.double().reshape(b, ch, 1, 1) if product else dl).sum(1, keepdim=True)
    nbytes = x.numel() * x.element_size()
    tol = TOL[dtype]
    out = []

    _poison(device, nbytes)
    y = kernels.gate_forward(x, c, s, product)
    layout_ok = y.is_contiguous(memory_format=fmt)
    out.append(("gate_forward", _err(y, x.double() * (1 + g), tol) if layout_ok else float("inf")))
    _poison(device, nbytes)
    dx, dc, ds = kernels.gate_backward(dy, x, c, s, product)
    e = max(_err(dx, dy.double() * (1 + g), tol), _err(dc, dc_ref, 1e-4), _err(ds, ds_ref, 1e-4))
    out.append(("gate_backward", e))
    _poison(device, nbytes)
    dc, ds = kernels.gate_backward_reduce(dy, x, c, s, product)
    out.append(("gate_backward_reduce", max(_err(dc, dc_ref, 1e-4), _err(ds, ds_ref, 1e-4))))
    _poison(device, nbytes)
    dx = kernels.gate_backward_dx(dy, c, s, product, wr, dr, dpool)
    # The dot runs on operands in dy's dtype (float32 ones follow cudnn.allow_tf32).
    w64 = wr.reshape(k, ch).to(dtype).double()
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and device == "cuda"
    dx_ref = dy.double() * (1 + g) + torch.einsum("kc,bkhw->bchw", w64, dr.double())
    dx_ref = dx_ref + dpool.double()[:, :, None, None] / (h * w)
    out.append(("gate_backward_dx", _err(dx, dx_ref, 2e-3 if tf32 else 2 * tol)))
    _poison(device, nbytes)
    pooled, r = kernels.pool_reduce(x, wr, br)
    r_ref = torch.einsum("kc,bchw->bkhw", w64, x.double()) + br.double()[None, :, None, None]
    e = max(_err(pooled, x.double().mean((2, 3)), 1e-5), _err(r, r_ref, 2e-3 if tf32 else 2 * tol))
    out.append(("pool_reduce", e))
    dw = kernels.reduce_weight_grad(x, dr)
    dw_ref = torch.einsum("bkhw,bchw->kc", dr.double(), x.double())
    out.append(("reduce_weight_grad", _err(dw, dw_ref, 2e-3 if tf32 else 4 * tol)))
    return out


def cuda_correctness(ctx: Ctx) -> None:
    from torch_bam.cuda import kernels

    device = ctx.tensor_device
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    seed = gen.initial_seed()
    worst: dict[tuple, float] = {}
    errors: list[str] = []
    shapes = DRY_CHECK_SHAPES if ctx.dry else CHECK_SHAPES
    dtypes = (
        [torch.float32, torch.bfloat16]
        if ctx.dry
        else [torch.float32, torch.float16, torch.bfloat16]
    )
    # One configuration per shape (cuda/kernels.py chooses tiles by shape): nothing to tune.
    for shape in shapes:
        for dtype in dtypes:
            for lname, fmt in LAYOUTS.items():
                # product on the small shape only: it adds compiles, not coverage of sizes
                for product in (False, True) if shape[0] < 8 else (False,):
                    try:
                        results = _checks(kernels, shape, dtype, fmt, product, device, gen)
                    except Exception as exc:  # a kernel that does not run fails its check
                        errors.append(
                            f"{shape} {dtype} {lname} product={product}: {type(exc).__name__}: {exc}"[
                                :500
                            ]
                        )
                        print("ERROR", errors[-1], flush=True)
                        worst[("(raised)", str(dtype)[6:], lname)] = float("inf")
                        continue
                    for name, e in results:
                        key = (name, str(dtype)[6:], lname)
                        worst[key] = max(worst.get(key, 0.0), e)
    rows = [[*key, f"{e:.3f}", "ok" if e <= 1 else "FAIL"] for key, e in worst.items()]
    ctx.report.table(
        f"CUDA kernels against float64 (shapes {shapes}, seed {seed})",
        ["kernel", "dtype", "layout", "worst error / allowed", ""],
        rows,
        after=[f"- raised: {e}" for e in errors],
    )
    bad = [f"{k[0]} {k[1]} {k[2]}" for k, e in worst.items() if e > 1]
    v = ctx.report.verdict(
        "correctness of every kernel against float64",
        f"{len(worst) - len(bad)} of {len(worst)} pass"
        + (f" (fail: {', '.join(bad)})" if bad else ""),
        "all pass",
        not bad,
    )
    v.met = not bad  # a correctness check is a check in a dry run too


def _aten_forward(x, c, s):
    xf = x.float()
    return (xf * torch.sigmoid(c.float().reshape(*c.shape, 1, 1) + s.float()) + xf).to(x.dtype)


def _aten_backward(dy, x, c, s):
    xf, dyf = x.float(), dy.float()
    g = torch.sigmoid(c.float().reshape(*c.shape, 1, 1) + s.float())
    dl = dyf * xf * g * (1 - g)
    return (dyf * (1 + g)).to(x.dtype), dl.sum((2, 3)), dl.sum(1, keepdim=True)


def _aten_block_backward(dy, x, c, s, wr, dr, dpool):
    # What autograd runs for the gate, the 1x1 reduce's input gradient and the pool's.
    xf, dyf = x.float(), dy.float()
    g = torch.sigmoid(c.float().reshape(*c.shape, 1, 1) + s.float())
    dl = dyf * xf * g * (1 - g)
    dc, ds = dl.sum((2, 3)), dl.sum(1, keepdim=True)
    hw = x.shape[2] * x.shape[3]
    dxr = torch.nn.grad.conv2d_input(x.shape, wr.to(dr.dtype), dr)
    dx = dyf * (1 + g) + dxr.float() + dpool[:, :, None, None] / hw
    return dx.to(x.dtype), dc, ds


def _aten_pool_reduce(x, wr, br):
    return x.float().mean((2, 3)), F.conv2d(x, wr.to(x.dtype), br.to(x.dtype))


# Timed in two phases, the targets first, so a run cut by its time budget loses the block-only
# columns, not the targets.
PHASES = (
    ("gate", ("copy", "2r1w", "fwd", "fwd aten", "bwd", "bwd aten")),
    ("block", ("block bwd", "block bwd aten", "pool", "pool aten")),
)
COLUMNS = [
    "B x C @ H dtype layout", "copy GB/s", "copy", "fwd", "fwd ATen", "copy / fwd", "2r1w",
    "bwd (1 pass)", "bwd ATen", "2r1w / bwd", "block bwd (reduce + dx)", "block bwd ATen",
    "pool+reduce", "pool+reduce ATen",
]  # fmt: skip
# (verdict key, numerator, denominator): a ratio >= target is good.
RATIOS = {
    "fwd/copy": ("copy", "fwd"),
    "bwd/2r1w": ("2r1w", "bwd"),
    "fwd aten": ("fwd aten", "fwd"),
    "bwd aten": ("bwd aten", "bwd"),
    "block bwd aten": ("block bwd aten", "block bwd"),
    "pool aten": ("pool aten", "pool"),
}


def _cases(kernels, shape, dtype, fmt, device):
    b, ch, h, w = shape
    k = ch // R

    def rand(*size, dt=dtype):
        return torch.randn(*size, device=device, dtype=dt)

    x, dy = (rand(*shape).contiguous(memory_format=fmt) for _ in range(2))
    out = torch.empty_like(x)
    c, s = rand(b, ch), rand(b, 1, h, w)
    wr, br = 0.1 * rand(k, ch, 1, 1, dt=torch.float32), rand(k, dt=torch.float32)
    dr = rand(b, k, h, w).contiguous(memory_format=CL)
    dpool = rand(b, ch, dt=torch.float32)

    def block_bwd():
        kernels.gate_backward_reduce(dy, x, c, s, False)
        return kernels.gate_backward_dx(dy, c, s, False, wr, dr, dpool)

    return {
        "copy": lambda: out.copy_(x),
        "2r1w": lambda: torch.add(x, dy, out=out),
        "fwd": lambda: kernels.gate_forward(x, c, s, False),
        "fwd aten": lambda: _aten_forward(x, c, s),
        "bwd": lambda: kernels.gate_backward(dy, x, c, s, False),
        "bwd aten": lambda: _aten_backward(dy, x, c, s),
        "block bwd": block_bwd,
        "block bwd aten": lambda: _aten_block_backward(dy, x, c, s, wr, dr, dpool),
        "pool": lambda: kernels.pool_reduce(x, wr, br),
        "pool aten": lambda: _aten_pool_reduce(x, wr, br),
    }


def cuda_kernel_times(ctx: Ctx) -> None:
    from torch_bam.cuda import kernels

    device = ctx.tensor_device
    combos = [
        (shape, dtype, lname, fmt)
        for shape in (DRY_SHAPES if ctx.dry else SHAPES)
        for dtype in (torch.bfloat16, torch.float32)
        for lname, fmt in LAYOUTS.items()
    ]
    tag = {c: f"{c[0][0]}x{c[0][1]}@{c[0][2]} {str(c[1])[6:]} {c[2]}" for c in combos}
    times: dict[str, dict[str, float]] = {tag[c]: {} for c in combos}
    skipped, errors = [], []
    for phase, names in PHASES:
        for combo in combos:
            if ctx.time_left() < 5:
                skipped.append(f"{phase} phase of {tag[combo]}")
                continue
            shape, dtype, _, fmt = combo
            t = times[tag[combo]]
            try:
                fns = _cases(kernels, shape, dtype, fmt, device)
                measured = ctx.measure({n: fns[n] for n in names}, 20, host_time=False, warmup=3)
                t.update({n: measured.median(n) for n in names})
                del fns
            except Exception as exc:  # keep what was measured; say what failed
                errors.append(f"{phase} phase of {tag[combo]}: {type(exc).__name__}: {exc}"[:500])
                print("ERROR", errors[-1], flush=True)
                continue
            print(tag[combo], phase, " ".join(f"{n}={t[n]:.4f}" for n in names), flush=True)

    def cell(t, name):
        return t[name] if name in t else "-"

    def ratio(t, key):
        num, den = RATIOS[key]
        return t[num] / t[den] if num in t and den in t else None

    rows = []
    for (shape, dtype, _, _), (tg, t) in zip(combos, times.items(), strict=True):
        nbytes = (
            2 * shape[0] * shape[1] * shape[2] * shape[3] * (2 if dtype == torch.bfloat16 else 4)
        )
        gbs = f"{nbytes / t['copy'] / 1e6:.0f}" if "copy" in t else "-"
        r_fwd, r_bwd = ratio(t, "fwd/copy"), ratio(t, "bwd/2r1w")
        rows.append([
            tg, gbs, cell(t, "copy"), cell(t, "fwd"), cell(t, "fwd aten"),
            "-" if r_fwd is None else f"{r_fwd:.2f}", cell(t, "2r1w"), cell(t, "bwd"),
            cell(t, "bwd aten"), "-" if r_bwd is None else f"{r_bwd:.2f}", cell(t, "block bwd"),
            cell(t, "block bwd aten"), cell(t, "pool"), cell(t, "pool aten"),
        ])  # fmt: skip
    ctx.report.table(
        "CUDA kernel times, ms (median over turns; L2 flushed before each call, CUDA events)"
        if device == "cuda"
        else "CUDA kernel times, ms (dry run under the interpreter: meaningless as speeds)",
        COLUMNS,
        rows,
        after=[
            "- copy: `out.copy_(x)`, reads x and writes x-sized: the forward's floor (2 N e bytes).",
            "- 2r1w: `torch.add(x, dy, out=out)`, reads two x-sized tensors and writes one: the one-pass backward's floor (3 N e).",
            "- bwd (1 pass): `gate_backward`, dx, dc and ds from one read of dy and x (what `bam_gate`'s backward runs).",
            "- block bwd: `gate_backward_reduce` then `gate_backward_dx` with W_r^T dr (h = C/16) and dpool, as the block's backward needs them: floor 4 N e + N e / 16.",
            "- pool+reduce: `pool_reduce` (mean over pixels and the 1x1 reduce in one read of x) against `x.float().mean` plus `F.conv2d`.",
            "- ATen columns: the ATen composition each kernel replaces, float32 maths.",
        ]
        + ([f"- not timed (time budget reached): {', '.join(skipped)}"] if skipped else [])
        + [f"- FAILED: {e}" for e in errors],
    )

    def verdict(target, key, goal_value):
        vals = [(r, tg) for tg, t in times.items() if (r := ratio(t, key)) is not None]
        if not vals:
            ctx.report.verdict(target, "not measured", f">= {goal_value}", None)
            return
        v, tg = min(vals)
        complete = len(vals) == len(times)
        text = f"{v:.2f} at {tg}" + ("" if complete else f" ({len(vals)} of {len(times)} rows)")
        met = v >= goal_value
        if met and not complete:
            met = None  # rows missing: a pass is not established
        ctx.report.verdict(target, text, f">= {goal_value}", met)

    verdict("gate forward: copy time / forward time, worst row", "fwd/copy", FWD_TARGET)
    verdict("fused backward: 2r1w time / backward time, worst row", "bwd/2r1w", BWD_TARGET)
    verdict("gate forward not slower than ATen: ATen time / ours, worst row", "fwd aten", 1.0)
    verdict("gate backward not slower than ATen: ATen time / ours, worst row", "bwd aten", 1.0)
    verdict("block backward (reduce + dx) not slower than ATen, worst row", "block bwd aten", 1.0)
    verdict("pool + reduce not slower than ATen, worst row", "pool aten", 1.0)


def rows(device: str, dry: bool) -> list[Row]:
    if device == "cpu":
        return [Row("gate", "gate alone, CPU", cpu_gate, est_s=90, order=40)]
    return [
        Row("gate", "kernel correctness against float64", cuda_correctness, est_s=40, order=0,
            targets=["correctness of every kernel against float64"]),
        Row("gate", "kernel times", cuda_kernel_times, est_s=90, order=40,
            targets=["gate forward: copy time / forward time", "fused backward: 2r1w / backward"]),
    ]  # fmt: skip
