"""Whole networks: what does BAM cost a training step and an inference, against its MACs?

Each row times, in the same turns, a network without BAM, its BAM version, the BAM version's
floor (:func:`torch_bam.floor.bam_floor`: every BAM runs only its convolutions and one gate
pass) and a second copy of the network without BAM (the null comparison: its ratio should be 1,
and its interval shows how far this machine's noise moves a ratio). Ratios are medians over
turns of (that model's call / the baseline's call in the same turn), with a 95% interval.

CPU, float32, torch.set_num_threads(2):

- ``bam_small_cnn`` / ``small_cnn`` at the demo's B=64, 32x32 (training step <= 1.15,
  inference <= 1.10);
- ``bam_resnet18`` / ``resnet18`` at B=8, 64x64 (<= 1.08);
- BAM-ResNet-50 / ResNet-50 (torchvision's, BAM after layer1/2/3 as in the paper) at B=8,
  224x224, NCHW and channels_last (<= 1.05), with the seed's blocks and, in inference, the
  deployment recipe (BAM's BNs folded, ``inplace=True``).

CUDA, B=64, 224x224, bf16 autocast, channels_last, an SGD step: BAM-ResNet-50 / ResNet-50 eager
(training step, inference, peak training memory: each <= 1.05) and compiled (training step
<= 1.05; also with the seed's blocks).
"""

# Lambdas are timed inside the loop that defines them, and tables are long lines:
# ruff: noqa: B023, E501

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._plan import Ctx, Row
from tests.reference.seed_bam import BAM as SeedBAM
from torch_bam import BAM, create_model
from torch_bam.floor import bam_floor

CL = torch.channels_last


