"""One command on a GPU machine: is the Triton path right there, and is it faster?

    PYTHONPATH=src python benchmarks/gpu.py                       # writes benchmarks/RESULTS_GPU.md
    PYTHONPATH=src python benchmarks/gpu.py --smoke --out /tmp/r.md   # CPU, interpreter, tiny

Sections, in this order, so that a run cut off still answers the first questions (the report is
written after each one; a section that crashes is recorded as failed and the next ones run):

1. kernels against a float64 reference at the three BAM-ResNet-50 shapes (bf16 channels_last,
   fp32 NCHW); the same bits on repeated calls; ragged batch sizes back to back; two streams at
   once; the counters back at zero;
2. a block's training step replayed in a CUDA graph, and under
   ``torch.compile(mode="reduce-overhead")`` with a change of batch size and an eval pass,
   against eager;
3. one block, forward and forward+backward: the Triton path, the plain path and the seed's
   block, errors against float64 and times;
4. BAM-ResNet-50 against ResNet-50, B=64, 224x224, bf16 autocast, channels_last: training step
   and inference, eager and compiled, peak memory, for both paths;
5. verdicts: correct, faster than the plain path, <= 1.05x ResNet-50.

Only a run on CUDA in which every correctness check passed and the Triton path was faster than
the plain path (network training step and every block's forward+backward) adds this GPU's class
to ``src/torch_bam/cuda/verified.json``, which makes it the default there. ``--smoke`` runs every
section on CPU at tiny sizes, the Triton path under the Triton interpreter: it checks that the
script runs; its times mean nothing, it never touches the table, and it needs ``--out``.
Exits 1 when a correctness check failed, 2 when the device is missing.
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT / "src"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

BUDGET_S = 450.0  # sections stop starting new work after this (the run stays under 8 min)
SHAPES = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14)]  # BAM-ResNet-50's blocks
SMOKE_SHAPES = [(2, 32, 4, 4), (2, 64, 3, 3), (2, 128, 2, 2)]


class Run:
    """The report, where tensors go, the deadline, and what the verdicts need."""

    def __init__(self, smoke: bool, out: Path):
        import torch

        from benchmarks._plan import Ctx
        from benchmarks._report import Report

        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.out = out
        self.start = time.monotonic()
        title = "The Triton path on a GPU" + (" (smoke run on CPU: times mean nothing)" if smoke else "")
        self.report = Report(title, device="cuda", dry=smoke)
        self.ctx = Ctx(self.report, "cuda", smoke, deadline=self.start + BUDGET_S)
        self.checks: dict[str, bool] = {}  # correctness check -> passed
        self.faster: dict[str, bool | None] = {}  # speed comparison -> Triton faster than plain
        self.sections: list[tuple[str, str]] = []  # (section, "ok" / "failed: ..." / "skipped")
        self.torch = torch

    def check(self, name: str, ok: bool, value: str) -> None:
        self.checks[name] = bool(ok)
        v = self.report.verdict(f"correctness: {name}", value, "passes", ok)
        v.met = bool(ok)  # a correctness check holds in a smoke run too

    def time_left(self) -> float:
        return self.ctx.time_left()

    def measure(self, fns: dict, turns: int, **kw):
        """Time ``fns`` in turns (benchmarks/_timer.py); one untimed-warm-up-free turn in a
        smoke run, which only checks that every call runs."""
        if self.smoke:
            from benchmarks._timer import measure

            return measure(fns, 1, warmup=0, device="cpu")
        return self.ctx.measure(fns, turns, **kw)

    def write(self) -> None:
        final = copy.deepcopy(self.report)
        final.fact("sections", ", ".join(f"{n} ({s})" for n, s in self.sections) or "none yet")
        final.fact("wall time so far", f"{time.monotonic() - self.start:.0f} s")
        if self.smoke:
            final.note("**A smoke run on CPU (the Triton path under the interpreter, tiny sizes): it shows that the script runs. Its times mean nothing.**")
        final.write(self.out)


def _backend(name: str):
    from torch_bam.functional import get_backend, set_backend

    @contextlib.contextmanager
    def cm():
        old = get_backend()
        set_backend(name)
        try:
            yield
        finally:
            set_backend(old)

    return cm()


def _sync(run: Run) -> None:
    if run.device == "cuda":
        run.torch.cuda.synchronize()


# --------------------------------------------------------------------------------- 1. kernels


def kernels_section(run: Run) -> None:
    import torch

    from benchmarks.gate import _checks
    from torch_bam.cuda import kernels

    dev = run.device
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    seed = gen.initial_seed()
    shapes = SMOKE_SHAPES if run.smoke else SHAPES
    modes = [("bf16", torch.bfloat16, torch.channels_last, "CL"),
             ("fp32", torch.float32, torch.contiguous_format, "NCHW")]  # fmt: skip
    rows, bad = [], []
    for shape in shapes:
        for pname, dtype, fmt, lname in modes:
            for name, e in _checks(kernels, shape, dtype, fmt, False, dev, gen):
                rows.append([name, f"{shape[1]}@{shape[2]}", f"{pname} {lname}", f"{e:.3f}", "ok" if e <= 1 else "FAIL"])
                if not e <= 1:
                    bad.append(f"{name} {shape} {pname}")
    run.report.table(f"1. Kernels against float64 (B={shapes[0][0]}, seed {seed})",
                     ["kernel", "shape", "precision", "worst error / allowed", ""], rows)  # fmt: skip
    run.check("kernels against float64", not bad, f"{len(rows) - len(bad)} of {len(rows)} pass" + (f" (fail: {', '.join(bad)})" if bad else ""))
    run.write()

    def inputs(shape, b=None):
        bb, ch, h, w = shape
        bb = b or bb
        x = torch.randn(bb, ch, h, w, generator=gen).to(dev, torch.bfloat16).contiguous(memory_format=torch.channels_last)
        c = torch.randn(bb, ch, generator=gen).to(dev)
        s = torch.randn(bb, 1, h, w, generator=gen).to(dev)
        wr = (0.3 * torch.randn(max(1, ch // 16), ch, generator=gen)).to(dev)
        return x, torch.randn_like(x), c, s, wr

    def reductions(x, dy, c, s, wr, tickets=None):
        dc, ds = kernels.gate_backward_reduce(dy, x, c, s, False, tickets=tickets)
        pooled, r = kernels.pool_reduce(x, wr, tickets=tickets)
        return [dc, ds, pooled, r]

    # The same bits on every call.
    same = True
    for shape in shapes:
        args = inputs(shape)
        first = reductions(*args)
        for _ in range(3):
            same &= all(torch.equal(a, b) for a, b in zip(first, reductions(*args), strict=True))
    run.check("the same bits on repeated calls", same, "bit-equal" if same else "differ")

    # Ragged batch sizes back to back (no synchronisation between them), one counter buffer.
    shape = shapes[0]
    sizes = [shape[0], shape[0] // 2 + 1, 1, 3, shape[0]]
    data = [inputs(shape, b) for b in sizes]
    tickets = kernels.counters(data[0][0], max(sizes))
    together = [reductions(*d, tickets=tickets) for d in data]
    _sync(run)
    alone = []
    for d in data:
        alone.append(reductions(*d))
        _sync(run)
    ragged = all(torch.equal(a, b) for t, u in zip(together, alone, strict=True) for a, b in zip(t, u, strict=True))
    run.check("ragged batch sizes back to back", ragged, f"sizes {sizes}: " + ("bit-equal to one at a time" if ragged else "differ"))
    zero = bool((tickets == 0).all())

    # Two streams at once.
    if dev == "cuda":
        a, b = inputs(shape), inputs(shape)
        ref_a, ref_b = reductions(*a), reductions(*b)
        _sync(run)
        s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
        s1.wait_stream(torch.cuda.current_stream())
        s2.wait_stream(torch.cuda.current_stream())
        ta, tb = kernels.counters(a[0]), kernels.counters(b[0])
        outs_a, outs_b = [], []
        for _ in range(4):
            with torch.cuda.stream(s1):
                outs_a.append(reductions(*a, tickets=ta))
            with torch.cuda.stream(s2):
                outs_b.append(reductions(*b, tickets=tb))
        _sync(run)
        streams = all(torch.equal(x, y) for outs, ref in ((outs_a, ref_a), (outs_b, ref_b)) for o in outs for x, y in zip(o, ref, strict=True))
        run.check("two streams at once", streams, "bit-equal to one stream" if streams else "differ")
        zero &= bool((ta == 0).all()) and bool((tb == 0).all())
    else:
        run.sections.append(("two streams", "skipped: needs CUDA"))
    run.check("counters back at zero", zero, "all zero" if zero else "NOT zero")


# ----------------------------------------------------------------------------------- helpers


def _block(channels: int, device: str):
    import torch

    from tests.helpers import randomize_
    from tests.reference.seed_bam import BAM as SeedBAM
    from torch_bam import BAM

    with torch.no_grad():
        seed = randomize_(SeedBAM(channels))
    ours = BAM(channels)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return (ours.to(device, memory_format=torch.channels_last).train(),
            seed.to(device, memory_format=torch.channels_last).train())  # fmt: skip


def _train_step(block, x, dy, backend: str | None, device: str):
    """(y, dx, {param: grad}) of one bf16-autocast training step on ``backend``."""
    import torch

    x = x.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    with _backend(backend) if backend else contextlib.nullcontext():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=x.dtype != torch.float64):
            y = block(x)
        y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


def _rel_err(a, ref) -> float:
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


# ---------------------------------------------------------------------------------- 2. graphs


def graphs_section(run: Run) -> None:
    import torch

    if run.device != "cuda":
        run.sections.append(("CUDA graphs, reduce-overhead", "skipped: needs CUDA"))
        return
    b, ch, h, w = SHAPES[0]
    b = 16
    block, _ = _block(ch, "cuda")
    rows, ok = [], True

    def data(n):
        x = torch.randn(n, ch, h, w, device="cuda").to(torch.bfloat16, memory_format=torch.channels_last)
        return x, torch.randn_like(x)

    with _backend("triton"):
        # A training step captured in a CUDA graph and replayed on new data.
        x, dy = data(b)
        static_x = x.clone().requires_grad_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                block.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                    y = block(static_x)
                y.backward(dy)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        block.zero_grad(set_to_none=True)
        static_x.grad = None
        with torch.cuda.graph(graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                static_y = block(static_x)
            static_y.backward(dy)
        for i in range(3):
            x_new, _ = data(b)
            eager = copy.deepcopy(block)
            ref_y, ref_dx, _ = _train_step(eager, x_new, dy, None, "cuda")
            with torch.no_grad():
                static_x.copy_(x_new)
            graph.replay()
            torch.cuda.synchronize()
            e = max(_rel_err(static_y, ref_y.double()), _rel_err(static_x.grad, ref_dx.double()))
            rows.append([f"CUDA graph replay {i}", b, f"{e:.2e}"])
            ok &= e <= 2e-2
        # torch.compile(mode="reduce-overhead"): batch size changes and an eval pass between.
        torch._dynamo.reset()
        compiled_block, _ = _block(ch, "cuda")
        eager_block = copy.deepcopy(compiled_block)
        fn = torch.compile(compiled_block, mode="reduce-overhead")
        for i, n in enumerate([b, b // 2, b, b // 2, b]):
            x, dy = data(n)
            for m in (compiled_block, eager_block):
                m.train()
            outs = []
            for f in (fn, eager_block):
                xx = x.clone().requires_grad_()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    y = f(xx)
                y.backward(dy)
                outs.append((y.detach().clone(), xx.grad.clone()))
            e = max(_rel_err(outs[0][0], outs[1][0].double()), _rel_err(outs[0][1], outs[1][1].double()))
            rows.append([f"reduce-overhead step {i}", n, f"{e:.2e}"])
            ok &= e <= 2e-2
            if i == 1:  # an eval pass between training steps
                compiled_block.eval()
                eager_block.eval()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    e = _rel_err(fn(x), eager_block(x).double())
                rows.append(["reduce-overhead eval pass", n, f"{e:.2e}"])
                ok &= e <= 2e-2
    run.report.table(f"2. CUDA graphs and reduce-overhead against eager (C={ch}, {h}x{w}, bf16 autocast)",
                     ["step", "batch", "max error / max |eager|"], rows)  # fmt: skip
    run.check("CUDA graph replay and reduce-overhead match eager", ok, "within 2e-2 of eager" if ok else "differ")


# ----------------------------------------------------------------------------------- 3. block


def block_section(run: Run) -> None:
    import torch

    dev = run.device
    shapes = SMOKE_SHAPES[:1] if run.smoke else SHAPES  # (the kernels ran at all three)
    err_rows, time_rows, ok = [], [], True
    for b, ch, h, w in shapes:
        if run.time_left() < 60 and not run.smoke:
            run.sections.append((f"block {ch}@{h}", "cut by the time budget"))
            continue
        ours, seed = _block(ch, dev)
        gen = torch.Generator().manual_seed(ch)
        x = torch.randn(b, ch, h, w, generator=gen).to(dev, torch.bfloat16).contiguous(memory_format=torch.channels_last)
        dy = torch.randn(x.shape, generator=gen).to(dev, torch.bfloat16).contiguous(memory_format=torch.channels_last)
        ref = _train_step(copy.deepcopy(ours).double(), x.double(), dy.double(), "reference", dev)
        errs = {}
        for name, m, backend in (("triton", ours, "triton"), ("plain", ours, "aten"), ("seed", seed, None)):
            got = _train_step(copy.deepcopy(m), x, dy, backend, dev)
            grads = max(_rel_err(got[2][n], ref[2][n].double()) for n in ref[2] if ref[2][n].abs().max() > 1e-9)
            errs[name] = (_rel_err(got[0], ref[0].double()), _rel_err(got[1], ref[1].double()), grads)
            err_rows.append([f"{ch}@{h}", name, *(f"{e:.2e}" for e in errs[name])])
        # Correct: at most twice the plain path's error (+ a bf16 ulp), as the tests ask.
        shape_ok = all(t <= 2 * p + 4e-3 for t, p in zip(errs["triton"], errs["plain"], strict=True))
        ok &= shape_ok

        def fwd(m, backend):
            def call():
                with _backend(backend) if backend else contextlib.nullcontext():
                    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
                        m(x)
            return call

        def fwd_bwd(m, backend):
            xx = x.detach().clone().requires_grad_()

            def call():
                with _backend(backend) if backend else contextlib.nullcontext():
                    with torch.autocast(dev, dtype=torch.bfloat16):
                        y = m(xx)
                    y.backward(dy)
            return call

        for pass_name, make in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            fns = {"triton": make(ours, "triton"), "plain": make(ours, "aten"), "seed": make(seed, None)}
            t = run.measure(fns, 20, min_s=0.5, max_turns=100)
            r = t.ratio("triton", "plain")
            time_rows.append([f"{ch}@{h}", pass_name, *(f"{t.median(k):.3f}" for k in fns), str(r), f"{t.ratio('triton', 'seed').value:.3f}"])
            run.faster[f"block {ch}@{h} {pass_name}"] = r.verdict(1.0)
        run.write()
    run.report.table("3. One block against float64 (bf16 autocast, channels_last): max error / max |float64|",
                     ["shape", "path", "y", "dx", "worst param grad"], err_rows)  # fmt: skip
    run.report.table(f"3. One block, ms (B={shapes[0][0]}, bf16 autocast, channels_last; median over turns)",
                     ["shape", "pass", "triton", "plain", "seed", "triton / plain [95% CI]", "triton / seed"], time_rows)  # fmt: skip
    run.check("one block against float64 (Triton within 2x the plain path's error)", ok, "within" if ok else "NOT within")


# --------------------------------------------------------------------------------- 4. network


def network_section(run: Run) -> None:
    import torch

    from benchmarks.network import _infer, _step
    from torch_bam import create_model

    dev = run.device
    # A smoke run takes the demo's small CNN: ResNet-50 in bf16 on two CPU cores takes seconds.
    b, size = (2, 16) if run.smoke else (64, 224)
    base, with_bam = ("small_cnn", "bam_small_cnn") if run.smoke else ("resnet50", "bam_resnet50")
    x = torch.randn(b, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)

    def autocast():
        return torch.autocast(dev, dtype=torch.bfloat16)

    def net(name):
        return create_model(name).to(dev).to(memory_format=torch.channels_last)

    def on(backend, fn):
        def call():
            with _backend(backend):
                fn()
        return call

    rows, verdict_rows = [], []
    for compiled in (False, True):
        label = "compiled" if compiled else "eager"
        if compiled and run.smoke:
            run.sections.append(("network, compiled", "skipped in a smoke run"))
            continue
        if compiled and run.time_left() < 150:
            run.sections.append(("network, compiled", "cut by the time budget"))
            continue
        torch._dynamo.reset()
        resnet, bam = net(base), net(with_bam)
        with torch.no_grad():
            labels = torch.randint(0, resnet(x).shape[1], (b,), device=dev)
        models = {"resnet50": (resnet, "aten"), "bam plain": (bam, "aten"), "bam triton": (bam, "triton")}
        if compiled:  # one compiled module per path (the backend is read while tracing)
            bam_t = copy.deepcopy(bam)
            models = {"resnet50": (torch.compile(resnet), "aten"), "bam plain": (torch.compile(bam), "aten"),
                      "bam triton": (torch.compile(bam_t), "triton")}  # fmt: skip
        for what, make in (("train step", lambda m: _step(m, x, labels, autocast)),
                           ("inference", lambda m: _infer(m, x, autocast))):  # fmt: skip
            fns = {k: on(backend, make(m)) for k, (m, backend) in models.items()}
            peaks = {}
            if dev == "cuda" and what == "train step" and not compiled:
                for k, fn in fns.items():
                    fn()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    fn()
                    torch.cuda.synchronize()
                    peaks[k] = torch.cuda.max_memory_allocated() / 2**20
            t = run.measure(fns, 12, min_s=1.0, max_turns=40)
            for k in fns:
                rows.append([label, what, k, f"{t.median(k):.2f}", f"{peaks[k]:.0f}" if k in peaks else "-"])
            for num, den, goal in (("bam triton", "resnet50", 1.05), ("bam plain", "resnet50", None), ("bam triton", "bam plain", 1.0)):
                r = t.ratio(num, den)
                verdict_rows.append([label, what, f"{num} / {den}", str(r)])
                if goal is not None:
                    run.ctx.ratio_verdict(f"{label} {what}: BAM-ResNet-50 ({num}) / ResNet-50" if den == "resnet50" else f"{label} {what}: Triton path / plain path", r, goal)
                if num == "bam triton" and den == "bam plain" and what == "train step":
                    run.faster[f"network {label} train step"] = r.verdict(1.0)
            if peaks:
                for k in ("bam plain", "bam triton"):
                    verdict_rows.append([label, "peak memory", f"{k} / resnet50", f"{peaks[k] / peaks['resnet50']:.3f}"])
            run.write()
    run.report.table(f"4. {with_bam} and {base} (B={b}, {size}x{size}, bf16 autocast, channels_last, SGD), ms", ["mode", "what", "model", "median ms", "peak train MiB"], rows)
    run.report.table("4. Ratios (median of per-turn ratios [95% CI])", ["mode", "what", "ratio", "value"], verdict_rows)


# --------------------------------------------------------------------------------- 5. verdict


def _table_entry(run: Run) -> dict:
    import torch

    from benchmarks._report import _triton_version, commit

    prop = torch.cuda.get_device_properties(0)
    return {
        "vendor": "nvidia",
        "capability": list(torch.cuda.get_device_capability(0)),
        "gpu": prop.name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "commit": commit(),
        "results": "benchmarks/RESULTS_GPU.md",
    }


def add_to_table(path: Path, entry: dict) -> None:
    """Add (or replace) ``entry``'s class in the verified table at ``path``, atomically."""
    data = json.loads(path.read_text())
    key = (entry["vendor"], list(entry["capability"]))
    data["classes"] = [e for e in data["classes"] if (e["vendor"], list(e["capability"])) != key]
    data["classes"].append(entry)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def should_verify(checks: dict, faster: dict, smoke: bool, ran_all: bool) -> tuple[bool, str]:
    """Whether this run may add the GPU class to the table, and why (not)."""
    if smoke:
        return False, "a smoke run never changes the table"
    if not ran_all:
        return False, "not every section ran"
    if not checks or not all(checks.values()):
        return False, "a correctness check failed"
    if not faster or not all(v is True for v in faster.values()):
        return False, "the Triton path was not faster than the plain path everywhere (network training step and every block)"
    return True, "every correctness check passed and the Triton path was faster"


