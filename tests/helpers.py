"""Shared test helpers: tolerances per dtype and non-trivial weights."""

import torch
from torch import nn

# One table of tolerances per dtype (rtol, atol), as in kornia's test base.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 3e-2),
}


def assert_close(actual, expected, dtype=None):
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN running statistic random, non-default values.

    Default init has BN weight 1, bias 0, mean 0, var 1, which would hide a BN in the wrong
    place in eval mode; random values expose it.
    """
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.add_(1.0)
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    return module


def bam_param_count(c: int, r: int = 16, num_dilated: int = 2, mlp_layers: int = 1) -> int:
    """Closed form from PAPER_NOTES.md, written out independently of the module."""
    h = c // r
    channel = c * h + h + 2 * h  # first Linear + BN1d
    channel += (mlp_layers - 1) * (h * h + h + 2 * h)  # further hidden layers
    channel += h * c + c  # final Linear
    spatial = c * h + h + 2 * h  # 1x1 reduce + BN
    spatial += num_dilated * (9 * h * h + h + 2 * h)  # dilated 3x3 + BN
    spatial += h + 1  # final 1x1
    return channel + spatial