def _step(model, x, target, autocast=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is None:
            loss = F.cross_entropy(model(x), target)
        else:
            with autocast():
                loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return step


def _infer(model, x, autocast=None):
    def run():
        with torch.no_grad():
            if autocast is None:
                model(x)
            else:
                with autocast():
                    model(x)

    return run


def _macs(model: nn.Module, size: tuple) -> int:
    from torch_bam.flops import count_macs

    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: count the model
    return count_macs(copy.deepcopy(model).cpu().float(), (1, *size))


def _seed_blocks(model: nn.Module) -> nn.Module:
    """The network with each torch-bam block replaced by the seed's (same state_dict keys)."""
    for name, child in model.named_children():
        if isinstance(child, BAM):
            p = next(child.parameters())
            seed = SeedBAM(child.channels).to(p.device)
            seed.load_state_dict(child.state_dict())
            setattr(model, name, seed)
        else:
            _seed_blocks(child)
    return model


def _compare(ctx: Ctx, title: str, models: dict, x, labels, goals: dict, turns: int,
             modes=("train step", "inference"), autocast=None, extra_infer=None, notes=()):  # fmt: skip
    """Time ``models`` (the first is the baseline) in turns, per mode; one table, verdicts for
    ``goals[(model, mode)]``."""
    base = next(iter(models))
    rows = []
    macs = {k: _macs(m, tuple(x.shape[1:])) for k, m in models.items()}
    for mode in modes:
        if mode == "train step":
            fns = {k: _step(m.train(), x, labels, autocast) for k, m in models.items()}
        else:
            fns = {k: _infer(m.eval(), x, autocast) for k, m in models.items()}
            fns.update(extra_infer or {})
        t = ctx.measure(fns, turns)
        for k in fns:
            if k == base:
                continue
            r = t.ratio(k, base)
            rows.append([mode, k, f"{t.median(k):.1f}", f"{t.median(base):.1f}", str(r),
                         f"{macs[k] / macs[base]:.3f}" if k in macs else "-"])  # fmt: skip
            if (k, mode) in goals:
                goal = goals[(k, mode)]
                value = str(r)
                if "floor" in fns and k != "floor":
                    # What no implementation on the same conv kernels can beat.
                    value += f"; its floor {t.ratio('floor', base)}"
                ctx.report.verdict(f"{title}: {k} / {base}, {mode}", value, f"<= {goal}",
                                   r.verdict(goal))  # fmt: skip
        if "floor" in fns and (bam := next((k for k in fns if k.startswith("bam")), None)):
            r = t.ratio(bam, "floor")
            rows.append(
                [mode, f"{bam} / floor", "", "", str(r), f"{macs[bam] / macs['floor']:.3f}"]
            )
        ctx.free()
    ctx.report.table(
        title,
        [
            "pass",
            "model",
            "ms (median)",
            f"{base} ms (median)",
            f"time / {base} (median [95% CI] of per-turn ratios)",
            f"MACs / {base}",
        ],
        rows,
        after=[
            f"{ctx.turns(turns)} turns, each in a random order. floor: the BAM network where each BAM runs only its "
            "convolutions and one gate pass (`torch_bam.floor.bam_floor`); bam / floor is what the implementation adds "
            "above that. null: a second, identical baseline network (its ratio should be 1).",
            *notes,
        ],
    )


# ------------------------------------------------------------------------------------- CPU
def _folded(bam: nn.Module, x, name: str) -> dict:
    """The deployment recipe for inference: BAM's BNs folded, the gate written in place (the
    network's own BNs are left alone, so the ratio is BAM's cost)."""
    from torch_bam.fold import fold_bam

    fast = fold_bam(copy.deepcopy(bam).eval())
    for m in fast.modules():
        if isinstance(m, BAM):
            m.inplace = True
    return {f"{name} folded + in place": _infer(fast, x)}


def cpu_small_cnn(ctx: Ctx) -> None:
    b, size = (4, 16) if ctx.dry else (64, 32)
    torch.manual_seed(0)
    x = torch.randn(b, 3, size, size)
    labels = torch.randint(0, 10, (b,))
    bam = create_model("bam_small_cnn")
    models = {"small_cnn": create_model("small_cnn"), "bam_small_cnn": bam,
              "floor": bam_floor(bam), "null": create_model("small_cnn")}  # fmt: skip
    goals = {("bam_small_cnn", "train step"): 1.15, ("bam_small_cnn", "inference"): 1.10}
    _compare(ctx, f"bam_small_cnn against small_cnn on CPU, B={b}, {size}x{size} (the demo's)",
             models, x, labels, goals, 30, extra_infer=_folded(bam, x, "bam_small_cnn"))  # fmt: skip


def cpu_resnet18(ctx: Ctx) -> None:
    b, size = (2, 32) if ctx.dry else (8, 64)
    torch.manual_seed(0)
    x = torch.randn(b, 3, size, size)
    labels = torch.randint(0, 1000, (b,))
    bam = create_model("bam_resnet18")
    models = {"resnet18": create_model("resnet18"), "bam_resnet18": bam,
              "floor": bam_floor(bam), "null": create_model("resnet18")}  # fmt: skip
    goals = {("bam_resnet18", "train step"): 1.08, ("bam_resnet18", "inference"): 1.08}
    _compare(ctx, f"bam_resnet18 against resnet18 on CPU, B={b}, {size}x{size}",
             models, x, labels, goals, 30, extra_infer=_folded(bam, x, "bam_resnet18"))  # fmt: skip


def _tv_bam_resnet50(bam_cls=BAM):
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.layer1 = nn.Sequential(net.layer1, bam_cls(256))
    net.layer2 = nn.Sequential(net.layer2, bam_cls(512))
    net.layer3 = nn.Sequential(net.layer3, bam_cls(1024))
    return net


def cpu_resnet50(fmt: str):
    def run(ctx: Ctx) -> None:
        import torchvision

        from torch_bam.fold import fold_bam

        mf = CL if fmt == "channels_last" else torch.contiguous_format
        b, size = (2, 64) if ctx.dry else (8, 224)
        torch.manual_seed(0)
        x = torch.randn(b, 3, size, size).contiguous(memory_format=mf)
        labels = torch.randint(0, 1000, (b,))
        ours = _tv_bam_resnet50()
        models = {
            "resnet50": torchvision.models.resnet50(weights=None),
            "bam_resnet50": ours,
            "bam_resnet50 (seed blocks)": _seed_blocks(copy.deepcopy(ours)),
            "floor": bam_floor(ours),
            "null": torchvision.models.resnet50(weights=None),
        }
        models = {k: m.to(memory_format=mf) for k, m in models.items()}
        # The deployment recipe: BAM's BNs folded, the gate written in place (ResNet-50's own
        # BNs are left alone in every model, so the ratio is BAM's cost).
        fast = fold_bam(copy.deepcopy(ours).eval())
        for m in fast.modules():
            if isinstance(m, BAM):
                m.inplace = True
        extra = {"bam_resnet50 folded + in place": _infer(fast, x)}
        goals = {("bam_resnet50", "train step"): 1.05, ("bam_resnet50", "inference"): 1.05,
                 ("bam_resnet50 folded + in place", "inference"): 1.05}  # fmt: skip
        _compare(ctx, f"BAM-ResNet-50 against ResNet-50 on CPU (torchvision), B={b}, {size}x{size}, {fmt}",
                 models, x, labels, goals, 20, extra_infer=extra)  # fmt: skip

    return run


# ------------------------------------------------------------------------------------- CUDA
def _cuda_inputs(ctx: Ctx, classes=1000):
    b, size = (2, 32) if ctx.dry else (64, 224)
    device = ctx.tensor_device
    x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=CL)
    return x, torch.randint(0, classes, (b,), device=device)


