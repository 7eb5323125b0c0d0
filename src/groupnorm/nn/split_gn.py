"""GroupNorm with one of its two statistics taken per channel: the ablation between GN and IN."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from groupnorm.nn.norm import resolve_groups

__all__ = ["SplitStatsGroupNorm"]

PerChannel = Literal["mean", "std"]


class SplitStatsGroupNorm(nn.Module):
    r"""GN whose centre or whose spread is taken per channel, the other per group.

    With :math:`\mathcal{S}` the trailing positions of one sample, :math:`c` a channel and :math:`g`
    its group (channels :math:`\mathcal{G}`):

    .. math::
        \text{per\_channel="mean"}: \quad
        y = \frac{x - \mu_c}{\sqrt{\frac{1}{|\mathcal{G}||\mathcal{S}|}
            \sum_{c' \in \mathcal{G}, s} (x_{c's} - \mu_{c'})^2 + \epsilon}} \gamma_c + \beta_c,
        \qquad \mu_c = \frac{1}{|\mathcal{S}|} \sum_s x_{cs}

    .. math::
        \text{per\_channel="std"}: \quad
        y = \frac{x - \mu_g}{\sqrt{\frac{1}{|\mathcal{S}|} \sum_s (x_{cs} - \mu_g)^2 + \epsilon}}
            \gamma_c + \beta_c,
        \qquad \mu_g = \frac{1}{|\mathcal{G}||\mathcal{S}|} \sum_{c' \in \mathcal{G}, s} x_{c's}

    GN takes both per group, IN both per channel; these two split the difference, to measure which
    of IN's two per-channel statistics makes it differ from GN (docs/results/groups.md). Like GN, no
    batch statistics: training and evaluation compute the same thing. Statistics in float32 (float64
    for float64 input); plain torch operators (a study layer, not a fast one).

    Args:
        num_groups: G (or give ``group_size``, C/G, instead).
        num_channels: C.
        per_channel: ``"mean"`` or ``"std"``, the statistic taken per channel.
        eps: added to the variance. Default 1e-5.
        group_size: C/G, instead of num_groups (keyword only).

    Shape:
        - Input: (N, C, *) with at least one trailing dim.
        - Output: same shape and dtype.

    Examples::

        >>> m = SplitStatsGroupNorm(32, 256, per_channel="std")   # group mean, per-channel spread
        >>> y = m(torch.randn(2, 256, 7, 7))
    """

    def __init__(
        self,
        num_groups: int | None,
        num_channels: int,
        per_channel: PerChannel = "mean",
        eps: float = 1e-5,
        *,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        owner = "SplitStatsGroupNorm"
        self.num_groups = resolve_groups(num_channels, num_groups, group_size, owner=owner)
        if per_channel not in ("mean", "std"):
            raise ValueError(f"{owner}: per_channel must be 'mean' or 'std'; got {per_channel!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"{owner}: eps must be a number >= 0; got {eps!r}")
        self.num_channels = num_channels
        self.per_channel = per_channel
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"SplitStatsGroupNorm with {self.num_channels} channels: expected input of shape "
                f"(N, {self.num_channels}, *) with at least one trailing dim; got {tuple(x.shape)}"
            )
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        n, c = x.shape[:2]
        v = x.to(acc).reshape(n, self.num_groups, c // self.num_groups, -1)
        if self.per_channel == "mean":
            d = v - v.mean(-1, keepdim=True)
            var = d.square().mean((-2, -1), keepdim=True)
        else:
            d = v - v.mean((-2, -1), keepdim=True)
            var = d.square().mean(-1, keepdim=True)
        y = (d * torch.rsqrt(var + self.eps)).reshape(x.shape)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = y * self.weight.to(acc).view(shape) + self.bias.to(acc).view(shape)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, per_channel={self.per_channel!r}, eps={self.eps}"
