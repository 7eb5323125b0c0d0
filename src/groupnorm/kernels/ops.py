"""GroupNorm + activation as torch.library custom ops, so torch.compile and torch.export see them.

Two ops, each with a fake (meta) implementation that gives shapes, dtypes and strides
without running anything:

    groupnorm::group_norm_act(x, weight, bias, num_groups, eps, act) -> (y, mean, rstd)
    groupnorm::group_norm_act_backward(dy, x, weight, bias, mean, rstd, num_groups, act)
        -> (dx, dweight, dbias)

The forward's autograd formula saves only x, the parameters and the (N, G) statistics: the
backward recomputes the normalised input and the activation's input from them, so a
GN + activation block keeps one activation-sized tensor (x) instead of two (x and GN(x)).

Each op picks its kernel by device and dtype: the CPU kernels (float32, bfloat16), the Triton
kernels on CUDA (float32, bfloat16, float16), and torch's native operators everywhere else
(silently for dtypes without a fast kernel; with a warning, once per reason, where a fast kernel
was expected but cannot run, e.g. a failed build).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from groupnorm.kernels import cpu, native
from groupnorm.kernels._common import memory_format_of, stat_dtype

__all__ = ["backend_for", "group_norm_act", "group_norm_act_backward_op", "group_norm_act_op"]

_warned: set[str] = set()
_triton = None  # the Triton module once imported, False where it cannot be


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"groupnorm: {message} (said once)", RuntimeWarning, stacklevel=4)


def _triton_module():
    global _triton
    if _triton is None:
        try:
            from groupnorm.kernels import triton_gn

            _triton = triton_gn
        except Exception as e:  # triton missing or broken: native kernels instead
            _triton = False
            _warn_once("triton-import", f"Triton kernels unavailable ({type(e).__name__}: {e}); using torch's")
    return _triton or None


def backend_for(x: Tensor) -> str:
    """Which implementation runs for x: ``"cpu"``, ``"triton"`` or ``"native"``."""
    if x.device.type == "cpu":
        if cpu.supports(x) and cpu.available():
            return "cpu"
        return "native"  # float16 / float64 (no fast CPU kernel): torch's kernels, silently and correctly
    if x.device.type == "cuda":
        tr = _triton_module()
        if tr is not None and tr.supports(x):
            return "triton"
        if tr is not None:
            _warn_once(
                f"cuda-{x.dtype}-{x.dtype in tr.DTYPES}",
                f"the Triton kernels do not take {x.dtype} of shape {tuple(x.shape)} (dtypes: float32, bfloat16, "
                "float16; at most 65535 blocks of positions per sample); using torch's native GroupNorm",
            )
        return "native"
    _warn_once(f"device-{x.device.type}", f"no fast kernel for {x.device.type}; using torch's native GroupNorm")
    return "native"


def _empty_like_fmt(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x))


def _forward_impl(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    if torch.jit.is_tracing():  # the tracer would record the kernel's output as a constant
        raise RuntimeError(
            "groupnorm: the fused GroupNorm kernels cannot be traced by torch.jit (e.g. torch.onnx.export "
            "with dynamo=False); call groupnorm.functional.group_norm_act, which traces torch's ops instead"
        )
    if x.numel() == 0:
        sd = stat_dtype(x)
        n = x.shape[0]
        return _empty_like_fmt(x), x.new_zeros((n, num_groups), dtype=sd), x.new_zeros((n, num_groups), dtype=sd)
    backend = backend_for(x)
    if backend == "cpu":
        return cpu.forward(x, weight, bias, num_groups, eps, act)
    if backend == "triton":
        return _triton_module().forward(x, weight, bias, num_groups, eps, act)
    return native.forward(x, weight, bias, num_groups, eps, act)


def _backward_impl(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    sd = stat_dtype(x)
    c = x.shape[1]
    if x.numel() == 0:
        return _empty_like_fmt(x), x.new_zeros((c,), dtype=sd), x.new_zeros((c,), dtype=sd)
    backend = backend_for(x)
    if backend == "cpu":
        dx, dw, db = cpu.backward(dy, x, weight, bias, mean, rstd, num_groups, act)
    elif backend == "triton":
        dx, dw, db = _triton_module().backward(dy, x, weight, bias, mean, rstd, num_groups, act)
    else:
        dx, dw, db = native.backward(dy, x, weight, bias, mean, rstd, num_groups, act)
    return dx, dw.to(sd), db.to(sd)


# infer_schema reads these annotations (strings here, from the __future__ import) for the schema.
@torch.library.custom_op("groupnorm::group_norm_act", mutates_args=())
def group_norm_act_op(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """act(GN(x)) and the per-(sample, group) mean and 1/std; arguments checked by the caller."""
    return _forward_impl(x, weight, bias, num_groups, eps, act)


@group_norm_act_op.register_fake
def _(x, weight, bias, num_groups, eps, act):
    sd = stat_dtype(x)
    n = x.shape[0]
    return _empty_like_fmt(x), x.new_empty((n, num_groups), dtype=sd), x.new_empty((n, num_groups), dtype=sd)


@torch.library.custom_op("groupnorm::group_norm_act_backward", mutates_args=())
def group_norm_act_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) from x and the saved statistics; dweight and dbias in the statistics' dtype."""
    return _backward_impl(dy, x, weight, bias, mean, rstd, num_groups, act)


