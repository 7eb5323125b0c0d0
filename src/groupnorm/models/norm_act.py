"""The norm layer a model builder injects, norm-act aware (timm's ``norm_act_layer``).

A norm-act spec (``frn``, ``evonorm-s0``, ``gn:32+relu``) replaces a norm *and* the activation after
it. A builder asks for each norm slot with ``norm(C, act=...)``, saying whether the model's
activation follows that norm, and puts ``norm.activation()`` after the slots where it does:

    norm = norm_act_factory("frn")
    self.norm1 = norm(64)                # conv-norm-relu: FRN + TLU
    self.act1 = norm.activation()        # nn.Identity: TLU is the activation
    self.norm2 = norm(64, act=False)     # before the residual add: FRN alone (no TLU)

For a plain spec (``bn``, ``gn:8``, ``ws+gn:8``, ...) ``norm(C, act=...)`` is ``make_norm(spec, C)``
whatever ``act`` says and ``activation()`` is the model's ReLU: the same layers, state_dict keys and
numbers as a norm followed by a ReLU. A plain callable (``partial(nn.GroupNorm, 8)``, torchvision's
``norm_layer``) is taken as a plain norm: :func:`as_norm_act`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from groupnorm.nn.spec import NormSpec, OnIndivisible, make_norm, parse_norm_spec

__all__ = ["NormActLayer", "as_norm_act", "norm_act_factory"]


@dataclass(frozen=True)
class NormActLayer:
    """``norm(num_channels, act=True)``: the layer of one norm slot; ``activation()``: what follows it.

    Attributes:
        build: ``(num_channels, act) -> module``.
        fused: the layers built with ``act=True`` apply the activation themselves (a norm-act spec),
            so ``activation()`` is ``nn.Identity``.
        name: what the layers are, for errors and reprs (the spec).
    """

    build: Callable[[int, bool], nn.Module]
    fused: bool = False
    name: str = "norm"

    def __call__(self, num_channels: int, act: bool = True) -> nn.Module:
        """The norm of a slot with ``num_channels`` channels; ``act``: the model's activation follows it."""
        return self.build(num_channels, act)

    def activation(self) -> nn.Module:
        """The model's activation after a slot built with ``act=True``: ReLU, or Identity after a norm-act layer."""
        return nn.Identity() if self.fused else nn.ReLU(inplace=True)

    def __repr__(self) -> str:
        return f"NormActLayer({self.name!r}, fused={self.fused})"


def norm_act_factory(spec: str | NormSpec, devices: int = 1, on_indivisible: OnIndivisible = "error") -> NormActLayer:
    """The :class:`NormActLayer` of ``spec``: norm-act layers where an activation follows, plain norms elsewhere.

    ``norm_act_factory("gn:32+relu")(C)`` is a GroupNormAct (GN and ReLU fused), ``(C, act=False)`` a
    GroupNorm; ``frn`` gives FRN + TLU and FRN alone; ``evonorm-s0`` EvoNorm-S0 and its form without the
    gate (x / group_std * gamma + beta). Also a torchvision ``norm_layer``: ``norm(C)`` is ``make_norm(spec, C)``.
    """
    parsed = parse_norm_spec(spec)

    def build(num_channels: int, act: bool) -> nn.Module:
        return make_norm(parsed, num_channels, devices=devices, on_indivisible=on_indivisible, act=act)

    return NormActLayer(build, fused=parsed.norm_act, name=str(parsed))


def as_norm_act(norm: NormActLayer | Callable[[int], nn.Module]) -> NormActLayer:
    """``norm`` as a :class:`NormActLayer`: itself, or a plain ``num_channels -> norm`` callable that every
    slot gets, followed by the model's ReLU wherever the model has one."""
    if isinstance(norm, NormActLayer):
        return norm
    if not callable(norm):
        raise TypeError(f"norm must be a NormActLayer (norm_act_factory(spec)) or a callable C -> module; got {norm!r}")
    return NormActLayer(
        lambda num_channels, act: norm(num_channels), fused=False, name=getattr(norm, "__name__", "norm")
    )