def verdicts(run: Run, table: Path) -> None:
    correct = bool(run.checks) and all(run.checks.values())
    fast = [k for k, v in run.faster.items() if v is True]
    not_fast = [k for k, v in run.faster.items() if v is not True]
    lines = [
        f"- correct: {'yes' if correct else 'NO'} ({sum(run.checks.values())} of {len(run.checks)} checks pass)",
        f"- faster than the plain path: {len(fast)} of {len(run.faster)} comparisons" + (f" (not: {', '.join(not_fast)})" if not_fast else ""),
    ]
    ran_all = all(s == "ok" for _, s in run.sections if not s.startswith("skipped"))
    ok, why = should_verify(run.checks, run.faster, run.smoke, ran_all)
    if ok and run.device == "cuda":
        entry = _table_entry(run)
        add_to_table(table, entry)
        lines.append(f"- verified table: added {entry['gpu']} (sm_{entry['capability'][0]}{entry['capability'][1]}): `backend='auto'` now runs the Triton path on this GPU class")
    else:
        lines.append(f"- verified table: unchanged ({why})")
    run.report.text("5. Verdict", lines)
    for line in lines:
        print(line, flush=True)


# -------------------------------------------------------------------------------------- main


SECTIONS = (
    ("1. kernels", kernels_section),
    ("2. CUDA graphs", graphs_section),
    ("3. block", block_section),
    ("4. network", network_section),
)


