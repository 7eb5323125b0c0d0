"""Model surgery: swap the norms of any model, standardize its convs, zero-init the last gammas.

changes = convert_norms(model, "gn:32")            # every BN -> GN(32)
changes = convert_norms(model, "ws+gn:32")         # ... and every conv -> WS conv
zero_init_last_gamma(model)                        # the paper's recipe for residual blocks
set_devices(model, 8)                              # BN statistics per 8 virtual devices
set_renorm_limits(model, step, total_steps)        # Batch Renorm's r_max / d_max ramp, each step

The room's other modules: groupnorm.convert.check (does a model mix the samples of a batch, and where)
and groupnorm.convert.fuse (a model's GroupNorm + SiLU pairs into the fused layer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from groupnorm.nn.act import GroupNormAct
from groupnorm.nn.conv import WSConv2d, WSConv3d
from groupnorm.nn.norm import BatchNorm, FrozenBatchNorm, GroupNorm
from groupnorm.nn.renorm import BatchRenorm, renorm_limits
from groupnorm.nn.spec import NormSpec, OnIndivisible, make_norm, parse_norm_spec

__all__ = [
    "Replacement",
    "convert_norms",
    "is_batch_norm",
    "set_devices",
    "set_renorm_limits",
    "zero_init_last_gamma",
]

try:  # torchvision's BN*, used by its detection models
    from torchvision.ops.misc import FrozenBatchNorm2d as _TVFrozenBatchNorm2d

    _FROZEN_TYPES: tuple[type, ...] = (FrozenBatchNorm, _TVFrozenBatchNorm2d)
except ImportError:  # pragma: no cover - torchvision is a dependency
    _FROZEN_TYPES = (FrozenBatchNorm,)

_CONV_TO_WS: dict[type, type] = {nn.Conv2d: WSConv2d, nn.Conv3d: WSConv3d}


@dataclass(frozen=True)
class Replacement:
    """One module convert_norms replaced: its qualified name and both reprs."""

    name: str
    old: str
    new: str


def is_batch_norm(module: nn.Module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm, groupnorm's BatchNorm, and frozen BNs (torchvision's, ours)."""
    return isinstance(module, (_BatchNorm, *_FROZEN_TYPES))


