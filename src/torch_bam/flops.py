"""Count a network's multiply-accumulates (the BAM paper's "GFLOPs") and parameters.

MACs are ``torch.utils.flop_counter.FlopCounterMode``'s FLOPs divided by 2: it counts a
multiply-add as two FLOPs, and only matrix products and convolutions (not BN, ReLU, pooling or
the sigmoid), which is the usual convention of the papers' tables. Run the model on the meta
device to count a large network at full size without computing anything.
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ._train_flags import evaluating

__all__ = ["count_macs", "count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on a batch of ``input_size``, in eval mode
    (each module gets its own train flag back afterwards).

    The input is made on the model's device, so a model built under ``torch.device("meta")``
    is counted without any arithmetic.
    """
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_size, device=device, dtype=p.dtype if p is not None else None))
    return counter.get_total_flops() // 2
