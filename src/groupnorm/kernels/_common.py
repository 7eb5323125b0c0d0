"""What every kernel shares: the activations, the memory formats, and the statistics' dtype."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "memory_format_of", "stat_dtype"]

# The activations a fused kernel can apply after the affine, by name.
ACTIVATIONS = ("identity", "relu", "silu")


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory format x is laid out in: channels_last(_3d) when x is only that, else contiguous."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the saved mean and rstd: float64 for float64 x, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
