"""GroupNormAct: GroupNorm and an activation in one fused, memory-lean layer; activations by name."""

from __future__ import annotations

from torch import Tensor, nn

from groupnorm import functional as F
from groupnorm.nn.norm import GroupNorm

__all__ = ["GroupNormAct", "fused_act_name", "resolve_act"]

# Exact types whose activation the fused kernels apply themselves (subclasses may change forward).
_FUSED: dict[type, str] = {nn.Identity: "identity", nn.ReLU: "relu", nn.SiLU: "silu"}
_ALIASES = {"": "identity", "none": "identity", "linear": "identity", "swish": "silu"}


def _torch_activations() -> dict[str, type[nn.Module]]:
    """torch.nn's activation classes by lower-case name without underscores (gelu, leakyrelu, ...)."""
    import torch.nn.modules.activation as A

    found = {name.lower(): getattr(A, name) for name in A.__all__}
    return {k: v for k, v in found.items() if isinstance(v, type) and issubclass(v, nn.Module)} | {
        "identity": nn.Identity
    }


def resolve_act(act: str | type[nn.Module] | nn.Module | None) -> nn.Module:
    """An activation module from a name, a module class, a module, or None (identity).

    Names are torch.nn's activations, case and underscores ignored (``"gelu"``, ``"leaky_relu"``,
    ``"hardswish"``; ``"swish"`` is SiLU), then timm's (``timm.layers.get_act_layer``, where timm
    is installed). A class is instantiated with no arguments; a module is used as it is.
    """
    if act is None:
        return nn.Identity()
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, type) and issubclass(act, nn.Module):
        return act()
    if not isinstance(act, str):
        raise TypeError(f"act must be a name, an nn.Module class or an nn.Module; got {type(act).__name__} {act!r}")
    key = act.strip().lower().replace("_", "").replace("-", "")
    key = _ALIASES.get(key, key)
    found = _torch_activations().get(key)
    if found is None:
        try:
            from timm.layers import get_act_layer
        except ImportError:
            get_act_layer = None
        try:
            found = get_act_layer(act) if get_act_layer is not None else None
        except KeyError:  # timm raises for names it does not know
            found = None
    if found is None:
        raise ValueError(
            f"act: unknown activation {act!r}; expected a torch.nn activation name "
            f"({', '.join(sorted(_torch_activations()))}), a timm one, or an nn.Module class"
        )
    return found() if isinstance(found, type) else found


def fused_act_name(act: nn.Module) -> str | None:
    """The fused kernels' name for ``act`` (identity, relu, silu), or None when they cannot apply it."""
    return _FUSED.get(type(act))


class GroupNormAct(GroupNorm):
    r"""GroupNorm followed by an activation: ``act(drop(GroupNorm(x)))``, fused where it can be.

    .. math::
        y = \mathrm{act}\left(\frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
            \cdot \gamma + \beta\right)

    The same statistics, parameters and ``state_dict`` as :class:`GroupNorm` (and so as
    torch's nn.GroupNorm, of which it is an instance); the activation and ``drop`` are
    submodules named as in timm's norm-act layers (``act``, ``drop``), so a timm
    ``BatchNormAct2d`` converted to it keeps its flat keys. For identity, ReLU and SiLU (and no
    drop) :func:`groupnorm.functional.group_norm_act` computes it in one kernel: one pass over
    memory for the forward, and only the input kept for the backward, so a GN + activation block
    holds half the activation memory of ``nn.Sequential(GroupNorm, SiLU)``. Any other activation
    (GELU, LeakyReLU, timm's, yours) runs after torch's GroupNorm.

    Args (positional as torch.nn.GroupNorm; the rest keyword only):
        num_groups: G, dividing num_channels. Give this or ``group_size``.
        num_channels: C.
        eps: added to the variance. Default 1e-5.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default True.
        act: a name (``"silu"``, the default, ``"relu"``, ``"gelu"``, ``"identity"``, any torch or
            timm activation), an nn.Module class or an nn.Module (see :func:`resolve_act`).
        drop: a module applied between the norm and the activation (timm's ``drop``); default none.
        bias: with ``affine``, learn beta too. Default True.
        group_size: C/G, instead of ``num_groups``.

    Shape:
        - Input: (N, C, *), * any number of dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = GroupNormAct(32, 256)                       # GN(32) then SiLU, fused
        >>> m = GroupNormAct(32, 256, act="gelu")           # GN(32) then nn.GELU
        >>> y = m(torch.randn(2, 256, 8, 8).to(memory_format=torch.channels_last))
    """

    def __init__(
        self,
        num_groups: int | None = None,
        num_channels: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        act: str | type[nn.Module] | nn.Module | None = "silu",
        drop: nn.Module | None = None,
        bias: bool = True,
        group_size: int | None = None,
    ) -> None:
        try:
            act_module = resolve_act(act)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{type(self).__name__}: {e}") from None
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias, group_size=group_size)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act_module

    @property
    def act_name(self) -> str | None:
        """The fused activation (identity, relu, silu), or None where act runs as its own module."""
        return fused_act_name(self.act) if isinstance(self.drop, nn.Identity) else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {self.num_channels}, *); got {tuple(x.shape)}"
            )
        name = self.act_name
        if name is not None:
            return F.group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, name)
        return self.act(self.drop(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)))
