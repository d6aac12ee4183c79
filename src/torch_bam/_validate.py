"""Argument checks shared by the modules: clear errors at the entry point, not deep in torch."""

from __future__ import annotations

import torch

COMBINE_MODES = ("sum", "max", "product")
ATTENTION_MODES = ("both", "channel", "spatial")
NORM_MODES = ("batch", "frozen")


def check_positive_int(name: str, value: object, owner: str) -> int:
    # bool is an int subclass; BAM(True) is a bug, not a channel count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{owner}: {name} must be a positive integer, got {value!r} "
            f"({type(value).__name__}). Pass an int such as {name}=16."
        )
    if value < 1:
        raise ValueError(
            f"{owner}: {name} must be a positive integer, got {value}. Use {name} >= 1."
        )
    return value


def check_hidden_width(channels: int, reduction_ratio: int, owner: str) -> int:
    hidden = channels // reduction_ratio
    if hidden < 1:
        raise ValueError(
            f"{owner}: channels // reduction_ratio = {channels} // {reduction_ratio} = 0, which "
            f"would build a zero-width bottleneck. Use reduction_ratio <= {channels} "
            f"(e.g. reduction_ratio={max(1, channels // 2)}) or put BAM where there are at least "
            f"{reduction_ratio} channels."
        )
    return hidden


def check_combine(combine: object, owner: str) -> str:
    if combine not in COMBINE_MODES:
        raise ValueError(
            f"{owner}: unknown combine={combine!r}. Use 'sum' (the paper: 1 + sigmoid(M_c + M_s)), "
            f"'max' (the paper's ablation: 1 + sigmoid(max(M_c, M_s))) or 'product' (the official "
            f"code: 1 + sigmoid(M_c * M_s))."
        )
    return combine  # type: ignore[return-value]


def check_factory_dtype(dtype: torch.dtype | None, owner: str) -> None:
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{owner}: dtype={dtype!r} is not a torch.dtype. Pass a torch dtype object, e.g. "
            f"dtype=torch.float32, not a string or a Python type."
        )
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(
            f"{owner}: dtype={dtype} is not a floating-point type; BAM's weights must be "
            f"floating point. Use dtype=torch.float32 (or float16, bfloat16, float64)."
        )


def check_norm(norm: object, owner: str) -> str:
    if norm not in NORM_MODES:
        raise ValueError(
            f"{owner}: unknown norm={norm!r}. Use 'batch' (the paper: BatchNorm in both gates) "
            f"or 'frozen' (fixed statistics, for a backbone with frozen BatchNorm, as detectors)."
        )
    return norm  # type: ignore[return-value]


def check_attention(attention: object, owner: str) -> str:
    if attention not in ATTENTION_MODES:
        raise ValueError(
            f"{owner}: unknown attention={attention!r}. Use 'both' (the paper's BAM), 'channel' "
            f"(only the channel gate M_c) or 'spatial' (only the spatial gate M_s)."
        )
    return attention  # type: ignore[return-value]
