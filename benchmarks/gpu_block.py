"""The block and network targets of issue 12, timed on one GPU; called by benchmarks/gpu.py.

``run(report)`` adds to the report of ``benchmarks/gpu.py`` (benchmarks/_gpu_report.py), in
this order, as far as ``report.time_left()`` allows (what does not fit is reported
"unresolved"):

1. correctness: one BAM block's training step through the CUDA path against the plain path
   (backend "reference") on the GPU: output, input grad and every parameter grad;
2. ResNet-50 against BAM-ResNet-50 (``create_model``, paper layout): B=64, 224x224, bf16
   autocast, channels_last, an SGD step: eager step, inference, peak training memory;
3. one block against the seed's block (benchmarks/seed_bam.py) at 256@56, 512@28, 1024@14,
   B 32 and 64: forward+backward and inference, eager; then kernel time against wall time
   (torch.profiler) for both at 256@56, B=64;
4. the same compiled (``torch.compile``, default mode; B=64), then both networks compiled,
   then a compiled block step in a CUDA graph (``mode="reduce-overhead"``).

With gpu.py's default budget (``--total-s 285``, of which the kernels take up to 170 s) the
compiled rows may not fit: ``python benchmarks/gpu.py --total-s 540`` leaves them room (a
compile of each ResNet-50 takes about a minute).

Times are medians of CUDA-event timings after warm-up, each event pair around one call with
the GPU idle before it, so host time (launches, Python) counts as it does in training. Ratios
come from the same run. Alone: ``PYTHONPATH=src:. python benchmarks/gpu_block.py`` (writes
benchmarks/RESULTS_GPU_block.md); the CPU dry run (tiny shapes, under the interpreter):
``TRITON_INTERPRET=1 PYTHONPATH=src:. python benchmarks/gpu_block.py --device cpu --smoke``.
Runs on torch >= 2.4 (tested here on 2.14; the GPU machine has 2.11) and triton >= 3.0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "src")]

from _gpu_report import Report  # noqa: E402
from seed_bam import BAM as SeedBAM  # noqa: E402

import torch_bam  # noqa: E402
from torch_bam.functional import get_backend, set_backend  # noqa: E402

CL = torch.channels_last
BLOCK_SHAPES = [(c, hw, b) for c, hw in ((256, 56), (512, 28), (1024, 14)) for b in (32, 64)]
SMOKE_BLOCK_SHAPES = [(32, 8, 2), (64, 4, 2)]


# ---------------------------------------------------------------------------------------------
# Timing


def _timer(device: str, smoke: bool):
    def cuda_ms(fn, iters=10, warmup=3):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # the GPU idles before the next call: host time counts
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def cpu_ms(fn, iters=3, warmup=1):  # the dry run: plumbing, not measurement
        for _ in range(warmup if not smoke else 1):
            fn()
        times = []
        for _ in range(1 if smoke else iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cuda_ms if device == "cuda" else cpu_ms


def _autocast(device):
    return torch.autocast(device, dtype=torch.bfloat16)


def _free(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Steps


def _block_train(block, x, dy, device):
    def step():
        with _autocast(device):
            y = block(x)
        y.backward(dy)

    return step


def _block_infer(block, x, device):
    def step():
        with torch.no_grad(), _autocast(device):
            block(x)

    return step


def _net_train(model, x, target, device):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


def _net_infer(model, x, device):
    def step():
        with torch.no_grad(), _autocast(device):
            model(x)

    return step


def _seed_blocks(model: nn.Module) -> nn.Module:
    """The network with each torch-bam block replaced by the seed's (same state_dict keys)."""
    for name, child in model.named_children():
        if isinstance(child, torch_bam.BAM):
            seed = SeedBAM(child.channels).to(next(child.parameters()).device)
            seed.load_state_dict(child.state_dict())
            setattr(model, name, seed.to(memory_format=CL))
        else:
            _seed_blocks(child)
    return model


# ---------------------------------------------------------------------------------------------
# The parts


def correctness(report: Report, device: str, smoke: bool) -> bool:
    c, hw, b = (64, 8, 4) if smoke else (256, 28, 8)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, c, hw, hw, device=device, generator=gen).to(torch.bfloat16, memory_format=CL)
    dy = torch.randn(x.shape, device=device, generator=gen, dtype=x.dtype)
    ours = torch_bam.BAM(c).to(device).to(memory_format=CL).train()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2, generator=gen)
    plain = copy.deepcopy(ours)
    results = []
    for block, backend in ((ours, "triton" if device == "cpu" else "auto"), (plain, "reference")):
        set_backend(backend)
        xx = x.clone().requires_grad_()
        _block_train(block, xx, dy, device)()
        results.append([xx.grad] + [p.grad for p in block.parameters()])
    set_backend("auto")
    worst = 0.0
    for a, e in zip(*results, strict=True):
        err = (a.float() - e.float()).abs().max().item() / max(1.0, e.float().abs().max().item())
        worst = max(worst, err if torch.isfinite(a).all() else float("inf"))
    ok = worst <= 0.05  # bf16 against bf16: rounding of two different orders of summation
    report.verdict("block grads, CUDA path vs plain path (bf16, worst scaled error)", worst,
                   "<= 0.05", ok)  # fmt: skip
    return ok