def _device_dtype(module: nn.Module, fallback: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*module.parameters(), *module.buffers(), *fallback.parameters()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@torch.no_grad()
def _carry_state(old: nn.Module, new: nn.Module) -> None:
    """Copy gamma/beta (and running statistics between BN kinds) where their meaning is kept.

    Every norm of the family ends in the same per-channel affine after standardising, so
    gamma and beta carry over; running statistics mean the same only between BN kinds.
    """
    pairs = ["weight", "bias"]
    if is_batch_norm(new):
        pairs += ["running_mean", "running_var"]
    for name in pairs:
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.shape == dst.shape:
            dst.copy_(src)


def _norm_for(old: nn.Module, spec: NormSpec, name: str, **options) -> nn.Module:
    channels = getattr(old, "num_features", None) or old.weight.shape[0]  # torchvision's BN* lacks it
    try:
        new = make_norm(spec, channels, eps=old.eps, **options)
    except ValueError as e:
        raise ValueError(f"convert_norms: layer {name!r} ({old}): {e}") from None
    act = getattr(old, "act", None)  # timm's BatchNormAct2d carries its activation (and drop) inside
    if isinstance(act, nn.Module):
        drop = getattr(old, "drop", None)
        if isinstance(new, GroupNorm):  # a GN norm-act layer: act and drop keep their names, keys stay flat
            new = GroupNormAct(new.num_groups, channels, new.eps, new.affine, act=act, drop=drop)
        elif not isinstance(act, nn.Identity):
            new = nn.Sequential(new, drop or nn.Identity(), act)
    device, dtype = _device_dtype(old, new)
    new = new.to(device=device, dtype=dtype)
    _carry_state(old, new)
    return new


def _ws_conv(old: nn.Module) -> nn.Module:
    cls = _CONV_TO_WS[type(old)]
    new = cls(
        old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        device=old.weight.device, dtype=old.weight.dtype,
    )  # fmt: skip
    new.weight = old.weight  # the same Parameters: optimizers and ties keep working
    if old.bias is not None:
        new.bias = old.bias
    return new


def convert_norms(
    model: nn.Module,
    spec: str | NormSpec,
    *,
    ws: bool = False,
    devices: int = 1,
    on_indivisible: OnIndivisible = "error",
) -> list[Replacement]:
    """Replace every BN of ``model`` in place by the norm ``spec`` names; return what changed.

    Replaced: BatchNorm1d/2d/3d, SyncBatchNorm, groupnorm's BatchNorm and FrozenBatchNorm,
    torchvision's FrozenBatchNorm2d (subclasses too). timm's BatchNormAct2d (a BN holding its
    ``drop`` and ``act``) becomes a :class:`groupnorm.nn.GroupNormAct` with the same ``act`` and
    ``drop`` for gn, ln and in specs, so its state_dict keys stay flat (``weight``, ``bias``);
    for other specs, ``Sequential(norm, drop, act)``. Each new layer gets the old one's device,
    dtype and eps, and its gamma and beta (and running statistics, between BN kinds).

    Args:
        model: any nn.Module containing BNs (not itself a BN: wrap it first).
        spec: a norm spec (``"gn:32"``, ``"gn/16"``, ``"ln"``, ``"bn:frozen"``, ...); a ``ws+``
            prefix implies ``ws=True``. Specs with an activation (``gn:32+silu``) are rejected
            (ValueError): a model's norms are not all followed by that activation, and its own
            activations stay in place.
        ws: also swap every nn.Conv2d / nn.Conv3d for a weight-standardized one (same
            Parameters).
        devices: virtual devices for a ``bn`` spec.
        on_indivisible: ``"error"`` (default) raises, naming the layer, where C is not
            divisible by G (or K); ``"nearest"`` uses the divisor of C nearest to it.

    Returns:
        One :class:`Replacement` per replaced module, in module order.
    """
    parsed = parse_norm_spec(spec)
    if parsed.act:
        raise ValueError(
            f"convert_norms: spec must name a norm without an activation (e.g. {str(replace(parsed, act=''))!r}); "
            f"got {str(parsed)!r}. convert_norms swaps norms only: a fused '+{parsed.act}' would apply the "
            f"activation in every norm slot (also before residual adds) while the model's own activations "
            f"still follow. To fuse GN with the SiLU that follows it, use groupnorm.fuse_group_norm_act"
        )
    if parsed.norm_act:
        raise ValueError(
            f"convert_norms: spec {str(parsed)!r} is a norm-act layer (it replaces a norm and the activation after "
            "it), so swapping it into norm slots would change the architecture; build the model with it instead "
            "(groupnorm.models.build_model(..., norm=spec) places it where a norm precedes its activation)"
        )
    ws = ws or parsed.ws
    if is_batch_norm(model):
        raise TypeError(
            "convert_norms: model is itself a normalization layer; pass a container module "
            "(e.g. nn.Sequential(layer)) or build the layer with groupnorm.nn.make_norm"
        )
    # Plan every replacement first so a bad layer raises before anything is changed.
    plan: list[tuple[nn.Module, str, str, nn.Module]] = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if is_batch_norm(child):
                new = _norm_for(child, parsed, full, devices=devices, on_indivisible=on_indivisible)
            elif ws and type(child) in _CONV_TO_WS:
                new = _ws_conv(child)
            else:
                continue
            plan.append((module, child_name, full, new))
    changes = []
    for parent, child_name, full, new in plan:
        changes.append(Replacement(full, repr(getattr(parent, child_name)), repr(new)))
        setattr(parent, child_name, new)
    return changes


def set_devices(model: nn.Module, devices: int) -> int:
    """Set the virtual devices of every (non-sync) groupnorm BatchNorm in ``model``; return how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, BatchNorm) and not m.sync:
            m.devices = devices
            count += 1
    return count


def set_renorm_limits(model: nn.Module, step: int, total_steps: int, *, ramp_end: float = 0.25) -> int:
    """Set r_max and d_max of every BatchRenorm in ``model`` for ``step`` of a ``total_steps`` run.

    The paper's ramp (BN alone, then r_max 1 -> 3 and d_max 0 -> 5) scaled to the run, as
    :func:`groupnorm.nn.renorm_limits` gives it (r_max reaches 3 at ``ramp_end`` of the run).
    A training loop calls it before each step; returns how many layers it set.
    """
    r_max, d_max = renorm_limits(step, total_steps, ramp_end=ramp_end)
    count = 0
    for m in model.modules():
        if isinstance(m, BatchRenorm):
            m.r_max, m.d_max = r_max, d_max
            count += 1
    return count


def _last_norm_of(block: nn.Module) -> str | None:
    """The attribute holding a residual block's last norm, for the block types we know."""
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover
        return None
    if isinstance(block, Bottleneck):
        return "bn3"
    if isinstance(block, BasicBlock):
        return "bn2"
    return getattr(block, "last_norm_name", None)


@torch.no_grad()
def zero_init_last_gamma(model: nn.Module) -> list[str]:
    """Set gamma = 0 in the last norm of every residual block (the paper's recipe); return their names.

    Each block then starts as the identity. Known blocks: torchvision's BasicBlock (bn2)
    and Bottleneck (bn3), any block with a ``last_norm_name`` attribute (groupnorm's
    models), and timm's BasicBlock / Bottleneck (recognised by their ``zero_init_last``
    method; their bn2 / bn3). Blocks whose last
    norm has no gamma (``none``, affine=False) are left as they are.
    """
    zeroed = []
    for name, block in model.named_modules():
        attr = _last_norm_of(block)
        if attr is None and callable(getattr(block, "zero_init_last", None)):
            attr = next((a for a in ("bn3", "bn2") if hasattr(block, a)), None)
        if attr is None:
            continue
        norm = getattr(block, attr, None)
        if isinstance(norm, nn.Sequential) and len(norm):  # a converted BatchNormAct
            norm = norm[0]
        weight = getattr(norm, "weight", None)
        if isinstance(weight, torch.Tensor):
            weight.zero_()
            zeroed.append(f"{name}.{attr}" if name else attr)
    return zeroed
