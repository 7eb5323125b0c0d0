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

    Args:
        num_features: C.
        eps: added to the variance. Default 1e-5.
        num_groups: G, dividing C (keyword only). Give this or ``group_size``; neither is 32 groups.
        group_size: C/G (keyword only).

    Shape:
        - Input: (N, C, *), * any number of dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = EvoNormS0(64, num_groups=8)      # replaces BatchNorm2d(64) + ReLU
        >>> m = EvoNormS0(64, group_size=16)     # 4 groups
        >>> y = m(torch.randn(2, 64, 8, 8))
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
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.v = nn.Parameter(torch.ones(num_features, **kw))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"EvoNormS0 (evonorm-s0): expected input of shape (N, {self.num_features}, *); got {tuple(x.shape)}"
            )
        return F.evo_norm_s0(x, self.num_groups, self.weight, self.bias, self.v, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, num_groups={self.num_groups}"
