"""What the memory-saving path's check on weights changed in place costs, per call.

Run from the repository root:  PYTHONPATH=src python benchmarks/studies/saved_weights_check.py

``torch_bam.cpu.block`` saves the block's parameters with ``ctx.save_for_backward`` (they
are the module's own tensors: no copy) so that autograd's version check raises if one is
changed in place between forward and backward. This times the same autograd.Function forward
and backward saving the six tensors it needs, and saving those plus a BAM(256)'s parameters,
in alternating turns. Prints the medians; writes nothing. Not a test.
"""

from __future__ import annotations

import statistics
import time

import torch

from torch_bam import BAM


class _Saves(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, n_params, *tensors):
        ctx.save_for_backward(*tensors[: 6 + n_params])
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.saved_tensors  # unpacking is where autograd checks the versions  # noqa: B018
        return (grad, None) + (None,) * (len(ctx.needs_input_grad) - 2)


def main(turns: int = 40, calls: int = 500) -> None:
    torch.set_num_threads(1)
    params = list(BAM(256).parameters())
    x = torch.randn(2, 2, requires_grad=True)
    six = [torch.randn(2) for _ in range(6)]
    times: dict[int, list[float]] = {0: [], len(params): []}
    for _ in range(turns):
        for n in times:
            start = time.perf_counter()
            for _ in range(calls):
                _Saves.apply(x, n, *six, *params).sum().backward()
            times[n].append((time.perf_counter() - start) / calls * 1e6)
    base, checked = (statistics.median(v) for v in times.values())
    # Paired by turn: the load of a shared machine moves both timings of a turn together.
    diffs = sorted(b - a for a, b in zip(*times.values(), strict=True))
    quart = diffs[len(diffs) // 4], diffs[3 * len(diffs) // 4]
    print(f"forward+backward, saving 6 tensors: {base:.1f} us (median of {turns} turns)")
    print(f"... and the {len(params)} parameters too: {checked:.1f} us")
    print(
        f"difference per call, paired by turn: median {statistics.median(diffs):+.1f} us, "
        f"quartiles {quart[0]:+.1f} / {quart[1]:+.1f} us"
    )


if __name__ == "__main__":
    main()
