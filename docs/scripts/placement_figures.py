"""Draw where add_bam puts BAM in a network, as text: the figures of docs/adding-bam.md.

Run ``python docs/scripts/placement_figures.py`` to print them; tests/test_insert_docs.py
checks that the page shows exactly what this prints. Each figure comes from a real add_bam
run (torchvision networks with random weights on the meta device, a 224x224 input).
"""

from __future__ import annotations

import torch

from torch_bam import add_bam
from torch_bam.insert._stem import stage_start
from torch_bam.insert._trace import trace_calls

NETWORKS = ("resnet50", "mobilenet_v2", "convnext_tiny")


def figure(name: str, size: int = 224) -> str:
    """The network's main sequence of modules, each with its output, the stem marked, and a
    BAM arrow where add_bam put one."""
    import torchvision

    with torch.device("meta"):
        model = getattr(torchvision.models, name)()
    x = torch.randn(1, 3, size, size, device="meta")
    calls = trace_calls(model, x)
    first_stage = stage_start(model, calls)
    add_bam(model, x)
    bams = {p.path: p for p in model.bam_report}
    # The spine: the container the BAMs' modules sit in (the model itself for a ResNet).
    spine = bams and next(iter(bams)).rpartition(".")[0]
    rows = []
    for c in calls:
        parent, _, child = c.path.rpartition(".")
        if parent != spine or not child or c.output is None:
            continue
        ch, h, w = c.output.shape[1:]
        where = "stem" if c.end < first_stage else ""
        bam = f"<- BAM ({bams[c.path].bam_path})" if c.path in bams else ""
        rows.append(f"{c.path:<14} {where:<5} {ch:>5} x {h:>3}x{w:<3} {bam}".rstrip())
    head = f"torchvision {name}, {size}x{size} input: {len(bams)} BAMs"
    return "\n".join([head, *rows])


def main() -> None:
    for i, name in enumerate(NETWORKS):
        print(("\n" if i else "") + figure(name))


if __name__ == "__main__":
    main()