def run_sections(run: Run, sections) -> None:
    """Each section in turn; one that raises is recorded as a failed check and the next ones
    still run; the report is written after each."""
    for name, fn in sections:
        print(f"\n=== {name} (at {time.monotonic() - run.start:.0f} s)", flush=True)
        try:
            fn(run)
            run.sections.append((name, "ok"))
        except Exception as exc:  # recorded; the next sections still run
            traceback.print_exc()
            run.sections.append((name, f"failed: {type(exc).__name__}: {exc}"[:300]))
            run.check(f"section {name} ran", False, f"{type(exc).__name__}: {exc}"[:300])
        if run.device == "cuda":
            run.torch.cuda.empty_cache()
        run.write()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes (needs --out)")
    p.add_argument("--out", help="report path (default benchmarks/RESULTS_GPU.md)")
    args = p.parse_args(argv)
    if args.smoke:
        if not args.out:
            print("gpu.py: --smoke needs --out PATH (a smoke run never writes benchmarks/RESULTS_GPU.md).", file=sys.stderr)
            return 2
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here. Run it on a GPU machine, or check it here with --smoke --out PATH.", file=sys.stderr)
        return 2
    from torch_bam.cuda import support

    where = "cpu" if args.smoke else "cuda"
    if support.reasons(where):
        print(f"gpu.py: the Triton path cannot run here: {support.reasons(where)[0][0]}.", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else HERE / "RESULTS_GPU.md"
    run = Run(args.smoke, out)
    cmd = "PYTHONPATH=src python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run.report.fact("written by", f"`{cmd}` (do not edit by hand; rerun it)")
    run.report.machine_facts()
    if where == "cuda":
        run.report.fact("compute capability", "sm_{}{}".format(*torch.cuda.get_device_capability(0)))
    run.report.fact("TF32 (cudnn / matmul)", f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}")
    if args.smoke:
        torch.set_num_threads(2)
    run_sections(run, SECTIONS)
    verdicts(run, support.TABLE)
    run.write()
    print(f"\nwrote {out}")
    return 0 if all(run.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
