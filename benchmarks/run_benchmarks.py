"""Benchmarks for torch-bam's fast BAM against the seed code; writes benchmarks/RESULTS.md.

Run from the repository root:  PYTHONPATH=src:. python benchmarks/run_benchmarks.py [--quick]

Every ratio is measured in this one run: the seed's BAM in eager mode and under torch.compile
(NCHW and channels_last) against torch_bam.BAM in eager mode (no compile step of ours).
Timing is the minimum of several calls after warm-up calls; CPU only, torch.set_num_threads(2).
Not a test: nothing here runs under pytest.
"""

# Lambdas below are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seed_bam  # noqa: E402

import torch_bam  # noqa: E402
from torch_bam import BAM, functional  # noqa: E402

CL = torch.channels_last
SHAPES = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14)]
OUT = Path(__file__).with_name("RESULTS.md")
NOISY = (
    "**The load average was far above the 2 cores during this run (other jobs): single timings "
    "vary by several times between repeats, and ratios such as a BAM-ResNet-50 faster than "
    "ResNet-50 are noise. Treat every verdict below as unconfirmed; rerun on an idle machine.**"
)


def timeit(fn, reps: int, warmup: int = 1, min_seconds: float = 0.5, max_reps: int = 50) -> float:
    """Minimum ms over at least ``reps`` calls, and more (up to ``max_reps``) for fast calls,
    until ``min_seconds`` have passed: a 10 ms call gets ~50 samples, a 500 ms one ``reps``."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (
        time.perf_counter() - start < min_seconds and len(times) < max_reps
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    # The minimum: on a shared machine, other jobs only ever add time.
    return min(times) * 1e3  # ms


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown"
    return model


def write_results(out: Path, title: str, load_before: str, body: list, versions: str = ""):
    """Write one of the side scripts' RESULTS_*.md files: title, provenance, machine, versions
    (``versions`` is appended to the torch/python line), load average, then ``body``."""
    text = [
        f"# {title}",
        "",
        f"Written by `benchmarks/{Path(sys.argv[0]).name}` (do not edit by hand; rerun it).",
        "",
        f"- machine: {machine()}, {os.cpu_count()} logical CPUs, torch.set_num_threads(2)",
        f"- torch {torch.__version__}, python {platform.python_version()}{versions}",
        f"- load average before: {load_before}; after: {loadavg()}",
        *body,
    ]
    out.write_text("\n".join(text) + "\n")
    print(f"wrote {out}")


def pair(channels: int):
    seed = seed_bam.BAM(channels)
    ours = BAM(channels)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed, ours


class ConvsAlone(nn.Module):
    """The spatial gate's four convolutions alone, with the block's weights: no pool, MLP,
    BatchNorm, ReLU or gate. The 1x1 reduce runs as ours does (batched matmul on NCHW, conv on
    channels_last). Every implementation of the block computes at least these convolutions, so
    seed time / this time bounds the speed-up any of them can reach."""

    def __init__(self, block: BAM):
        super().__init__()
        self.convs = [m for m in block.spatial_att.gate_s if isinstance(m, nn.Conv2d)]

    def forward(self, x):
        from torch_bam.cpu.layers import reduce_1x1 as _reduce_1x1

        first, *rest = self.convs
        y = _reduce_1x1(x, first.weight, first.bias)
        for conv in rest:
            y = conv(y)
        return y


class ConvsAndGate(nn.Module):
    """A lower bound on any BAM block's cost: the spatial gate's convolutions (``ConvsAlone``)
    and our fused gate applied with them, with no pool, channel MLP, BatchNorm or ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = BAM(channels)  # holds the conv weights (and unused BNs)
        self.convs = ConvsAlone(self.block)

    def forward(self, x):
        s = self.convs(x)
        return functional.bam_gate(x, s.new_zeros(x.shape[0], x.shape[1]), s)


def no_grad(fn):
    def run():
        with torch.no_grad():
            fn()

    return run