@group_norm_act_backward_op.register_fake
def _(dy, x, weight, bias, mean, rstd, num_groups, act):
    sd = stat_dtype(x)
    c = x.shape[1]
    return _empty_like_fmt(x), x.new_empty((c,), dtype=sd), x.new_empty((c,), dtype=sd)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, num_groups, eps, act = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.act = num_groups, eps, act
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero tensors for the statistics' (unused) gradients


def _differentiable_backward(ctx, dy: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None):
    """The gradients as a graph of torch's operators, for create_graph=True (higher derivatives)."""
    inputs = [t for t, need in zip((x, weight, bias), ctx.needs_input_grad[:3], strict=True) if need]
    y = native.forward_differentiable(x, weight, bias, ctx.num_groups, ctx.eps, ctx.act)
    grads = iter(torch.autograd.grad(y, inputs, dy, create_graph=True))
    return (*tuple(next(grads) if need else None for need in ctx.needs_input_grad[:3]), None, None, None)


def _backward(ctx, dy: Tensor, _dmean: Tensor, _drstd: Tensor, backward_fn=group_norm_act_backward_op):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    if dy is None or not (need_x or need_w or need_b):
        return None, None, None, None, None, None
    if torch.is_grad_enabled():  # backward(create_graph=True): keep the gradients differentiable
        return _differentiable_backward(ctx, dy, x, weight, bias)
    dx, dw, db = backward_fn(dy, x, weight, bias, mean, rstd, ctx.num_groups, ctx.act)
    return (
        dx if need_x else None,
        dw.to(weight.dtype) if need_w and weight is not None else None,
        db.to(bias.dtype) if need_b and bias is not None else None,
        None,
        None,
        None,
    )


group_norm_act_op.register_autograd(_backward, setup_context=_setup_context)


class _GroupNormAct(torch.autograd.Function):
    """The op's forward and autograd formula without the dispatcher's overhead, for eager mode."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps, act):
        out = _forward_impl(x, weight, bias, num_groups, eps, act)
        _setup_context(ctx, (x, weight, bias, num_groups, eps, act), out)
        return out

    @staticmethod
    def backward(ctx, dy, dmean, drstd):
        return _backward(ctx, dy, dmean, drstd, backward_fn=_backward_impl)


def group_norm_act(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) of act(GN(x)), arguments checked by the caller.

    Under torch.compile or torch.export this is the registered op ``groupnorm::group_norm_act``;
    in eager mode the same kernels and autograd formula run through the CPU library's own
    operator (the formula in C++) or an autograd.Function, which save the dispatcher's tens of
    microseconds per call (they matter on a GPU, where the kernels themselves take a few).
    """
    if torch.compiler.is_compiling():
        return group_norm_act_op(x, weight, bias, num_groups, eps, act)
    if x.numel() and backend_for(x) == "cpu" and not torch.jit.is_tracing():
        return cpu.group_norm_act(x, weight, bias, num_groups, eps, act)  # the autograd formula in C++
    if not torch.is_grad_enabled() or not (
        x.requires_grad or (weight is not None and weight.requires_grad) or (bias is not None and bias.requires_grad)
    ):
        return _forward_impl(x, weight, bias, num_groups, eps, act)  # no graph to record: no Function's cost
    return _GroupNormAct.apply(x, weight, bias, num_groups, eps, act)
