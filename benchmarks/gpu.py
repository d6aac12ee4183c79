"""All GPU checking and timing of torch-bam in one call (issues 11 and 12); writes RESULTS_GPU.md.

    PYTHONPATH=src python benchmarks/gpu.py            # on a CUDA machine, under 5 minutes
    TRITON_INTERPRET=1 PYTHONPATH=src python benchmarks/gpu.py --device cpu --smoke --out /tmp/r.md

1. Records the card, driver, CUDA, torch and triton versions.
2. Checks every kernel of ``torch_bam.cuda.kernels`` on the GPU against a float64 reference:
   fresh random inputs, the caching allocator poisoned with NaN before each call, float32,
   float16 and bfloat16, NCHW and channels_last, an odd small shape and an issue shape.
3. Times the kernels with ``triton.testing.do_bench`` (median; it flushes L2 between calls
   and queues the launch behind the flush, so a call's host overhead is not timed) against
   a same-size copy of x, a kernel that reads two x-sized tensors and writes one
   (``torch.add(a, b, out=c)``), and the ATen composition each kernel replaces, at
   ``B in {32, 64} x {256@56, 512@28, 1024@14, 2048@7}``, bfloat16 and float32, both layouts.
4. Calls ``benchmarks/gpu_block.py``'s ``run(report)`` if that file exists (the block and
   network targets of issue 12), then writes the report and prints one verdict line per target.

Exits 2 without CUDA (or, with ``--device cpu``, without ``TRITON_INTERPRET=1``), 1 if a
correctness check failed, 0 otherwise. Stops timing at ``--kernel-s`` seconds (rows not timed
are listed) so that the whole call stays within about 5 minutes.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu_report import Report  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
R = 16  # BAM's reduction ratio: h = C / 16
SHAPES = [(b, c, s, s) for b in (32, 64) for c, s in ((256, 56), (512, 28), (1024, 14), (2048, 7))]
SMOKE_SHAPES = [(3, 48, 3, 7)]
CHECK_SHAPES = [(3, 37, 7, 9), (32, 256, 56, 56)]
SMOKE_CHECK_SHAPES = [(2, 21, 3, 5)]
LAYOUTS = {"NCHW": torch.contiguous_format, "CL": torch.channels_last}
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Targets of issue 11.
FWD_TARGET, BWD_TARGET = 0.8, 0.7


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (the CPU dry run)")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS_GPU.md"))
    p.add_argument("--kernel-s", type=float, default=170.0, help="stop kernel timing after this")
    p.add_argument("--total-s", type=float, default=285.0, help="deadline handed to gpu_block")
    p.add_argument("--no-block", action="store_true", help="skip benchmarks/gpu_block.py")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Machine facts


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, cwd=HERE
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, cwd=HERE,
        ).stdout.strip()  # fmt: skip
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _facts(report: Report, device: str) -> None:
    import triton

    report.fact("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    if device == "cuda":
        prop = torch.cuda.get_device_properties(0)
        report.fact("card", f"{prop.name}, {prop.multi_processor_count} SMs, {prop.total_memory / 2**30:.0f} GiB")
        report.fact("driver", _driver())
        report.fact("CUDA (torch build)", torch.version.cuda)
    else:
        report.fact("card", f"none: CPU dry run under TRITON_INTERPRET=1 ({platform.machine()})")
    report.fact("torch", torch.__version__)
    report.fact("triton", triton.__version__)
    report.fact("python", platform.python_version())
    report.fact("project commit", _commit())
    report.fact("cudnn.allow_tf32 (float32 dots follow it)", torch.backends.cudnn.allow_tf32)


# ---------------------------------------------------------------------------------------------
# Correctness against float64


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


def correctness(report: Report, kernels, device: str, smoke: bool) -> bool:
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    seed = gen.initial_seed()
    worst: dict[tuple, float] = {}
    errors: list[str] = []
    shapes = SMOKE_CHECK_SHAPES if smoke else CHECK_SHAPES
    dtypes = [torch.float32, torch.bfloat16] if smoke else [torch.float32, torch.float16, torch.bfloat16]
    tune = kernels.TUNE
    kernels.TUNE = False  # one config each here: the timing below tunes
    try:
        for shape in shapes:
            for dtype in dtypes:
                for lname, fmt in LAYOUTS.items():
                    # product on the small shape only: it adds compiles, not coverage of sizes
                    for product in (False, True) if shape[0] < 8 else (False,):
                        try:
                            results = _checks(kernels, shape, dtype, fmt, product, device, gen)
                        except Exception as exc:  # a kernel that does not run fails its check
                            errors.append(f"{shape} {dtype} {lname} product={product}: {type(exc).__name__}: {exc}"[:500])
                            print("ERROR", errors[-1], flush=True)
                            worst[("(raised)", str(dtype)[6:], lname)] = float("inf")
                            continue
                        for name, e in results:
                            key = (name, str(dtype)[6:], lname)
                            worst[key] = max(worst.get(key, 0.0), e)
    finally:
        kernels.TUNE = tune
    rows = [[*key, f"{e:.3f}", "ok" if e <= 1 else "FAIL"] for key, e in worst.items()]
    report.table(
        f"Correctness against float64 (shapes {shapes}, seed {seed})",
        ["kernel", "dtype", "layout", "worst error / allowed", ""],
        rows,
    )
    if errors:
        report.text("Correctness: checks that raised", [f"- {e}" for e in errors])
    bad = [f"{k[0]} {k[1]} {k[2]}" for k, e in worst.items() if e > 1]
    report.verdict(
        "correctness of every kernel against float64",
        f"{len(worst) - len(bad)} of {len(worst)} pass" + (f" (fail: {', '.join(bad)})" if bad else ""),
        "all pass",
        not bad,
    )
    return not bad


# ---------------------------------------------------------------------------------------------
# Timing


def _timer(device: str, smoke: bool):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median")

    def cpu_ms(fn):  # the CPU dry run: the interpreter's times mean nothing, the plumbing does
        fn()
        times = []
        for _ in range(1 if smoke else 3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cpu_ms


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


# Timed in two phases, the targets first, so that a run cut short by its time budget
# loses the block-only rows, not the targets.
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
    dr = rand(b, k, h, w).contiguous(memory_format=torch.channels_last)
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


def timing(report: Report, kernels, device: str, smoke: bool, stop_at: float) -> None:
    bench = _timer(device, smoke)
    combos = [
        (shape, dtype, lname, fmt)
        for shape in (SMOKE_SHAPES if smoke else SHAPES)
        for dtype in (torch.bfloat16, torch.float32)
        for lname, fmt in LAYOUTS.items()
    ]
    tag = {c: f"{c[0][0]}x{c[0][1]}@{c[0][2]} {str(c[1])[6:]} {c[2]}" for c in combos}
    times: dict[str, dict[str, float]] = {tag[c]: {} for c in combos}
    skipped, errors = [], []
    for phase, names in PHASES:
        for combo in combos:
            if time.monotonic() > stop_at:
                skipped.append(f"{phase} phase of {tag[combo]}")
                continue
            shape, dtype, _, fmt = combo
            t = times[tag[combo]]
            try:
                fns = _cases(kernels, shape, dtype, fmt, device)
                for name in names:
                    t[name] = bench(fns[name])
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
        nbytes = 2 * shape[0] * shape[1] * shape[2] * shape[3] * (2 if dtype == torch.bfloat16 else 4)
        gbs = f"{nbytes / t['copy'] / 1e6:.0f}" if "copy" in t else "-"
        r_fwd, r_bwd = ratio(t, "fwd/copy"), ratio(t, "bwd/2r1w")
        rows.append([
            tg, gbs, cell(t, "copy"), cell(t, "fwd"), cell(t, "fwd aten"),
            "-" if r_fwd is None else f"{r_fwd:.2f}", cell(t, "2r1w"), cell(t, "bwd"),
            cell(t, "bwd aten"), "-" if r_bwd is None else f"{r_bwd:.2f}", cell(t, "block bwd"),
            cell(t, "block bwd aten"), cell(t, "pool"), cell(t, "pool aten"),
        ])  # fmt: skip
    report.table(
        "Kernel times, ms (median of triton.testing.do_bench; L2 flushed between calls)"
        if device == "cuda"
        else "Kernel times, ms (CPU dry run under the interpreter: meaningless as speeds)",
        COLUMNS,
        rows,
    )
    report.text(
        "How to read the kernel table",
        [
            "- copy: `out.copy_(x)`, reads x and writes x-sized: the forward's floor (2 N e bytes).",
            "- 2r1w: `torch.add(x, dy, out=out)`, reads two x-sized tensors and writes one: the one-pass backward's floor (3 N e).",
            "- bwd (1 pass): `gate_backward`, dx, dc and ds from one read of dy and x (what `bam_gate`'s backward runs).",
            "- block bwd: `gate_backward_reduce` then `gate_backward_dx` with W_r^T dr (h = C/16) and dpool, as the block's backward needs them (dx depends on dr, which depends on ds): floor 4 N e + N e / 16.",
            "- pool+reduce: `pool_reduce` (mean over pixels and the 1x1 reduce to C/16 channels in one read of x) against `x.float().mean` plus `F.conv2d`.",
            "- ATen columns: the ATen composition each kernel replaces, float32 maths, as `set_backend('aten')` runs it.",
        ]
        + ([f"- not timed (time budget reached): {', '.join(skipped)}"] if skipped else [])
        + [f"- FAILED: {e}" for e in errors],
    )

    def verdict(target, key, goal_value):
        vals = [(r, tg) for tg, t in times.items() if (r := ratio(t, key)) is not None]
        if not vals:
            report.verdict(target, "not measured", f">= {goal_value}", None)
            return
        v, tg = min(vals)
        complete = len(vals) == len(times)
        text = f"{v:.2f} at {tg}" + ("" if complete else f" ({len(vals)} of {len(times)} rows)")
        met = v >= goal_value
        if smoke or (met and not complete):
            met = None  # a CPU dry run, or rows missing: neither a pass nor a fail is established
        report.verdict(target, text, f">= {goal_value}", met)

    verdict("gate forward: copy time / forward time, worst row", "fwd/copy", FWD_TARGET)
    verdict("fused backward: 2r1w time / backward time, worst row", "bwd/2r1w", BWD_TARGET)
    verdict("gate forward not slower than ATen: ATen time / ours, worst row", "fwd aten", 1.0)
    verdict("gate backward not slower than ATen: ATen time / ours, worst row", "bwd aten", 1.0)
    verdict("block backward (reduce + dx) not slower than ATen, worst row", "block bwd aten", 1.0)
    verdict("pool + reduce not slower than ATen, worst row", "pool aten", 1.0)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = _parse(argv)
    start = time.monotonic()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False). Run it on "
            "a GPU machine; to dry-run its logic on CPU: TRITON_INTERPRET=1 PYTHONPATH=src python "
            "benchmarks/gpu.py --device cpu --smoke --out /tmp/RESULTS_GPU.md",
            file=sys.stderr,
        )
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("benchmarks/gpu.py: triton is not installed; the kernels need it.", file=sys.stderr)
        return 2
    from torch_bam.cuda import kernels

    if args.device == "cpu" and not kernels.INTERPRETED:
        print(
            "benchmarks/gpu.py: --device cpu runs the kernels under the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment before starting it.",
            file=sys.stderr,
        )
        return 2
    report = Report("GPU results", device=args.device, smoke=args.smoke, deadline=start + args.total_s)
    report.fact("written by", "`PYTHONPATH=src python benchmarks/gpu.py` (do not edit by hand; rerun it)")
    if args.smoke:
        report.fact("mode", "smoke (tiny shapes; a dry run of the script, not a measurement)")
    _facts(report, args.device)
    ok = correctness(report, kernels, args.device, args.smoke)
    print(f"correctness done at {time.monotonic() - start:.0f} s", flush=True)
    timing(report, kernels, args.device, args.smoke, start + args.kernel_s)
    print(f"kernel timing done at {time.monotonic() - start:.0f} s", flush=True)
    if not args.no_block and os.path.exists(os.path.join(HERE, "gpu_block.py")):
        import gpu_block

        try:
            gpu_block.run(report)
        except Exception as exc:  # report what ran; a crash there must not lose the kernels' rows
            report.verdict("benchmarks/gpu_block.py", f"crashed: {type(exc).__name__}: {exc}", "runs", False)
            ok = False
    report.fact("wall time of this run", f"{time.monotonic() - start:.0f} s")
    report.write(args.out)
    print(f"\nwrote {args.out}")
    for v in report.verdicts:
        print(v.line())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