def network(report: Report, device: str, smoke: bool, bench) -> dict:
    b, size = (2, 64) if smoke else (64, 224)
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=CL)
    target = torch.randint(0, 1000, (b,), device=device)
    out: dict = {}
    rows = []
    for name in ("resnet50", "bam_resnet50"):
        model = torch_bam.create_model(name).to(device).to(memory_format=CL).train()
        step = _net_train(model, x, target, device)
        train = bench(step)
        peak = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        infer = bench(_net_infer(model.eval(), x, device))
        out[name] = (train, infer, peak)
        rows.append([name, train, infer, "-" if peak is None else peak])
        del model, step
        _free(device)
    report.table(f"Networks, eager, B={b}, {size}x{size}, bf16 autocast, channels_last, SGD step",
                 ["model", "train step ms", "inference ms", "peak train MiB"], rows)  # fmt: skip
    (rt, ri, rp), (bt, bi, bp) = out["resnet50"], out["bam_resnet50"]
    _ratio(report, "BAM-ResNet-50 / ResNet-50, training step, eager", bt / rt, 1.05, smoke)
    _ratio(report, "BAM-ResNet-50 / ResNet-50, inference", bi / ri, 1.05, smoke)
    if rp is not None:
        _ratio(report, "BAM-ResNet-50 / ResNet-50, peak training memory", bp / rp, 1.05, smoke)
    else:
        report.verdict("BAM-ResNet-50 / ResNet-50, peak training memory", "not on CUDA",
                       "<= 1.05", None)  # fmt: skip
    return out


def _ratio(report, target, value, goal, smoke, at_most=True):
    sign = "<=" if at_most else ">="
    met = None if smoke else (value <= goal if at_most else value >= goal)
    return report.verdict(target, value, f"{sign} {goal}", met)


def _block_pair(c, hw, b, device):
    x = torch.randn(b, c, hw, hw, device=device).to(torch.bfloat16, memory_format=CL)
    x.requires_grad_()
    dy = torch.randn_like(x)
    ours = torch_bam.BAM(c).to(device).to(memory_format=CL).train()
    seed = SeedBAM(c).to(device).to(memory_format=CL).train()
    return x, dy, ours, seed


def blocks(report: Report, device: str, smoke: bool, bench, compiled: bool) -> None:
    shapes = SMOKE_BLOCK_SHAPES if smoke else BLOCK_SHAPES
    if compiled:
        shapes = [s for s in shapes if s[2] == max(t[2] for t in shapes)]  # compile time
    kind = "compiled" if compiled else "eager"
    rows, train_ratios, infer_ratios = [], [], []
    for c, hw, b in shapes:
        if report.time_left() < (60 if compiled else 15):
            break
        x, dy, ours, seed = _block_pair(c, hw, b, device)
        if compiled:
            ours_c, seed_c = torch.compile(ours), torch.compile(seed)
            t_ours = bench(_block_train(ours_c, x, dy, device))
            t_seed = bench(_block_train(seed_c, x, dy, device))
            rows.append([f"{c}@{hw}", b, t_seed, t_ours, t_seed / t_ours])
            train_ratios.append(t_seed / t_ours)
        else:
            t_ours = bench(_block_train(ours, x, dy, device))
            t_seed = bench(_block_train(seed, x, dy, device))
            i_ours = bench(_block_infer(ours.eval(), x.detach(), device))
            i_seed = bench(_block_infer(seed.eval(), x.detach(), device))
            rows.append([f"{c}@{hw}", b, t_seed, t_ours, t_seed / t_ours, i_seed, i_ours,
                         i_seed / i_ours])  # fmt: skip
            train_ratios.append(t_seed / t_ours)
            infer_ratios.append(i_seed / i_ours)
        del x, dy, ours, seed
        _free(device)
    if compiled:
        cols = ["shape", "B", "seed fwd+bwd ms", "ours fwd+bwd ms", "seed / ours"]
    else:
        cols = ["shape", "B", "seed fwd+bwd ms", "ours fwd+bwd ms", "seed / ours",
                "seed inference ms", "ours inference ms", "seed / ours"]  # fmt: skip
    report.table(f"One block, {kind}, bf16 autocast, channels_last", cols, rows)
    complete = len(rows) == len(shapes)
    goal = 1.3 if compiled else 2.0
    _worst(report, f"block fwd+bwd, seed / ours, {kind}, worst shape", train_ratios, goal,
           smoke, complete)  # fmt: skip
    if not compiled:
        _worst(report, "block inference, seed eager / ours, worst shape", infer_ratios, 2.0,
               smoke, complete)  # fmt: skip