def _cuda_net(ctx: Ctx, name: str) -> nn.Module:
    return create_model(name).to(ctx.tensor_device).to(memory_format=CL)


def cuda_networks_eager(ctx: Ctx) -> None:
    from benchmarks.block import cuda_path

    x, labels = _cuda_inputs(ctx)
    device = ctx.tensor_device

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16)

    with cuda_path(ctx):
        bam = _cuda_net(ctx, "bam_resnet50")
        models = {
            "resnet50": _cuda_net(ctx, "resnet50"),
            "bam_resnet50": bam,
            "floor": bam_floor(bam),
        }
        peaks = {}
        if device == "cuda":
            for k, m in models.items():
                step = _step(m.train(), x, labels, autocast)
                step()
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                step()
                torch.cuda.synchronize()
                peaks[k] = torch.cuda.max_memory_allocated() / 2**20
                del step
                ctx.free()
        goals = {("bam_resnet50", "train step"): 1.05, ("bam_resnet50", "inference"): 1.05}
        _compare(ctx, f"BAM-ResNet-50 against ResNet-50 on CUDA, eager, B={x.shape[0]}, {x.shape[2]}x{x.shape[3]}, bf16 autocast, channels_last",
                 models, x, labels, goals, 20, autocast=autocast,
                 notes=[f"peak training memory, MiB: {', '.join(f'{k} {v:.0f}' for k, v in peaks.items())}" if peaks else "peak memory: not on CUDA"])  # fmt: skip
    target = "CUDA BAM-ResNet-50 / ResNet-50, peak training memory"
    if peaks:
        r = peaks["bam_resnet50"] / peaks["resnet50"]
        ctx.report.verdict(target, r, "<= 1.05", r <= 1.05)
    else:
        ctx.report.verdict(target, "not on CUDA (dry run)", "<= 1.05", None)


def cuda_networks_compiled(ctx: Ctx) -> None:
    from benchmarks.block import cuda_path

    target = "CUDA BAM-ResNet-50 / ResNet-50, training step, both compiled"
    if ctx.dry:  # compiling two ResNet-50s under the interpreter takes too long for a dry run
        ctx.report.verdict(target, "skipped (dry run)", "<= 1.05", None)
        return
    x, labels = _cuda_inputs(ctx)

    def autocast():
        return torch.autocast(ctx.tensor_device, dtype=torch.bfloat16)

    with cuda_path(ctx):
        bam = _cuda_net(ctx, "bam_resnet50")
        models = {"resnet50": _cuda_net(ctx, "resnet50"), "bam_resnet50": bam}
        if ctx.time_left() > 360:  # a third compile (about a minute) only when it fits
            models["bam_resnet50 (seed blocks)"] = _seed_blocks(copy.deepcopy(bam)).to(
                memory_format=CL
            )
        compiled = {k: torch.compile(m) for k, m in models.items()}
        _compare(ctx, f"BAM-ResNet-50 against ResNet-50 on CUDA, compiled (default mode), B={x.shape[0]}, bf16 autocast, channels_last",
                 compiled, x, labels, {("bam_resnet50", "train step"): 1.05}, 10,
                 modes=("train step",), autocast=autocast)  # fmt: skip
    torch._dynamo.reset()


def rows(device: str, dry: bool) -> list[Row]:
    if device == "cpu":
        return [
            Row("network", "bam_small_cnn vs small_cnn, CPU", cpu_small_cnn, est_s=300, order=20),
            Row("network", "bam_resnet18 vs resnet18, CPU", cpu_resnet18, est_s=200, order=21),
            Row(
                "network",
                "BAM-ResNet-50 vs ResNet-50, NCHW, CPU",
                cpu_resnet50("NCHW"),
                est_s=900,
                order=50,
            ),
            Row(
                "network",
                "BAM-ResNet-50 vs ResNet-50, channels_last, CPU",
                cpu_resnet50("channels_last"),
                est_s=900,
                order=51,
            ),
        ]
    return [
        Row("network", "BAM-ResNet-50 vs ResNet-50, eager", cuda_networks_eager, est_s=60, order=10,
            targets=["CUDA BAM-ResNet-50 / ResNet-50, eager: train step, inference, peak memory"]),
        Row("network", "BAM-ResNet-50 vs ResNet-50, compiled", cuda_networks_compiled, est_s=240, order=20,
            targets=["CUDA BAM-ResNet-50 / ResNet-50, training step, both compiled"]),
    ]  # fmt: skip
