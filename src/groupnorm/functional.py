"""The normalization functions every other part of groupnorm uses.

All take x of shape (N, C, *) with any number of trailing (spatial or temporal) dims, keep
x's memory format (contiguous, channels_last, channels_last_3d) and dtype, and accumulate
statistics in float32 (float64 for float64 input). Bad arguments raise ValueError or
TypeError naming the argument, what was expected and what was given.

Dispatch: where torch's native kernel is both fast and accurate it is used; where it is
not, a correct path is taken instead (see :func:`group_norm`). GroupNorm fused with an
activation (:func:`group_norm_act`) runs groupnorm's own kernels (groupnorm.kernels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from groupnorm import kernels
from groupnorm.kernels import ACTIVATIONS
from groupnorm.kernels import memory_format_of as memory_format_of

__all__ = [
    "batch_norm",
    "batch_renorm",
    "evo_norm_s0",
    "filter_response_norm",
    "group_norm",
    "group_norm_act",
    "instance_norm",
    "layer_norm",
    "memory_format_of",
    "weight_standardize",
]

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_aten = torch.ops.aten

# Above this (mean / std)^2 of any group, torch's CPU GroupNorm, which takes the variance as
# E[x^2] - E[x]^2 in float32 in channels-last layouts (and for small groups in contiguous ones:
# a group of 2 values at 16 +- 0.1 comes out 0.15% off), loses more than ~1e-5 of relative
# accuracy (measured: error ~ 6e-7 * kappa); such inputs are shifted by their group means first.
_ILL_CONDITIONED = 16.0
# Memory formats in which CPU float32 / bfloat16 group_norm runs groupnorm.kernels instead of
# torch's kernel: channels-last, where torch's kernel is inaccurate (and ours as fast or faster).
_CPU_KERNEL_FORMATS = (torch.channels_last, torch.channels_last_3d)
# In eager NCHW, ours runs too from this many positions per channel up: 1.1-1.4x faster than torch's
# kernel with its conditioning check (forward) and 1.0-1.3x (forward+backward) from 14x14 maps up; on 7x7
# maps its backward is 0.83-0.94x of torch's, whose kernel keeps them (docs/kernels.md).
_NCHW_KERNEL_MIN_POSITIONS = 64


# ---------------------------------------------------------------------------------------
# argument checks


def _check_input(fn: str, x: object, min_dim: int = 2) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor of shape (N, C, *); got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: x must have a floating dtype (float64, float32, bfloat16 or float16); got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{fn}: x must have at least {min_dim} dims (N, C, *); got shape {tuple(x.shape)}")
    return x


def _check_param(fn: str, name: str, p: Tensor | None, num_channels: int, x: Tensor) -> Tensor | None:
    """A per-channel parameter: None, or a floating tensor of shape (C,) on x's device."""
    if p is None:
        return None
    if not isinstance(p, Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor of shape ({num_channels},) or None; got {type(p).__name__}")
    if p.shape != (num_channels,):
        raise ValueError(
            f"{fn}: {name} must have shape ({num_channels},) (one value per channel of x); got {tuple(p.shape)}"
        )
    if p.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must have a floating dtype; got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"{fn}: {name} must be on x's device {x.device}; got {p.device}")
    # Native kernels take parameters in x's dtype, or float32 beside half-precision x.
    if p.dtype != x.dtype and not (p.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
        p = p.to(x.dtype)
    return p


def _check_groups(fn: str, num_groups: object, num_channels: int) -> int:
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"{fn}: num_groups must be an int; got {type(num_groups).__name__} {num_groups!r}")
    if num_groups <= 0:
        raise ValueError(f"{fn}: num_groups must be a positive int; got {num_groups}")
    if num_channels % num_groups != 0:
        raise ValueError(
            f"{fn}: num_groups must divide the number of channels of x (C={num_channels}); got num_groups={num_groups}"
        )
    return num_groups


def _check_eps(fn: str, eps: float) -> float:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"{fn}: eps must be a float >= 0; got {eps!r}")
    return float(eps)


