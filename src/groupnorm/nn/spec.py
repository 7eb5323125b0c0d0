"""The norm spec: one string names any normalization, and ``make_norm`` builds it.

    bn          BN, statistics per (virtual) device
    bn:sync     BN, statistics over all devices (SyncBN)
    bn:frozen   BN*, a fixed per-channel affine (frozen statistics)
    gn          GN with 32 groups (= gn:32)
    gn:G        GN with G groups
    gn/K        GN with K channels per group
    ln          LayerNorm over (C, *)     (GN with one group)
    in          InstanceNorm over (*)     (GN with one channel per group)
    none        no normalization (nn.Identity)
    ws+<spec>   the same, with weight-standardized convs (applied by the model builders and
                convert_norms; make_norm itself builds only the norm)
    <spec>+ACT  gn, ln and in fused with the activation ACT (relu or silu) that follows them:
                a GroupNormAct (e.g. gn:32+silu, ws+gn/16+relu); a model builder that gets
                one leaves out its own activation after that norm (see NormSpec.norm_act)
    brn         Batch Renorm (Ioffe 2017), statistics per (virtual) device; r_max and d_max
                are driven by groupnorm.set_renorm_limits (BN until then)
    frn         FRN + TLU (Singh & Krishnan 2020), eps 1e-6: a norm-act layer
    evonorm-s0  EvoNorm-S0 (Liu et al. 2020) with 32 groups; evonorm-s0:G, evonorm-s0/K as
                for gn: a norm-act layer
    gn-chmean   GN with the mean taken per channel, the spread per group (gn-chmean:G, /K);
    gn-chstd    GN with the spread taken per channel, the mean per group: the two halves of the
                step from GN to IN, for the group-division study (SplitStatsGroupNorm)

A norm-act spec (``NormSpec.norm_act``: frn, evonorm-s0, <spec>+ACT) replaces a norm and the
activation after it; where a norm is not followed by one (before a residual add) the model builder
asks for its plain form, ``make_norm(spec, C, act=False)``: GN, LN or IN without the fused
activation, FRN without TLU, EvoNorm-S0 without its sigmoid gate (see groupnorm.models.norm_act).

``make_norm`` also takes a callable (a class, a functools.partial, a function) and calls it
with the number of channels, as torchvision's ``norm_layer`` arguments do. New kinds are
added with :func:`register_norm`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from groupnorm.nn.act import GroupNormAct
from groupnorm.nn.conv import WSConv2d, WSConv3d
from groupnorm.nn.evonorm import EvoNormS0
from groupnorm.nn.frn import FilterResponseNorm
from groupnorm.nn.norm import BatchNorm, FrozenBatchNorm, GroupNorm, InstanceNorm, LayerNorm
from groupnorm.nn.renorm import BatchRenorm
from groupnorm.nn.split_gn import SplitStatsGroupNorm

__all__ = [
    "NormSpec",
    "OnIndivisible",
    "conv_layer",
    "make_norm",
    "nearest_divisor",
    "parse_norm_spec",
    "register_norm",
]

OnIndivisible = Literal["error", "nearest"]
DEFAULT_GROUPS = 32
SPEC_ACTIVATIONS = ("relu", "silu")  # the activations a spec can fuse (+relu, +silu)
SPEC_HELP = (
    "bn, bn:sync, bn:frozen, gn, gn:G, gn/K, ln, in, none, each optionally prefixed by ws+ (e.g. ws+gn:32); "
    "gn, ln and in optionally followed by +relu or +silu (e.g. gn:32+silu); "
    "brn; the norm-act layers frn and evonorm-s0, evonorm-s0:G, evonorm-s0/K; "
    "the ablations gn-chmean and gn-chstd (:G or /K)"
)


@dataclass(frozen=True)
class NormSpec:
    """A parsed norm spec. ``str(spec)`` gives its canonical text."""

    kind: str  # a key of the registry: bn, gn, ln, in, none, ...
    variant: str = ""  # for bn: "", "sync" or "frozen"
    groups: int | None = None  # gn:G
    group_size: int | None = None  # gn/K
    ws: bool = False
    act: str = ""  # "" or a fused activation: "relu", "silu" (the norm then applies it)

    def __str__(self) -> str:
        text = self.kind
        if self.variant:
            text += f":{self.variant}"
        if self.groups is not None:
            text += f":{self.groups}"
        if self.group_size is not None:
            text += f"/{self.group_size}"
        if self.act:
            text += f"+{self.act}"
        return ("ws+" if self.ws else "") + text

    @property
    def uses_batch_statistics(self) -> bool:
        """True when training outputs depend on the other samples of the batch (BN, BN:sync, BRN)."""
        return self.kind in ("bn", "brn") and self.variant != "frozen"

    @property
    def norm_act(self) -> bool:
        """True when the layer replaces a (norm, activation) pair: frn, evonorm-s0, or a fused <spec>+ACT.

        A model builder given such a spec puts it where a norm is followed by its activation and
        leaves that activation out; a norm not followed by one (before a residual add) stays a plain norm.
        """
        return bool(self.act) or self.kind in _NORM_ACT


_SPEC = re.compile(
    r"^(?P<ws>ws\+)?(?P<kind>[a-z][a-z0-9_-]*)(?::(?P<arg>[a-z0-9]+)|/(?P<size>\d+))?(?:\+(?P<act>[a-z0-9_]+))?$"
)

NormBuilder = Callable[[NormSpec, int, dict], nn.Module]
_REGISTRY: dict[str, tuple[NormBuilder, Callable[[NormSpec], None]]] = {}
_FUSES_ACT: set[str] = set()  # kinds whose builder applies spec.act itself
_NORM_ACT: set[str] = set()  # kinds whose layer is a norm-act layer by itself (frn, evonorm-s0)


def register_norm(
    kind: str,
    builder: NormBuilder,
    validate: Callable[[NormSpec], None] | None = None,
    *,
    fuses_act: bool = False,
    norm_act: bool = False,
) -> None:
    """Make ``kind`` (and ``kind:arg`` / ``kind/K`` when ``validate`` accepts them) a norm spec.

    ``builder(spec, num_channels, options)`` returns the module (``options``: devices,
    on_indivisible, eps, and act: False for the plain form of a norm-act kind, where no
    activation follows the norm); ``validate(spec)`` raises
    ValueError for arguments the kind does not take. With ``fuses_act`` the kind also takes
    an activation suffix (``kind+silu``), which its builder must apply (``spec.act``). With
    ``norm_act`` the layer itself replaces a (norm, activation) pair (``NormSpec.norm_act``).
    """

    def no_arguments(spec: NormSpec) -> None:
        if spec.variant or spec.groups is not None or spec.group_size is not None:
            raise ValueError(f"norm spec {str(spec)!r}: {kind} takes no arguments")

    _REGISTRY[kind] = (builder, validate or no_arguments)
    for flag, kinds in ((fuses_act, _FUSES_ACT), (norm_act, _NORM_ACT)):
        if flag:
            kinds.add(kind)
        else:
            kinds.discard(kind)


def parse_norm_spec(spec: str | NormSpec) -> NormSpec:
    """Parse a norm spec string (see the module docstring); ValueError names the valid forms."""
    if isinstance(spec, NormSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"norm spec must be a string such as 'gn:32'; got {type(spec).__name__} {spec!r}")
    m = _SPEC.match(spec.strip().lower())
    if m is None or m["kind"] not in _REGISTRY:
        raise ValueError(f"norm spec: cannot parse {spec!r}; expected one of {SPEC_HELP}")
    arg, size, act = m["arg"], m["size"], m["act"] or ""
    parsed = NormSpec(
        kind=m["kind"],
        variant=arg if arg is not None and not arg.isdigit() else "",
        groups=int(arg) if arg is not None and arg.isdigit() else None,
        group_size=int(size) if size is not None else None,
        ws=m["ws"] is not None,
        act=act,
    )
    if parsed.groups == 0 or parsed.group_size == 0:
        raise ValueError(f"norm spec {spec!r}: the number of groups and the group size must be positive")
    if act:
        if parsed.kind not in _FUSES_ACT:
            fusing = ", ".join(sorted(_FUSES_ACT))
            raise ValueError(
                f"norm spec {spec!r}: {parsed.kind} takes no activation suffix; only {fusing} fuse one "
                f"(e.g. gn:32+silu)"
            )
        if act not in SPEC_ACTIVATIONS:
            raise ValueError(
                f"norm spec {spec!r}: the activation must be one of {', '.join(SPEC_ACTIVATIONS)}; got {act!r}"
            )
    _REGISTRY[parsed.kind][1](parsed)
    return parsed


def nearest_divisor(n: int, target: int) -> int:
    """The divisor of n closest to target; a tie goes to the smaller divisor."""
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


def make_norm(
    spec: str | NormSpec | Callable[[int], nn.Module],
    num_channels: int,
    *,
    devices: int = 1,
    on_indivisible: OnIndivisible = "error",
    eps: float = 1e-5,
    act: bool = True,
) -> nn.Module:
    """Build the normalization layer that ``spec`` names for ``num_channels`` channels.

    Args:
        spec: a norm spec string or NormSpec, or a callable taking the number of channels.
        num_channels: C.
        devices: virtual devices for ``bn`` (see :class:`groupnorm.nn.BatchNorm`).
        on_indivisible: what to do when C is not divisible by the groups (``gn:G``) or the
            group size (``gn/K``): ``"error"`` (default) raises; ``"nearest"`` uses the divisor
            of C nearest to G (or K), ties to the smaller one.
        eps: added to the variance (not for ``frn``, which keeps its paper's 1e-6).
        act: whether an activation follows this norm in the model (default True). False builds a
            norm-act spec's plain form: GN, LN or IN without the fused activation, FRN without TLU,
            EvoNorm-S0 without its gate. Other specs, and a callable spec, ignore it.

    Examples::

        >>> make_norm("gn:32", 256)
        GroupNorm(32, 256, eps=1e-05, affine=True, bias=True)
        >>> make_norm("gn/16", 256)
        GroupNorm(16, 256, eps=1e-05, affine=True, bias=True)
        >>> make_norm("gn:32+silu", 256)
        GroupNormAct(32, 256, eps=1e-05, affine=True, bias=True, act='silu')
        >>> make_norm("gn:32+silu", 256, act=False)
        GroupNorm(32, 256, eps=1e-05, affine=True, bias=True)
    """
    if callable(spec) and not isinstance(spec, (str, NormSpec)):
        return spec(num_channels)
    parsed = parse_norm_spec(spec)
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels <= 0:
        raise ValueError(f"make_norm: num_channels must be a positive int; got {num_channels!r}")
    if on_indivisible not in ("error", "nearest"):
        raise ValueError(f"make_norm: on_indivisible must be 'error' or 'nearest'; got {on_indivisible!r}")
    options = {"devices": devices, "on_indivisible": on_indivisible, "eps": eps, "act": bool(act)}
    return _REGISTRY[parsed.kind][0](parsed, num_channels, options)


def conv_layer(spec: str | NormSpec, dims: int = 2) -> type[nn.Module]:
    """The conv class a model builder should use with ``spec``: WS convs for ``ws+`` specs."""
    ws = parse_norm_spec(spec).ws
    if dims not in (2, 3):
        raise ValueError(f"conv_layer: dims must be 2 or 3; got {dims!r}")
    if dims == 2:
        return WSConv2d if ws else nn.Conv2d
    return WSConv3d if ws else nn.Conv3d


# ---------------------------------------------------------------------------------------
# the built-in kinds


def _build_bn(spec: NormSpec, c: int, o: dict) -> nn.Module:
    if spec.variant == "frozen":
        return FrozenBatchNorm(c, eps=o["eps"])
    if spec.variant == "sync":
        return BatchNorm(c, sync=True, eps=o["eps"])
    return BatchNorm(c, devices=o["devices"], eps=o["eps"])


def _validate_bn(spec: NormSpec) -> None:
    if spec.groups is not None or spec.group_size is not None or spec.variant not in ("", "sync", "frozen"):
        raise ValueError(f"norm spec {str(spec)!r}: bn takes ':sync' or ':frozen'; expected one of {SPEC_HELP}")


def _spec_groups(spec: NormSpec, c: int, o: dict) -> int:
    """The number of groups a gn-like spec (kind, kind:G, kind/K) gives C channels."""
    if spec.group_size is not None:
        size = spec.group_size
        if c % size:
            if o["on_indivisible"] == "error":
                raise ValueError(
                    f"norm spec {str(spec)!r} does not apply to {c} channels: the group size {size} must "
                    f"divide C (pass on_indivisible='nearest' to use {nearest_divisor(c, size)} instead)"
                )
            size = nearest_divisor(c, size)
        return c // size
    groups = spec.groups if spec.groups is not None else DEFAULT_GROUPS
    if c % groups:
        if o["on_indivisible"] == "error":
            raise ValueError(
                f"norm spec {str(spec)!r} does not apply to {c} channels: {groups} groups must divide C "
                f"(pass on_indivisible='nearest' to use {nearest_divisor(c, groups)} groups instead)"
            )
        groups = nearest_divisor(c, groups)
    return groups


def _build_gn(spec: NormSpec, c: int, o: dict) -> nn.Module:
    return _group_norm(_spec_groups(spec, c, o), c, o["eps"], _act(spec, o))


def _act(spec: NormSpec, o: dict) -> str:
    """The activation a gn-like layer fuses: the spec's, unless no activation follows the norm."""
    return spec.act if o["act"] else ""


def _group_norm(groups: int, c: int, eps: float, act: str) -> nn.Module:
    """GroupNorm, or GroupNormAct when the spec fuses an activation."""
    return GroupNormAct(groups, c, eps=eps, act=act) if act else GroupNorm(groups, c, eps=eps)


def _validate_gn(spec: NormSpec) -> None:
    if spec.variant:
        raise ValueError(f"norm spec {str(spec)!r}: {spec.kind} takes ':G' (groups) or '/K' (channels per group)")


register_norm("bn", _build_bn, _validate_bn)
register_norm("gn", _build_gn, _validate_gn, fuses_act=True)
register_norm(
    "ln",
    lambda spec, c, o: _group_norm(1, c, o["eps"], _act(spec, o)) if _act(spec, o) else LayerNorm(c, eps=o["eps"]),
    fuses_act=True,
)
register_norm(
    "in",
    lambda spec, c, o: _group_norm(c, c, o["eps"], _act(spec, o)) if _act(spec, o) else InstanceNorm(c, eps=o["eps"]),
    fuses_act=True,
)
for _stat in ("mean", "std"):
    register_norm(
        f"gn-ch{_stat}",
        lambda spec, c, o, stat=_stat: SplitStatsGroupNorm(_spec_groups(spec, c, o), c, stat, eps=o["eps"]),
        _validate_gn,
    )
register_norm("none", lambda spec, c, o: nn.Identity())
register_norm("brn", lambda spec, c, o: BatchRenorm(c, eps=o["eps"], devices=o["devices"]))
# FRN keeps its paper's eps (1e-6): make_norm's eps is the BN family's variance eps.
register_norm("frn", lambda spec, c, o: FilterResponseNorm(c, tlu=o["act"]), norm_act=True)
register_norm(
    "evonorm-s0",
    lambda spec, c, o: EvoNormS0(c, eps=o["eps"], num_groups=_spec_groups(spec, c, o), act=o["act"]),
    _validate_gn,
    norm_act=True,
)
