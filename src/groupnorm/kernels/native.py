"""The same two functions as the fast kernels, from torch's own operators: the fallback.

Used where no fast kernel runs (float16 or float64 on the CPU, a GPU without Triton, other
devices, or a CPU where the kernels could not be built). Same contract as the kernels: the
forward returns (y, mean, rstd) and the backward needs only x and those statistics, so the
memory saving holds on this path too; it is slower (the backward recomputes the normalised
input with separate operators).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import Tensor

from groupnorm.kernels._common import memory_format_of, stat_dtype

__all__ = ["activation", "activation_backward", "backward", "forward", "forward_differentiable"]


def activation(z: Tensor, act: str) -> Tensor:
    """act(z), in place on z (a temporary)."""
    if act == "relu":
        return z.relu_()
    if act == "silu":
        return TF.silu(z, inplace=True)
    return z


def activation_backward(dy: Tensor, z: Tensor, act: str) -> Tensor:
    """dy * act'(z)."""
    if act == "relu":
        return dy * (z > 0)
    if act == "silu":
        s = torch.sigmoid(z)
        return dy * s * (1 + z * (1 - s))
    return dy


def _native_params(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor | None, ...]:
    """Parameters as torch's kernels take them: x's dtype, or float32 beside half-precision x.

    A half-precision x always gets a (float32) weight, so that torch's kernels keep the
    statistics in float32 (without one they would round them to x's dtype).
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        w = torch.ones(x.shape[1], device=x.device, dtype=torch.float32) if weight is None else weight.detach().float()
        return w, None if bias is None else bias.detach().float()
    return tuple(None if p is None else p.detach().to(x.dtype) for p in (weight, bias))


def forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """act(GN(x)) with torch.native_group_norm; mean and rstd (N, G) in float32 (float64 for float64 x).

    The input is made contiguous first: torch's CUDA kernel takes nothing else, and its
    channels-last CPU kernel takes the variance as E[x^2] - E[x]^2 and loses accuracy for large
    means (its contiguous one does not).
    """
    n, c = x.shape[:2]
    fmt = memory_format_of(x)
    xc = x.contiguous()
    w, b = _native_params(x, weight, bias)
    y, mean, rstd = torch.native_group_norm(xc, w, b, n, c, math.prod(x.shape[2:]), num_groups, eps)
    y = activation(y, act).contiguous(memory_format=fmt)
    sd = stat_dtype(x)
    return y, mean.reshape(n, num_groups).to(sd), rstd.reshape(n, num_groups).to(sd)


def backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) from x, mean and rstd; dweight and dbias in the statistics' dtype."""
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    fmt = memory_format_of(x)
    w, b = _native_params(x, weight, bias)
    pdtype = stat_dtype(x)
    shape = (1, c) + (1,) * (x.dim() - 2)
    if act == "identity":
        dz = dy
    else:  # recompute z = x_hat * w + b
        xg = x.reshape(n, num_groups, -1).to(pdtype)
        z = ((xg - mean[..., None]) * rstd[..., None]).reshape(x.shape)
        if w is not None:
            z = z * w.to(pdtype).reshape(shape)
        if b is not None:
            z = z + b.to(pdtype).reshape(shape)
        dz = activation_backward(dy.to(pdtype), z, act).to(x.dtype)
    sdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    dx, dw, db = torch.ops.aten.native_group_norm_backward(
        dz.contiguous(), x.contiguous(), mean.to(sdt), rstd.to(sdt), w, n, c, s, num_groups, [True, True, True]
    )
    if dw is None:  # no weight: the same sum, which native leaves out
        xhat = ((x.reshape(n, num_groups, -1).to(pdtype) - mean[..., None]) * rstd[..., None]).reshape(x.shape)
        dw = (dz.to(pdtype) * xhat).sum([0, *range(2, x.dim())])
    return dx.contiguous(memory_format=fmt), dw.to(pdtype), db.to(pdtype)


def forward_differentiable(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> Tensor:
    """act(GN(x)) through torch's autograd-aware functions, for gradients of gradients."""
    w = None if weight is None else weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    z = TF.group_norm(x.contiguous(), num_groups, w, b, eps)
    y = {"identity": z, "relu": TF.relu(z), "silu": TF.silu(z)}[act]
    return y.contiguous(memory_format=memory_format_of(x))