def _check_act(fn: str, act: object) -> str:
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"{fn}: act must be one of {', '.join(map(repr, ACTIVATIONS))}; got {act!r}")
    return act


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


# ---------------------------------------------------------------------------------------
# traced code: torch.compile, torch.export, the ONNX exporters, torch.func


def _traced() -> bool:
    """True while torch.compile / torch.export (and the ONNX exporters), torch.jit or torch.func trace us.

    Traced code takes no data-dependent branch and calls none of our CPU kernels directly (their
    operators have no fake implementation, and a graph holding them would run nowhere else); it
    runs torch's composite ops, or the registered op ``groupnorm::group_norm_act`` under torch.compile.
    """
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()  # vmap, grad, jacrev, ...
    )


def _exporting() -> bool:
    """True where the graph must be portable aten ops (torch.export, ONNX, torch.jit, torch.func)."""
    return _traced() and not (torch.compiler.is_compiling() and not torch.compiler.is_exporting())


def _group_norm_composite(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float, act: str = "identity"
) -> Tensor:
    """act(GN(x)) by torch.nn.functional.group_norm: what traced code runs.

    Exporters translate it (ONNX: Reshape, InstanceNormalization, Reshape, Mul, Add, as for
    torch.nn.GroupNorm), inductor decomposes it with a two-pass variance, and torch.func has
    batching rules for it. Half-precision x is computed in float32.
    """
    # torch.func cannot ask for memory formats (and torch.jit has none): the output is then contiguous.
    layout = not (torch.jit.is_tracing() or torch._C._are_functorch_transforms_active())
    fmt = memory_format_of(x) if layout else torch.contiguous_format
    acc = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    y = torch.nn.functional.group_norm(x.contiguous().to(acc), groups, w, b, eps)
    if act == "relu":
        y = y.clamp_min(0)  # its backward needs the input, not the output: callers may add into y in place
    elif act == "silu":
        y = torch.nn.functional.silu(y)
    y = y.to(x.dtype)
    return y.contiguous(memory_format=fmt) if layout else y


