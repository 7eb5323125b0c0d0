"""Fuse a model's existing GroupNorm + SiLU pairs (diffusion UNets, VAEs) into GroupNormAct.

    fused = fuse_group_norm_act(unet, sample, timestep)   # names of the fused norms

Which norms are followed by the activation is read from one example forward, not guessed from
module names: a ``nn.GroupNorm`` is fused when, in every call, its output goes straight into an
``nn.SiLU`` module and into nothing else (its only consumer in the autograd graph). The norm
becomes a :class:`FusedGroupNormSiLU` (GroupNorm + SiLU in one kernel, the same Parameters, so
the state_dict keys are unchanged) and that SiLU module a :class:`SiLUAfterFusedNorm`, which
passes the fused norm's output through and applies SiLU to anything else (diffusers shares one
SiLU module between the norms of a block and its time embedding). Under torch.compile and
torch.export the pair runs unfused (inductor fuses it), so fused models compile with fullgraph=True.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from groupnorm import functional as F
from groupnorm.nn.act import GroupNormAct

__all__ = ["FusedGroupNormSiLU", "SiLUAfterFusedNorm", "fuse_group_norm_act"]

_MARK = "_groupnorm_silu_applied"  # set on the output tensor of a FusedGroupNormSiLU


class FusedGroupNormSiLU(GroupNormAct):
    """GroupNormAct with SiLU that marks its output, so the model's next SiLU module passes it through.

    Under torch.compile / torch.export (which cannot mark tensors) it is GroupNorm alone and the
    SiLU module applies the activation: the graph of the unfused model, which inductor fuses itself.
    """

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        y = super().forward(x)
        setattr(y, _MARK, True)
        return y


class SiLUAfterFusedNorm(nn.SiLU):
    """nn.SiLU that leaves a FusedGroupNormSiLU's output as it is (SiLU is already applied)."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling() and getattr(x, _MARK, False):
            return x
        return super().forward(x)


def _tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor in a model output: tensors, tuples, lists, dicts and dataclasses of them."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))


def _consumers(outputs: list[Tensor]) -> Counter:
    """How many edges of the autograd graph behind ``outputs`` lead into each node."""
    count: Counter = Counter()
    seen = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                count[nxt] += 1
                stack.append(nxt)
    return count


def _with_grad(obj: Any) -> Any:
    if isinstance(obj, Tensor) and obj.is_floating_point():
        return obj.detach().clone().requires_grad_()
    return obj


def _plan(model: nn.Module, args: tuple, kwargs: dict) -> tuple[list[str], set[int]]:
    """(names of the fusable norms, ids of the SiLU modules they feed) from one example forward."""
    norms = {name: m for name, m in model.named_modules() if type(m) in (nn.GroupNorm,)}
    silus = [m for m in model.modules() if type(m) is nn.SiLU]
    outputs: dict[str, list[tuple[Tensor, Any]]] = {name: [] for name in norms}  # (output, its grad_fn)
    fed: dict[int, tuple[str, int]] = {}  # id(norm output) -> (norm name, SiLU module id)
    direct: Counter = Counter()
    handles = []

    def norm_hook(name: str):
        def hook(_m, _inp, out):
            outputs[name].append((out, out.grad_fn))

        return hook

    def silu_hook(m, inp):
        x = inp[0]
        for name, calls in outputs.items():
            if calls and calls[-1][0] is x:
                direct[name] += 1
                fed[id(x)] = (name, id(m))

    try:
        for name, m in norms.items():
            handles.append(m.register_forward_hook(norm_hook(name)))
        for m in silus:
            handles.append(m.register_forward_pre_hook(silu_hook))
        with torch.enable_grad():
            out = model(*(_with_grad(a) for a in args), **{k: _with_grad(v) for k, v in kwargs.items()})
    finally:
        for h in handles:
            h.remove()
    consumers = _consumers(list(_tensors(out)))
    fusable, feeds = [], set()
    for name, calls in outputs.items():
        if not calls or direct[name] != len(calls):
            continue
        if all(fn is not None and consumers[fn] == 1 for _, fn in calls):
            fusable.append(name)
            feeds |= {silu for (n, silu) in fed.values() if n == name}
    return fusable, feeds


def _replace_everywhere(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child (a module may be shared by several parents)."""
    for parent in model.modules():
        for key, child in list(parent._modules.items()):
            if child is old:
                parent._modules[key] = new


@torch.no_grad()
def fuse_group_norm_act(model: nn.Module, *example_args: Any, **example_kwargs: Any) -> list[str]:
    """Fuse each ``nn.GroupNorm`` of ``model`` whose output goes only into an ``nn.SiLU``; return their names.

    ``example_args`` / ``example_kwargs``: one input of the model (any batch size), run once
    with autograd on to see where each norm's output goes. The model is changed in place; its
    Parameters are kept (optimizers keep working) and its state_dict keys do not change. Outputs
    equal the unfused model's up to float rounding (the fused kernel's statistics are float32).

    Examples::

        >>> unet = diffusers.UNet2DModel(sample_size=32, ...)
        >>> fuse_group_norm_act(unet, torch.randn(1, 3, 32, 32), torch.tensor([10]))
        ['down_blocks.0.resnets.0.norm1', 'down_blocks.0.resnets.0.norm2', ...]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_group_norm_act: model must be an nn.Module; got {type(model).__name__}")
    fusable, feeds = _plan(model, example_args, example_kwargs)
    modules = dict(model.named_modules())
    for name in fusable:
        old = modules[name]
        new = FusedGroupNormSiLU(old.num_groups, old.num_channels, old.eps, old.affine, act="silu")
        new.weight, new.bias = old.weight, old.bias  # the same Parameters (or None)
        _replace_everywhere(model, old, new)
    for silu in [m for m in model.modules() if id(m) in feeds and type(m) is nn.SiLU]:
        _replace_everywhere(model, silu, SiLUAfterFusedNorm())
    return fusable
