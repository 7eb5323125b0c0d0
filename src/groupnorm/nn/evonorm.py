"""EvoNorm-S0 (Liu et al., 2020): a batch-independent norm-act layer with GN's groups."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from groupnorm import functional as F
from groupnorm.nn.norm import resolve_groups

__all__ = ["EvoNormS0"]

DEFAULT_GROUPS = 32


class EvoNormS0(nn.Module):
    r"""EvoNorm-S0: a batch-independent norm-act layer that replaces a (norm, activation) pair.

    .. math::
        y = \frac{x \cdot \mathrm{sigmoid}(v \cdot x)}{\sqrt{\mathrm{Var}_{g}[x] + \epsilon}} \cdot \gamma + \beta

    with the biased variance per sample over each group g of C/G contiguous channels and
    every trailing position (GN's sets), accumulated in float32; v (init 1), gamma (init 1)
    and beta (init 0) per channel. Groups by count or size, like GN (default 32 groups).

    With ``act=False`` it is the form for a norm that no activation follows (before a residual
    add): the nonlinear part (the sigmoid gate and v) is left out and the group-std division kept,
    y = x / group_std(x) * gamma + beta, so the slot is still normalized (timm's EvoNorm2dS0 with
    ``apply_act=False`` keeps only the affine; its EvoNorm2dS0a keeps the division, as here).

    Args:
        num_features: C.
        eps: added to the variance. Default 1e-5.
        num_groups: G, dividing C (keyword only). Give this or ``group_size``; neither is 32 groups.
        group_size: C/G (keyword only).
        act: the sigmoid gate, i.e. the activation (keyword only). Default True.

    Shape:
        - Input: (N, C, *), * any number of dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = EvoNormS0(64, num_groups=8)      # replaces BatchNorm2d(64) + ReLU
        >>> m = EvoNormS0(64, group_size=16)     # 4 groups
        >>> y = m(torch.randn(2, 64, 8, 8))
        >>> m = EvoNormS0(64, num_groups=8, act=False)   # replaces BatchNorm2d(64) before a residual add
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        device=None,
        dtype=None,
        *,
        num_groups: int | None = None,
        group_size: int | None = None,
        act: bool = True,
    ) -> None:
        super().__init__()
        if num_groups is None and group_size is None:
            num_groups = DEFAULT_GROUPS
        owner = "EvoNormS0 (evonorm-s0)"
        self.num_groups = resolve_groups(num_features, num_groups, group_size, owner=owner)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"{owner}: eps must be a number >= 0; got {eps!r}")
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.act = bool(act)
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.v = nn.Parameter(torch.ones(num_features, **kw)) if act else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"EvoNormS0 (evonorm-s0): expected input of shape (N, {self.num_features}, *); got {tuple(x.shape)}"
            )
        return F.evo_norm_s0(x, self.num_groups, self.weight, self.bias, self.v, self.eps, act=self.act)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, num_groups={self.num_groups}"
        return text if self.act else f"{text}, act=False"