def _empty_like_connected(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """An empty output that keeps autograd: x * weight + bias over no values (zero gradients, as torch)."""
    shape = _channel_shape(x)
    y = x.clone() if weight is None else x * weight.view(shape).to(x.dtype)
    return y if bias is None else y + bias.view(shape).to(x.dtype)


# ---------------------------------------------------------------------------------------
# group norm and its two ends


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group Normalization (Wu & He, 2018).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    with mean and biased variance over each sample's group of C/G contiguous channels and all
    trailing positions, and a per-channel gamma (``weight``) and beta (``bias``).

    Args:
        x: (N, C, *) floating tensor, any memory format.
        num_groups: G, a positive divisor of C. G=1 is LayerNorm, G=C InstanceNorm.
        weight, bias: (C,) or None.
        eps: added to the variance.

    Returns:
        A tensor like x (shape, dtype, memory format). Statistics are accumulated in
        float32 (float64 for float64 x), so float16 inputs whose squares overflow float16
        give correct outputs.

    Dispatch: torch's native kernel runs, except on the CPU in channels-last layouts, where it
    takes the variance as E[x^2] - E[x]^2, which cancels catastrophically when a group's mean
    is large against its spread (x = 1e4 + N(0, 1) gives errors of order 100), and in NCHW
    layouts with at least 64 positions per channel. There float32 and bfloat16 inputs go to
    groupnorm's own kernel (groupnorm.kernels, the identity case of :func:`group_norm_act`),
    accurate and faster (docs/kernels.md); other dtypes, smaller NCHW maps, or a CPU
    where that kernel cannot be built, get torch's kernel with a check: the mean and std it
    returns flag ill-conditioned groups, and the input is shifted by its group means (GN is
    invariant to such shifts) before a second native pass. The same check guards torch's
    contiguous CPU kernel, which cancels the same way on small groups. torch.export, the
    ONNX exporters and torch.func see torch.nn.functional.group_norm instead (standard ops,
    no data-dependent branch); torch.compile sees the op ``groupnorm::group_norm_act`` in
    channels-last layouts (chosen by layout and dtype alone, so dynamic shapes add no guard) and
    torch's group_norm elsewhere (inductor's two-pass variance does not cancel).
    """
    fn = "group_norm"
    _check_input(fn, x)
    n, c = x.shape[:2]
    groups = _check_groups(fn, num_groups, c)
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    eps = _check_eps(fn, eps)
    numel = x.numel()
    if numel == 0:
        return _empty_like_connected(x, weight, bias)
    if _traced():
        if _exporting():  # standard ops, no data-dependent branch (torch.func cannot ask for memory formats)
            return _group_norm_composite(x, groups, weight, bias, eps)
        # torch.compile: the eager dispatch, decided by layout and dtype alone
        if memory_format_of(x) in _CPU_KERNEL_FORMATS and kernels.cpu.supports(x):  # the op loads the kernels
            return kernels.group_norm_act(x, weight, bias, groups, eps, "identity")[0]
        return _group_norm_composite(x, groups, weight, bias, eps)
    fmt = memory_format_of(x)
    spatial = numel // (n * c)
    ours = fmt in _CPU_KERNEL_FORMATS or spatial >= _NCHW_KERNEL_MIN_POSITIONS
    if ours and kernels.cpu.supports(x) and kernels.cpu.available():  # not traced: straight to the operator
        return kernels.cpu.group_norm_act(x, weight, bias, groups, eps, "identity")[0]

    if x.device.type != "cpu":  # torch's GPU kernels take contiguous inputs only (as F.group_norm does)
        x = x.contiguous()
    y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, spatial, groups, eps)
    if x.device.type == "cpu":
        kappa = (mean * rstd).square().amax()
        if kappa > _ILL_CONDITIONED:  # inf flags too; NaN does not and propagates
            shift = mean.detach().to(x.dtype).repeat_interleave(c // groups, dim=1)
            shifted = x - shift.view((n, c) + (1,) * (x.dim() - 2))
            y, _, _ = torch.native_group_norm(shifted, weight, bias, n, c, spatial, groups, eps)
    if memory_format_of(y) is not fmt:
        y = y.contiguous(memory_format=fmt)
    return y


def group_norm_act(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    act: str = "silu",
) -> Tensor:
    r"""Group Normalization followed by an activation, in one fused kernel.

    .. math::
        y = \mathrm{act}\left(\frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
            \cdot \gamma + \beta\right),
        \qquad \mathrm{act} \in \{\mathrm{identity}, \mathrm{ReLU}, \mathrm{SiLU}\}

    Equal to ``act(group_norm(x, num_groups, weight, bias, eps))`` (statistics as in
    :func:`group_norm`), but one pass over memory instead of two, and for the backward it
    keeps only x and the per-(sample, group) mean and 1/std: the normalised input is
    recomputed, so a GN + activation block holds one activation tensor instead of two.

    Runs groupnorm.kernels: C++ on the CPU (float32, bfloat16), Triton on CUDA (float32,
    bfloat16, float16), torch's operators elsewhere (with one warning). A registered
    torch.library op under torch.compile (which keeps the fused kernels and the lean backward);
    torch.export, the ONNX exporters and torch.func see torch's group_norm and the
    activation instead, so exported graphs hold standard ops only. Higher derivatives
    (``create_graph=True``) are supported through a recomputation with torch's operators.

    Args:
        x: (N, C, *) floating tensor, any memory format.
        num_groups: G, a positive divisor of C.
        weight, bias: (C,) or None.
        eps: added to the variance.
        act: ``"identity"``, ``"relu"`` or ``"silu"``.

    Returns:
        A tensor like x (shape, dtype, memory format).

    Examples::

        >>> x = torch.randn(2, 64, 8, 8).to(memory_format=torch.channels_last)
        >>> w, b = torch.ones(64), torch.zeros(64)
        >>> y = group_norm_act(x, 32, w, b, act="silu")
        >>> torch.allclose(y, torch.nn.functional.silu(group_norm(x, 32, w, b)), atol=1e-5)
        True
    """
    fn = "group_norm_act"
    _check_input(fn, x)
    c = x.shape[1]
    groups = _check_groups(fn, num_groups, c)
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    eps = _check_eps(fn, eps)
    act = _check_act(fn, act)
    if _exporting():  # portable aten ops; torch.compile alone keeps the fused op
        return _group_norm_composite(x, groups, weight, bias, eps, act)
    return kernels.group_norm_act(x, weight, bias, groups, eps, act)[0]


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm for conv features: statistics over (C, *) of each sample, per-channel affine.

    Equal to ``group_norm(x, 1, weight, bias, eps)`` (not torch's F.layer_norm, whose
    affine covers every normalised element).
    """
    _check_input("layer_norm", x)
    return group_norm(x, 1, weight, bias, eps)


