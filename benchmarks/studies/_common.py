"""What the studies share: the benchmarks' timer (``benchmarks/_timer.py``), a results file
writer with the machine's facts, and the blocks and networks they time."""

# Tables and messages are long lines:
# ruff: noqa: E501

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _p in (str(ROOT / "src"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._report import commit, cpu_model, loadavg  # noqa: E402
from benchmarks._timer import measure  # noqa: E402
from tests.reference.seed_bam import BAM as SeedBAM  # noqa: E402
from torch_bam import BAM  # noqa: E402

__all__ = ["SHAPES", "bam_resnet50", "fwd_bwd", "interleaved", "loadavg", "pair", "write_results"]

SHAPES = [(32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14)]


def interleaved(fns: dict, reps: int) -> dict:
    """Minimum ms of each function over ``reps`` turns or more (``benchmarks._timer.measure``:
    in turns, each in a random order, at least 0.5 s of calls each, up to 50 turns). The
    minimum: these studies compare variants of one small piece, which other jobs only slow."""
    t = measure(fns, reps, min_s=0.5, max_turns=50)
    return {k: min(v) for k, v in t.ms.items()}


def pair(channels: int):
    """The seed's block and ours, with the same weights."""
    seed = SeedBAM(channels)
    ours = BAM(channels)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed, ours


def fwd_bwd(model, x, dy):
    return lambda: model(x).backward(dy)


def bam_resnet50(bam_cls):
    """torchvision's ResNet-50 with ``bam_cls(C)`` after layer1/2/3, as in the paper."""
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.layer1 = nn.Sequential(net.layer1, bam_cls(256))
    net.layer2 = nn.Sequential(net.layer2, bam_cls(512))
    net.layer3 = nn.Sequential(net.layer3, bam_cls(1024))
    return net


def write_results(out: Path, title: str, load_before: str, body: list, versions: str = ""):
    """Write a study's RESULTS_*.md: title, provenance, machine, versions, load, ``body``."""
    script = Path(sys.argv[0]).name
    text = [
        f"# {title}",
        "",
        f"Written by `benchmarks/studies/{script}` (do not edit by hand; rerun it).",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, torch.set_num_threads({torch.get_num_threads()})",
        f"- torch {torch.__version__}, python {platform.python_version()}{versions}; commit {commit()}",
        f"- load average before: {load_before}; after: {loadavg()}",
        *body,
    ]
    out.write_text("\n".join(text) + "\n")
    print(f"wrote {out}")