def fwd_bwd(model, x, dy):
    return lambda: model(x).backward(dy)


def fmt_x(x, memory_format):
    return x.contiguous(memory_format=memory_format)


# ------------------------------------------------------------------------------ the gate alone
def bench_gate(reps):
    b, c, h, w = SHAPES[0]
    x = torch.randn(b, c, h, w)
    cl, sl = torch.randn(b, c), torch.randn(b, 1, h, w)
    compiled_ref = torch.compile(functional.bam_gate_ref)
    rows = []
    with torch.no_grad():
        copy_ms = timeit(lambda: x.clone(), reps)
        rows.append(("copy of x (bandwidth floor)", copy_ms))
        rows.append(
            (
                "reference: x * sigmoid(c + s) + x",
                timeit(lambda: functional.bam_gate_ref(x, cl, sl), reps),
            )
        )
        rows.append(
            (
                "torch.compile(reference) (AOT-style generated code)",
                timeit(lambda: compiled_ref(x, cl, sl), reps, 2),
            )
        )
        functional.set_backend("aten")
        rows.append(
            (
                "registered op, ATen composition",
                timeit(lambda: functional.bam_gate(x, cl, sl), reps),
            )
        )
        functional.set_backend("auto")
        rows.append(
            (
                "registered op, fused C kernel (NCHW)",
                timeit(lambda: functional.bam_gate(x, cl, sl), reps),
            )
        )
        xc = x.contiguous(memory_format=CL)
        rows.append(
            (
                "registered op, fused C kernel (channels_last)",
                timeit(lambda: functional.bam_gate(xc, cl, sl), reps),
            )
        )
        xi = x.clone()
        rows.append(
            (
                "registered op, fused C kernel, in place",
                timeit(lambda: functional.bam_gate(xi, cl, sl, inplace=True), reps),
            )
        )
    dy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, cl, sl)]

    def fb(fn):
        return lambda: fn(*leaves).backward(dy)

    rows.append(("fwd+bwd: reference (autograd)", timeit(fb(functional.bam_gate_ref), reps)))
    rows.append(("fwd+bwd: torch.compile(reference)", timeit(fb(compiled_ref), reps, 2)))
    functional.set_backend("aten")
    rows.append(("fwd+bwd: registered op, ATen composition", timeit(fb(functional.bam_gate), reps)))
    functional.set_backend("auto")
    rows.append(("fwd+bwd: registered op, fused C kernel", timeit(fb(functional.bam_gate), reps)))
    lines = [
        f"### The gate alone, x = {list(x.shape)} float32",
        "",
        "| variant | ms |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in rows]
    return lines


# ------------------------------------------------------------------------------ the block
def bench_block(reps):
    lines = ["### One BAM block (B=32), ms and speed-up of ours", ""]
    lines += [
        "| shape | pass | seed eager NCHW | seed eager CL | seed compile NCHW | seed compile CL | ours NCHW | ours CL | ours fused+inplace (best fmt) | convs alone (best fmt) | vs seed eager (same fmt, best) | vs best seed compile | convs alone vs seed eager |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for shape in SHAPES:
        seed, ours = pair(shape[1])
        x0 = torch.randn(shape)
        for mode in ("inference", "fwd+bwd"):
            # Every variant of this shape and pass is timed in turns (as the ResNet rows are),
            # so a drift in the machine's load hits all of them alike and the ratios hold.
            fns = {}
            for mf_name, mf in (("NCHW", torch.contiguous_format), ("CL", CL)):
                x = fmt_x(x0, mf)
                s_mod, o_mod = (
                    copy.deepcopy(seed).to(memory_format=mf),
                    copy.deepcopy(ours).to(memory_format=mf),
                )
                if mode == "inference":
                    s_mod.eval(), o_mod.eval()
                    comp = torch.compile(s_mod)
                    fused = copy.deepcopy(o_mod).fuse_for_inference()
                    fused.inplace = True
                    xi = x.clone()
                    fns[f"seed eager {mf_name}"] = no_grad(lambda s_mod=s_mod, x=x: s_mod(x))
                    fns[f"seed compile {mf_name}"] = no_grad(lambda comp=comp, x=x: comp(x))
                    fns[f"ours {mf_name}"] = no_grad(lambda o_mod=o_mod, x=x: o_mod(x))
                    fns[f"fused {mf_name}"] = no_grad(lambda fused=fused, xi=xi: fused(xi))
                    floor = ConvsAlone(o_mod)
                    fns[f"convs alone {mf_name}"] = no_grad(lambda floor=floor, x=x: floor(x))
                else:
                    s_mod.train(), o_mod.train()
                    comp = torch.compile(s_mod)
                    xg = x.clone().requires_grad_()
                    dy = torch.randn_like(x)
                    fns[f"seed eager {mf_name}"] = fwd_bwd(s_mod, xg, dy)
                    fns[f"seed compile {mf_name}"] = fwd_bwd(comp, xg, dy)
                    fns[f"ours {mf_name}"] = fwd_bwd(o_mod, xg, dy)
                    dy1 = torch.randn(shape[0], 1, *shape[2:]).contiguous(memory_format=mf)
                    fns[f"convs alone {mf_name}"] = fwd_bwd(ConvsAlone(o_mod), xg, dy1)
            raw = _interleaved_raw(fns, reps, min_seconds=0.5, max_reps=50)
            res = {k: min(v) * 1e3 for k, v in raw.items()}
            torch._dynamo.reset()

            def per_turn(*names):  # each turn's best time over these variants
                return [min(ts) for ts in zip(*(raw[k] for k in names), strict=True)]

            ours_turns = per_turn(
                "ours NCHW", "ours CL", *(("fused NCHW", "fused CL") if mode == "inference" else ())
            )
            seed_turns = per_turn("seed eager NCHW", "seed eager CL")
            comp_turns = per_turn("seed compile NCHW", "seed compile CL")
            ci_eager = _median_ci([s / o for s, o in zip(seed_turns, ours_turns, strict=True)])
            ci_comp = _median_ci([s / o for s, o in zip(comp_turns, ours_turns, strict=True)])
            ours_best = min(res["ours NCHW"], res["ours CL"])
            seed_eager_best = min(res["seed eager NCHW"], res["seed eager CL"])
            seed_comp_best = min(res["seed compile NCHW"], res["seed compile CL"])
            if mode == "inference":
                ours_best = min(ours_best, res["fused NCHW"], res["fused CL"])
                fused = f"{min(res['fused NCHW'], res['fused CL']):.0f}"
            else:
                fused = "-"
            r_eager = seed_eager_best / ours_best
            r_comp = seed_comp_best / ours_best
            floor_best = min(res["convs alone NCHW"], res["convs alone CL"])
            r_floor = seed_eager_best / floor_best
            lines.append(
                f"| C={shape[1]} {shape[2]}x{shape[3]} | {mode} | "
                + " | ".join(
                    f"{res[k]:.0f}"
                    for k in (
                        "seed eager NCHW",
                        "seed eager CL",
                        "seed compile NCHW",
                        "seed compile CL",
                        "ours NCHW",
                        "ours CL",
                    )
                )
                + f" | {fused} | {floor_best:.0f} | {r_eager:.2f}x | {r_comp:.2f}x | {r_floor:.2f}x |"
            )
            need_eager, need_comp = (4.0, 1.3) if mode == "inference" else (2.0, 1.0)
            verdicts.append(
                f"- block {mode}, C={shape[1]}: vs seed eager {ci_eager[0]:.2f}x "
                f"[{ci_eager[1]:.2f}, {ci_eager[2]:.2f}] (target >= {need_eager}x: "
                f"{_verdict(*ci_eager[1:], need_eager, at_most=False)}); vs seed compiled "
                f"{ci_comp[0]:.2f}x [{ci_comp[1]:.2f}, {ci_comp[2]:.2f}] (target >= {need_comp}x: "
                f"{_verdict(*ci_comp[1:], need_comp, at_most=False)}); ratios of minimum times "
                f"{r_eager:.2f}x and {r_comp:.2f}x; the convolutions alone are {r_floor:.2f}x "
                "faster than the seed in eager mode"
            )
            print(lines[-1], flush=True)
    lines.append("")
    lines.append(
        '("vs" columns: best seed time in that column group divided by our best eager time. '
        "The verdicts above use the median over turns of (each turn's best seed time / that "
        "turn's best time of ours), with a 95% confidence interval for the median. "
        "\"convs alone\": the spatial gate's four convolutions with the block's weights and nothing "
        "else, as ours runs them; every implementation of the block computes them, so the last "
        "column bounds the speed-up over the seed in eager mode that any implementation can reach.)"
    )
    return lines, verdicts


# ------------------------------------------------------------------------------ memory
def saved_bytes(model, x):
    """Bytes of the distinct activation storages autograd keeps for backward.

    Parameters are left out: the model holds them whether or not autograd saves a reference
    (at C=1024 they would add 0.17x the input, for the seed and for us alike).
    """
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


def bench_memory():
    lines = [
        "### Bytes saved for backward / input bytes (train mode, distinct activation storages, "
        "parameters excluded)",
        "",
    ]
    lines += ["| shape | seed | ours NCHW | ours channels_last |", "| --- | --- | --- | --- |"]
    verdicts = []
    for shape in [(8, *SHAPES[0][1:]), (8, *SHAPES[1][1:]), (8, *SHAPES[2][1:])]:
        seed, ours = pair(shape[1])
        x = torch.randn(shape, requires_grad=True)
        nbytes = x.numel() * 4
        r_seed = saved_bytes(seed.train(), x) / nbytes
        r_ours = saved_bytes(ours.train(), x) / nbytes
        xc = x.detach().contiguous(memory_format=CL).requires_grad_()
        r_cl = saved_bytes(copy.deepcopy(ours).to(memory_format=CL).train(), xc) / nbytes
        lines.append(f"| {list(shape)} | {r_seed:.2f} | {r_ours:.2f} | {r_cl:.2f} |")
        verdicts.append(
            f"- saved bytes C={shape[1]}: {r_ours:.2f} (NCHW), {r_cl:.2f} (channels_last); target <= 1.15: "
            f"{'met' if max(r_ours, r_cl) <= 1.15 else 'NOT met'} (seed {r_seed:.2f})"
        )
    return lines, verdicts


# ------------------------------------------------------------------------------ ResNet-50
def bam_resnet50(bam_cls, **kw):
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.layer1 = nn.Sequential(net.layer1, bam_cls(256, **kw))
    net.layer2 = nn.Sequential(net.layer2, bam_cls(512, **kw))
    net.layer3 = nn.Sequential(net.layer3, bam_cls(1024, **kw))
    return net


def _interleaved_raw(fns: dict, reps: int, min_seconds: float = 0.0, max_reps: int = 0) -> dict:
    """Seconds of every call of each function, the functions called in turns so that load
    drifts hit all of them alike (turn ``i`` of each is ``times[k][i]``). Each turn calls them in
    a new random order (seeded): a call's time depends on what ran just before it (the
    allocator's state, the caches), so no function may always follow the same other.

    At least ``reps`` turns; more (up to ``max_reps``) while the turns so far have taken less
    than ``min_seconds`` per function, so fast calls get more samples, as in ``timeit``."""
    for fn in fns.values():
        fn()  # warm-up (and, under torch.compile, the compile)
        fn()
    times = {k: [] for k in fns}
    keys = list(fns)
    order = random.Random(0)
    start = time.perf_counter()
    turn = 0
    while turn < reps or (time.perf_counter() - start < min_seconds * len(fns) and turn < max_reps):
        order.shuffle(keys)
        for k in keys:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
        turn += 1
    return times


def _interleaved(fns: dict, reps: int, min_seconds: float = 0.0, max_reps: int = 0) -> dict:
    """Minimum ms of each function over calls made in turns (``_interleaved_raw``)."""
    times = _interleaved_raw(fns, reps, min_seconds, max_reps)
    # The minimum: on a shared machine, other jobs only ever add time.
    return {k: min(v) * 1e3 for k, v in times.items()}


def _median_ci(values, level: float = 0.95):
    """Median of ``values`` with a distribution-free confidence interval for it (order
    statistics: the interval between the k-th smallest and k-th largest value, k from the
    binomial(n, 1/2) distribution). Returns (median, low, high)."""
    r = sorted(values)
    n, k, cdf = len(r), 0, 0.0
    while cdf + math.comb(n, k) / 2**n <= (1 - level) / 2:
        cdf += math.comb(n, k) / 2**n
        k += 1
    if k == 0:  # under 6 turns no two order statistics bracket the median at this level
        return statistics.median(r), -math.inf, math.inf
    return statistics.median(r), r[k - 1], r[n - k]


def _paired_ratio(times: dict, a: str, b: str, level: float = 0.95):
    """Median over turns of time(a) / time(b), each ratio comparing two calls of the same turn,
    with its confidence interval (``_median_ci``)."""
    return _median_ci([x / y for x, y in zip(times[a], times[b], strict=True)], level)


def _verdict(low: float, high: float, target: float, at_most: bool = True) -> str:
    """ "met" / "NOT met" only when the whole interval is on one side of the target."""
    if (high <= target) if at_most else (low >= target):
        return "met"
    if (low > target) if at_most else (high < target):
        return "NOT met"
    return "unresolved: the interval contains the target"


def bench_resnet(reps):
    import torchvision

    from torch_bam.fold import fold_bam

    lines = ["### ResNet-50 vs BAM-ResNet-50, batch 8, 224x224", ""]
    lines += [
        f"Ratios: median over {reps} turns of (that model's call / ResNet-50's call in the same "
        "turn), with a 95% confidence interval for the median. ms: median per call.",
        "",
        "| format | pass | ResNet-50 ms | ours ms | seed / R50 | ours / R50 | ours folded + in place / R50 | floor: convs + gate only / R50 | null: R50 copy / R50 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    torch.manual_seed(0)
    x0 = torch.randn(8, 3, 224, 224)
    target = torch.randint(0, 1000, (8,))
    for mf_name, mf in (("NCHW", torch.contiguous_format), ("channels_last", CL)):
        x = x0.contiguous(memory_format=mf)
        models = {
            "r50": torchvision.models.resnet50(weights=None),
            # The null comparison: a second, identical ResNet-50. Its ratio to the first shows
            # how far this machine's noise moves a ratio that should be exactly 1.
            "r50_copy": torchvision.models.resnet50(weights=None),
            "seed": bam_resnet50(seed_bam.BAM),
            "ours": bam_resnet50(BAM),
            # The floor: ResNet-50 plus only the blocks' convolutions and the fused gate.
            "floor": bam_resnet50(ConvsAndGate),
        }
        models = {k: m.to(memory_format=mf) for k, m in models.items()}
        # The inference recipe for deployment: BAM's BNs folded, the gate written in place.
        # (ResNet-50's own BNs are left alone in every model, so the ratio is BAM's cost.)
        fast = fold_bam(copy.deepcopy(models["ours"]).eval())
        for m in fast.modules():
            if isinstance(m, BAM):
                m.inplace = True
        for mode in ("inference", "train step"):
            fns = {}
            for name, m in models.items():
                if mode == "inference":
                    m.eval()

                    def infer(m=m):
                        with torch.no_grad():
                            m(x)

                    fns[name] = infer
                else:
                    m.train()
                    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

                    def step(m=m, opt=opt):
                        opt.zero_grad(set_to_none=True)
                        nn.functional.cross_entropy(m(x), target).backward()
                        opt.step()

                    fns[name] = step
            if mode == "inference":

                def infer_fast():
                    with torch.no_grad():
                        fast(x)

                fns["fast"] = infer_fast
            raw = _interleaved_raw(fns, reps)
            ratios = {k: _paired_ratio(raw, k, "r50") for k in raw if k != "r50"}

            def cell(k):
                if k not in ratios:
                    return "-"
                m, lo, hi = ratios[k]
                return f"{m:.3f} [{lo:.3f}, {hi:.3f}]"

            def ms(k):
                return f"{statistics.median(raw[k]) * 1e3:.0f}"

            lines.append(
                f"| {mf_name} | {mode} | {ms('r50')} | {ms('ours')} | {cell('seed')} | {cell('ours')} | "
                f"{cell('fast')} | {cell('floor')} | {cell('r50_copy')} |"
            )
            print(lines[-1], flush=True)
            verdict = f"- BAM-ResNet-50 / ResNet-50, {mode}, {mf_name}: {cell('ours')} " + (
                f"(target <= 1.05: {_verdict(*ratios['ours'][1:], 1.05)})"
            )
            if "fast" in ratios:
                verdict += (
                    f"; folded + in place {cell('fast')} ({_verdict(*ratios['fast'][1:], 1.05)})"
                )
            verdict += (
                f"; seed {cell('seed')}; floor (the blocks' convolutions and the gate only) "
                f"{cell('floor')}; null (a second ResNet-50) {cell('r50_copy')}"
            )
            verdicts.append(verdict)
    return lines, verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument(
        "--resnet-turns", type=int, default=30, help="turns of the ResNet-50 comparison"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    reps = 3 if args.quick else 5
    load_before = loadavg()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gate = bench_gate(reps)
    print("\n".join(gate), flush=True)
    # At least 8 turns per block row: fewer cannot give a 95% interval for a median.
    block, v_block = bench_block(max(reps, 8))
    mem, v_mem = bench_memory()
    print("\n".join(mem), flush=True)
    resnet, v_resnet = ([], []) if args.skip_resnet else bench_resnet(args.resnet_turns)
    # The GPU has a script of its own: benchmarks/gpu.py writes RESULTS_GPU.md.
    gpu, v_gpu = [], []
    gpu_line = (
        "- GPU: not measured here; `benchmarks/gpu.py` checks and times the CUDA kernels on a "
        "GPU and writes `RESULTS_GPU.md`. CI runs them under TRITON_INTERPRET=1 (tests/cuda)."
    )
    load_after = loadavg()
    header = [
        "# Benchmark results",
        "",
        "Written by `benchmarks/run_benchmarks.py` (do not edit by hand; rerun it).",
        "",
        f"- date: {started}",
        f"- machine: {machine()}, {os.cpu_count()} logical CPUs, torch.set_num_threads(2)",
        f"- torch {torch.__version__}, torch_bam {torch_bam.__version__}, python {platform.python_version()}",
        f"- load average (1, 5, 15 min) before: {load_before}; after: {load_after}. The machine is shared "
        "with other jobs; a load above 2 means the timings are noisy and the ratios are the thing to read.",
        f"- repeats: minimum of at least {reps} calls after two warm-up calls (8 for the block rows), more for fast calls (0.5 s of calls each, up to 50); the variants of each block row, and the ResNet models ({args.resnet_turns} turns), are timed in turns, each turn in a random order",
        gpu_line,
        "",
        "## Targets",
        "",
        *([NOISY, ""] if max(os.getloadavg()[0], float(load_before.split()[0])) > 2.5 else []),
        *v_block,
        *v_mem,
        *v_resnet,
        *v_gpu,
        "",
        "## Tables",
        "",
    ]
    OUT.write_text(
        "\n".join(header + gate + [""] + block + [""] + mem + [""] + resnet + [""] + gpu) + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