def instance_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """InstanceNorm: statistics over (*) of each sample and channel, per-channel affine.

    Equal to ``group_norm(x, C, weight, bias, eps)``; no running statistics (the paper's IN).
    """
    _check_input("instance_norm", x)
    return group_norm(x, max(x.shape[1], 1), weight, bias, eps)


# ---------------------------------------------------------------------------------------
# batch norm with per-device statistics


def _per_device_view(x: Tensor, devices: int) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    """x as (devices, C, values per device, 1), the layout in which per-device BN is GroupNorm with one
    channel per group, and the map of such a tensor back to x's shape; where that is a view of x (x
    channels-last, or one sample per device) and the CPU kernels take x. Else None."""
    if x.dim() < 3 or x.device.type != "cpu" or kernels.backend_for(x) != "cpu":
        return None
    n, c = x.shape[:2]
    if memory_format_of(x) in _CPU_KERNEL_FORMATS:  # (N, *S, C) in memory: blocks of N/devices samples
        last = x.permute(0, *range(2, x.dim()), 1)
        order = (0, x.dim() - 1, *range(1, x.dim() - 1))
        return last.reshape(devices, -1, c).permute(0, 2, 1).unsqueeze(-1), (
            lambda y: y.squeeze(-1).permute(0, 2, 1).reshape(last.shape).permute(order)
        )
    if devices == n and x.is_contiguous():  # one sample per device: per-sample, per-channel statistics
        return x.reshape(n, c, -1, 1), (lambda y: y.reshape(x.shape))
    return None


