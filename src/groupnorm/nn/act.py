"""GroupNormAct: GroupNorm and an activation in one fused, memory-lean layer."""

from __future__ import annotations

from torch import Tensor

from groupnorm import functional as F
from groupnorm.kernels import ACTIVATIONS
from groupnorm.nn.norm import GroupNorm

__all__ = ["GroupNormAct"]


class GroupNormAct(GroupNorm):
    r"""GroupNorm followed by an activation, fused: ``act(GroupNorm(x))`` in one kernel.

    .. math::
        y = \mathrm{act}\left(\frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}
            \cdot \gamma + \beta\right)

    The same statistics, parameters and ``state_dict`` as :class:`GroupNorm` (and so as
    torch's nn.GroupNorm, of which it is an instance), computed by
    :func:`groupnorm.functional.group_norm_act`: one pass over memory for the forward, and
    only the input kept for the backward (the normalised input is recomputed), so a
    GN + activation block holds half the activation memory of ``nn.Sequential(GroupNorm,
    SiLU)``.

    Args:
        num_groups: G, dividing num_channels. Give this or ``group_size``.
        num_channels: C.
        eps: added to the variance. Default 1e-5.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default True.
        act: ``"silu"`` (default), ``"relu"`` or ``"identity"``.
        bias: with ``affine``, learn beta too (keyword only). Default True.
        group_size: C/G, keyword only, instead of ``num_groups``.

    Shape:
        - Input: (N, C, *), * any number of dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = GroupNormAct(32, 256)                       # GN(32) then SiLU
        >>> m = GroupNormAct(32, 256, act="relu")
        >>> y = m(torch.randn(2, 256, 8, 8).to(memory_format=torch.channels_last))
    """

    def __init__(
        self,
        num_groups: int | None = None,
        num_channels: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        act: str = "silu",
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        group_size: int | None = None,
    ) -> None:
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: act must be one of {', '.join(map(repr, ACTIVATIONS))}; got {act!r}"
            )
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias, group_size=group_size)
        self.act = act

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act={self.act!r}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {self.num_channels}, *); got {tuple(x.shape)}"
            )
        return F.group_norm_act(x, self.num_groups, self.weight, self.bias, self.eps, self.act)