def _worst(report, target, ratios, goal, smoke, complete):
    if not ratios:
        report.verdict(target, "out of time", f">= {goal}", None)
        return
    worst = min(ratios)
    met = None if smoke or (worst >= goal and not complete) else worst >= goal
    report.verdict(target, worst, f">= {goal}", met)


def compiled_networks(report: Report, device: str, smoke: bool, bench, eager: dict) -> None:
    target = "BAM-ResNet-50 / ResNet-50, training step, both compiled"
    if report.time_left() < 150 or smoke:
        report.verdict(target, "skipped (smoke)" if smoke else "out of time", "<= 1.05", None)
        return
    b, size = 64, 224
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=CL)
    labels = torch.randint(0, 1000, (b,), device=device)
    times = {}
    for name in ("resnet50", "bam_resnet50", "bam_resnet50 (seed blocks)"):
        if report.time_left() < 60:
            break
        model = torch_bam.create_model(name.split()[0]).to(device).to(memory_format=CL).train()
        if "seed" in name:
            model = _seed_blocks(model)
        times[name] = bench(_net_train(torch.compile(model), x, labels, device), iters=10)
        del model
        _free(device)
    report.table("Networks, compiled (default mode), training step",
                 ["model", "train step ms"], [[n, t] for n, t in times.items()])  # fmt: skip
    if "bam_resnet50" in times:
        _ratio(report, target, times["bam_resnet50"] / times["resnet50"], 1.05, smoke)
    else:
        report.verdict(target, "out of time", "<= 1.05", None)
    if "bam_resnet50 (seed blocks)" in times:
        r = times["bam_resnet50 (seed blocks)"] / times["bam_resnet50"]
        _ratio(report, "compiled BAM-ResNet-50: seed blocks / ours", r, 1.0, smoke, at_most=False)


def profile(report: Report, device: str, bench) -> None:
    """Where a block's training step spends its time: kernel time (torch.profiler) against
    wall time, ours and the seed's, at 256@56, B=64 (the baseline: 1.6 of 6.5 ms in kernels)."""
    if device != "cuda" or report.time_left() < 30:
        return
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = []
    x, dy, ours, seed = _block_pair(256, 56, 64, device)
    for name, block in (("seed", seed), ("ours", ours)):
        step = _block_train(block, x, dy, device)
        wall = bench(step)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        events = prof.key_averages()
        kernel_us = sum(
            getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            for e in events
        )
        aten = sum(e.count for e in events if e.key.startswith("aten::")) / 5
        rows.append([name, wall, kernel_us / 5 / 1e3, aten])
    report.table("One block at 256@56, B=64, bf16, fwd+bwd: wall time against kernel time",
                 ["block", "wall ms", "kernel ms (profiler)", "aten calls"], rows)  # fmt: skip


def cuda_graph(report: Report, device: str, smoke: bool) -> None:
    target = "compiled block training step in a CUDA graph (mode='reduce-overhead')"
    if device != "cuda" or report.time_left() < 40:
        report.verdict(target, "not on CUDA" if device != "cuda" else "out of time", "runs", None)
        return
    x, dy, ours, _ = _block_pair(256, 56, 32, device)
    step = _block_train(torch.compile(ours, mode="reduce-overhead"), x, dy, device)
    try:
        for _ in range(4):
            step()
        torch.cuda.synchronize()
        report.verdict(target, "runs", "runs", True)
    except Exception as exc:  # report it, go on
        report.verdict(target, f"{type(exc).__name__}: {exc}"[:200], "runs", False)


def run(report: Report) -> None:
    device, smoke = report.device, report.smoke
    bench = _timer(device, smoke)
    backend = get_backend()
    if device == "cpu":
        set_backend("triton")  # the dry run: the CUDA path under the interpreter
    try:
        t0 = time.monotonic()
        correctness(report, device, smoke)
        if device == "cpu":
            set_backend("triton")
        eager = network(report, device, smoke, bench)
        blocks(report, device, smoke, bench, compiled=False)
        profile(report, device, bench)
        if not smoke:
            blocks(report, device, smoke, bench, compiled=True)
        compiled_networks(report, device, smoke, bench, eager)
        cuda_graph(report, device, smoke)
        report.fact("benchmarks/gpu_block.py wall time", f"{time.monotonic() - t0:.0f} s")
    finally:
        set_backend(backend)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--total-s", type=float, default=180.0)
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS_GPU_block.md"))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu_block.py: no CUDA device here; see --device cpu --smoke.",
              file=sys.stderr)  # fmt: skip
        return 2
    report = Report("GPU results: block and network (issue 12)", device=args.device,
                    smoke=args.smoke, deadline=time.monotonic() + args.total_s)  # fmt: skip
    report.fact("torch", torch.__version__)
    if args.device == "cuda":
        report.fact("card", torch.cuda.get_device_name())
    run(report)
    report.write(args.out)
    for v in report.verdicts:
        print(v.line())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