class _PerDeviceBatchNorm(torch.autograd.Function):
    """Training-mode BN with statistics over each of ``devices`` contiguous blocks of the batch.

    Each block goes through torch's native kernel writing straight into its slice of the
    output (and of the input gradient), so the cost stays close to one native call.
    Returns (y, mean, invstd) with mean and invstd of shape (devices, C).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, devices: int, eps: float):
        fmt = memory_format_of(x)
        x = x.contiguous(memory_format=fmt)  # batch slices of x and y are then contiguous
        y = torch.empty_like(x, memory_format=fmt)
        stat_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        c = x.shape[1]
        mean = x.new_empty((devices, c), dtype=stat_dtype)
        invstd = x.new_empty((devices, c), dtype=stat_dtype)
        for d, (xd, yd) in enumerate(zip(x.chunk(devices), y.chunk(devices), strict=True)):
            _aten.native_batch_norm.out(
                xd, weight, bias, None, None, True, 0.0, eps, out=yd, save_mean=mean[d], save_invstd=invstd[d]
            )
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.devices, ctx.eps, ctx.fmt = devices, eps, fmt
        ctx.mark_non_differentiable(mean, invstd)
        return y, mean, invstd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, _grad_mean: Tensor, _grad_invstd: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        devices, c = ctx.devices, x.shape[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_y = grad_y.contiguous(memory_format=ctx.fmt)
        grad_x = torch.empty_like(x, memory_format=ctx.fmt)
        # The out= variant wants every output; grad_w is a by-product of grad_x anyway.
        w = weight if weight is not None else torch.ones(c, dtype=mean.dtype, device=x.device)
        grad_w = x.new_empty((devices, c), dtype=w.dtype)
        grad_b = x.new_empty((devices, c), dtype=w.dtype)
        for d, (gyd, xd, gxd) in enumerate(
            zip(grad_y.chunk(devices), x.chunk(devices), grad_x.chunk(devices), strict=True)
        ):
            _aten.native_batch_norm_backward.out(
                gyd, xd, w, None, None, mean[d], invstd[d], True, ctx.eps, [True, True, True],
                out0=gxd, out1=grad_w[d], out2=grad_b[d],
            )  # fmt: skip
        return (
            grad_x if need_x else None,
            grad_w.sum(0) if need_w else None,
            grad_b.sum(0) if need_b else None,
            None,
            None,
        )


class _SyncBatchNorm(torch.autograd.Function):
    """Training-mode BN with statistics over the batches of all processes in ``group``.

    Works with any backend (gloo on CPU, NCCL on GPU): per-channel sums are all-reduced in
    the forward (mean first, then the centred second moment) and in the backward.
    Returns (y, mean, invstd, count) with the global statistics.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, group):
        dims = [0, *range(2, x.dim())]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xa = x.to(acc)
        count_and_sum = torch.cat([xa.new_full((1,), x.numel() // x.shape[1]), xa.sum(dims)])
        dist.all_reduce(count_and_sum, group=group)
        count, mean = count_and_sum[0], count_and_sum[1:] / count_and_sum[0]
        centred = xa - mean.view(_channel_shape(x))
        sq = centred.square().sum(dims)
        dist.all_reduce(sq, group=group)
        invstd = torch.rsqrt(sq / count + eps)
        x_hat = centred * invstd.view(_channel_shape(x))
        y = x_hat
        if weight is not None:
            y = y * weight.to(acc).view(_channel_shape(x))
        if bias is not None:
            y = y + bias.to(acc).view(_channel_shape(x))
        ctx.save_for_backward(x_hat, weight, invstd, count)
        ctx.group = group
        ctx.mark_non_differentiable(mean, invstd, count)
        return y.to(x.dtype).contiguous(memory_format=memory_format_of(x)), mean, invstd, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, *_unused: Tensor):
        x_hat, weight, invstd, count = ctx.saved_tensors
        dims = [0, *range(2, x_hat.dim())]
        gy = grad_y.to(x_hat.dtype)
        sum_dy = gy.sum(dims)
        sum_dy_xhat = (gy * x_hat).sum(dims)
        local = torch.cat([sum_dy, sum_dy_xhat])
        grad_w = sum_dy_xhat.clone() if weight is not None else None
        grad_b = sum_dy.clone()
        dist.all_reduce(local, group=ctx.group)
        mean_dy, mean_dy_xhat = (local / count).chunk(2)
        scale = invstd if weight is None else invstd * weight.to(x_hat.dtype)
        shape = _channel_shape(x_hat)
        grad_x = scale.view(shape) * (gy - mean_dy.view(shape) - x_hat * mean_dy_xhat.view(shape))
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        return (
            grad_x.to(grad_y.dtype) if need_x else None,
            grad_w.to(weight.dtype) if need_w and weight is not None else None,
            grad_b.to(grad_y.dtype) if need_b else None,
            None,
            None,
        )


def _per_device_batch_norm_composite(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, devices: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Per-device BN from reductions, for traced code: (y, mean, var) with (devices, C) statistics.

    x viewed as (D, N/D, C, S); mean and biased variance over dims (1, 3);
    :math:`y = (x - \mu_{d,c}) / \sqrt{\sigma^2_{d,c} + \epsilon} \cdot \gamma_c + \beta_c`.
    """
    n, c = x.shape[:2]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xb = x.to(acc).reshape(devices, n // devices, c, -1)
    var, mean = torch.var_mean(xb, dim=(1, 3), correction=0, keepdim=True)
    y = (xb - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(acc).view(1, 1, c, 1)
    if bias is not None:
        y = y + bias.to(acc).view(1, 1, c, 1)
    y = y.reshape(x.shape).to(x.dtype)
    if not torch._C._are_functorch_transforms_active():  # torch.func cannot ask for memory formats
        y = y.contiguous(memory_format=memory_format_of(x))
    return y, mean.detach().view(devices, c), var.detach().view(devices, c)


def _update_running(running: Tensor | None, batch_stat: Tensor, momentum: float) -> None:
    if running is not None:
        running.mul_(1 - momentum).add_(batch_stat.to(running.dtype), alpha=momentum)


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    devices: int = 1,
    sync_group: object = None,
) -> Tensor:
    r"""Batch Normalization with the paper's per-device statistics.

    In training (or when no running statistics are given) the batch is split into
    ``devices`` equal, contiguous blocks, as if each lay on its own GPU, and each block is
    normalised over its own (N/devices, *) values per channel: BN at N/devices images per
    device, on one device. ``running_mean`` and ``running_var`` are updated in place like
    torch's BN, ``(1 - momentum) * running + momentum * stat`` with the unbiased variance,
    with the statistic averaged over the blocks. In evaluation the running statistics are
    used and ``devices`` does not matter.

    ``sync_group``: a torch.distributed process group (or ``"world"``) whose processes share
    statistics: SyncBN over the whole distributed batch. Ignored outside torch.distributed.

    Raises ValueError when N is not divisible by ``devices`` or a block has a single value
    per channel (its variance is undefined).
    """
    fn = "batch_norm"
    _check_input(fn, x)
    n, c = x.shape[:2]
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    eps = _check_eps(fn, eps)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"{fn}: devices must be a positive int; got {devices!r}")
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r is not None and r.shape != (c,):
            raise ValueError(f"{fn}: {name} must have shape ({c},); got {tuple(r.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fn}: give both running_mean and running_var or neither")
    use_batch_stats = training or running_mean is None
    if not use_batch_stats:
        return torch.batch_norm(x, weight, bias, running_mean, running_var, False, 0.0, eps, False)

    if n % devices != 0:
        raise ValueError(
            f"{fn}: the batch size N={n} of x must be divisible by devices={devices} "
            f"(one equal block of the batch per device)"
        )
    if x.numel() == 0:
        return _empty_like_connected(x, weight, bias)
    values_per_block = (n // devices) * math.prod(x.shape[2:])
    if values_per_block < 2:
        raise ValueError(
            f"{fn}: training needs more than 1 value per channel on each device; x has shape "
            f"{tuple(x.shape)} with devices={devices}, so each device sees {values_per_block}"
        )
    group = _resolve_group(sync_group)
    if group is not None:
        if devices != 1:
            raise ValueError(f"{fn}: sync_group takes statistics over all devices; devices must be 1, got {devices}")
        y, mean, invstd, count = _SyncBatchNorm.apply(x, weight, bias, eps, group)
        if running_mean is not None:
            with torch.no_grad():
                var = (invstd.double().pow(-2) - eps).clamp_min(0) * (count / (count - 1))
                _update_running(running_mean, mean, momentum)
                _update_running(running_var, var, momentum)
        return y
    kernel_view = None if devices == 1 or _traced() else _per_device_view(x, devices)
    if kernel_view is not None:  # per-device BN as GroupNorm with one channel per group: one kernel call
        view, back = kernel_view
        y, mean, invstd = kernels.group_norm_act(view, weight, bias, c, eps, "identity")
        y, var = back(y), invstd.double().pow(-2) - eps
    elif devices == 1:
        return torch.batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps, False)
    elif _traced():
        y, mean, var = _per_device_batch_norm_composite(x, weight, bias, devices, eps)
    else:
        y, mean, invstd = _PerDeviceBatchNorm.apply(x, weight, bias, devices, eps)
        var = invstd.double().pow(-2) - eps  # native kernels hand back 1/sqrt(var + eps)
    if running_mean is not None:
        with torch.no_grad():
            var = var.clamp_min(0) * (values_per_block / (values_per_block - 1))  # Bessel's correction
            _update_running(running_mean, mean.mean(0), momentum)
            _update_running(running_var, var.mean(0), momentum)
    return y


def _resolve_group(sync_group: object):
    """The process group to synchronise over, or None when there is nothing to sync with."""
    if sync_group is None or not dist.is_available() or not dist.is_initialized():
        return None
    group = dist.group.WORLD if sync_group == "world" else sync_group
    return group if dist.get_world_size(group) > 1 else None


# ---------------------------------------------------------------------------------------
# weight standardization


def weight_standardize(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Weight Standardization (Qiao et al. 2019): each output filter to zero mean, unit variance.

    ``(W[o] - mean(W[o])) / sqrt(var(W[o]) + eps)`` over in-channels and kernel positions,
    biased variance. Differentiable; W is typically a conv weight (O, I/groups, *kernel).
    """
    if not isinstance(weight, Tensor) or weight.dim() < 2 or weight.dtype not in _FLOAT_DTYPES:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight_standardize: weight must be a floating tensor with >= 2 dims; got {got}")
    flat = weight.reshape(weight.shape[0], -1)
    acc = flat if flat.dtype == torch.float64 else flat.float()
    var, mean = torch.var_mean(acc, dim=1, correction=0, keepdim=True)
    return ((acc - mean) * torch.rsqrt(var + eps)).to(weight.dtype).reshape(weight.shape)


# ---------------------------------------------------------------------------------------
# the family after GN: Batch Renorm, FRN + TLU, EvoNorm-S0


def batch_renorm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    r_max: float = 1.0,
    d_max: float = 0.0,
    devices: int = 1,
) -> Tensor:
    r"""Batch Renormalization (Ioffe, 2017) with per-device statistics.

    .. math::
        \hat x = \frac{x - \mu_B}{\sigma_B} \cdot r + d, \quad
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\left(\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\left(\frac{\mu_B - \mu}{\sigma}\right), \quad
        y = \gamma \hat x + \beta

    in training, with mu_B and sigma_B = sqrt(Var_B + eps) (biased) over each of ``devices``
    contiguous blocks of the batch (as :func:`batch_norm`), mu = ``running_mean``, sigma =
    sqrt(``running_var`` + eps), and r and d held constant in the backward. ``r_max=1,
    d_max=0`` is BN. The running statistics update as BN's (momentum, unbiased variance,
    averaged over the blocks); evaluation, or training without running statistics (r=1, d=0),
    is :func:`batch_norm`. Statistics in float32 (float64 for float64 x).
    """
    fn = "batch_renorm"
    _check_input(fn, x)
    if not (isinstance(r_max, (int, float)) and r_max >= 1):
        raise ValueError(f"{fn}: r_max must be a number >= 1; got {r_max!r}")
    if not (isinstance(d_max, (int, float)) and d_max >= 0):
        raise ValueError(f"{fn}: d_max must be a number >= 0; got {d_max!r}")
    if not training or running_mean is None or running_var is None:
        return batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, devices)
    n, c = x.shape[:2]
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    eps = _check_eps(fn, eps)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1 or n % devices:
        raise ValueError(f"{fn}: devices must be a positive int dividing the batch size N={n}; got {devices!r}")
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if r.shape != (c,):
            raise ValueError(f"{fn}: {name} must have shape ({c},); got {tuple(r.shape)}")
    values_per_block = (n // devices) * math.prod(x.shape[2:])
    if values_per_block < 2:
        raise ValueError(
            f"{fn}: training needs more than 1 value per channel on each device; x has shape "
            f"{tuple(x.shape)} with devices={devices}, so each device sees {values_per_block}"
        )
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    blocks = x.to(acc).unflatten(0, (devices, n // devices))  # (D, N/D, C, *): a view in any format
    dims = [1, *range(3, blocks.dim())]
    var_b, mu_b = torch.var_mean(blocks, dim=dims, correction=0)  # (D, C)
    sigma_b = torch.sqrt(var_b + eps)
    with torch.no_grad():
        sigma = torch.sqrt(running_var.to(acc) + eps)
        r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
        d = ((mu_b - running_mean.to(acc)) / sigma).clamp(-d_max, d_max)
    scale = r / sigma_b  # r and d are constants for autograd; mu_B and sigma_B are not
    shift = d - mu_b * scale
    if weight is not None:
        scale = scale * weight.to(acc)
        shift = shift * weight.to(acc)
    if bias is not None:
        shift = shift + bias.to(acc)
    shape = (devices, 1, c) + (1,) * (x.dim() - 2)
    y = (blocks * scale.view(shape) + shift.view(shape)).flatten(0, 1)
    with torch.no_grad():
        _update_running(running_mean, mu_b.mean(0), momentum)
        _update_running(running_var, (var_b * (values_per_block / (values_per_block - 1))).mean(0), momentum)
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    tau: Tensor | None = None,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    r"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, 2020).

    .. math::
        \nu^2 = \mathrm{E}_{\text{spatial}}[x^2], \qquad
        y = \max\left(\gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta,\ \tau\right)

    per sample and channel, over every trailing (spatial) position; no mean is subtracted.
    ``tau=None`` leaves out the TLU. ``eps`` may be a tensor (a learned eps, kept >= 0 by the
    caller). x must have at least one spatial dim: (N, C, L), (N, C, H, W) or (N, C, D, H, W).
    nu^2 is accumulated in float32 (float64 for float64 x).
    """
    fn = "filter_response_norm"
    _check_input(fn, x, min_dim=3)
    c = x.shape[1]
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    tau = _check_param(fn, "tau", tau, c, x)
    if not isinstance(eps, Tensor):
        eps = _check_eps(fn, eps)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.to(acc)
    nu2 = xa.square().mean(dim=tuple(range(2, x.dim())), keepdim=True)
    y = xa * torch.rsqrt(nu2 + eps)
    shape = _channel_shape(x)
    if weight is not None:
        y = y * weight.to(acc).view(shape)
    if bias is not None:
        y = y + bias.to(acc).view(shape)
    if tau is not None:
        y = torch.maximum(y, tau.to(acc).view(shape))
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))


def evo_norm_s0(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    v: Tensor | None = None,
    eps: float = 1e-5,
    *,
    act: bool = True,
) -> Tensor:
    r"""EvoNorm-S0 (Liu et al., 2020): a batch-independent norm-act.

    .. math::
        y = \frac{x \cdot \sigma(v x)}{\sqrt{\mathrm{Var}_{\text{group}}[x] + \epsilon}} \cdot \gamma + \beta

    with sigma the logistic sigmoid, v, gamma and beta per channel, and the biased variance
    per sample over each group of C/G contiguous channels and every trailing position (GN's
    sets), accumulated in float32 (float64 for float64 x). ``v=None`` is v = 1.

    ``act=False`` is its form without the activation, for a norm no activation follows (before a
    residual add): y = x / group_std(x) * gamma + beta (timm's EvoNorm2dS0a without act); v must be None.
    """
    fn = "evo_norm_s0"
    _check_input(fn, x)
    n, c = x.shape[:2]
    groups = _check_groups(fn, num_groups, c)
    weight = _check_param(fn, "weight", weight, c, x)
    bias = _check_param(fn, "bias", bias, c, x)
    v = _check_param(fn, "v", v, c, x)
    if not act and v is not None:
        raise ValueError(f"{fn}: v is the activation's parameter; pass v=None with act=False")
    eps = _check_eps(fn, eps)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.to(acc)
    grouped = xa.reshape(n, groups, -1)
    var = grouped.var(dim=2, correction=0, keepdim=True)
    std = torch.sqrt(var + eps).repeat_interleave(c // groups, dim=1).view((n, c) + (1,) * (x.dim() - 2))
    shape = _channel_shape(x)
    if act:
        y = xa * (torch.sigmoid(xa * v.to(acc).view(shape)) if v is not None else torch.sigmoid(xa)) / std
    else:
        y = xa / std
    if weight is not None:
        y = y * weight.to(acc).view(shape)
    if bias is not None:
        y = y + bias.to(acc).view(shape)
    return y.to(x.dtype).contiguous(memory_format=memory_format_of(x))
