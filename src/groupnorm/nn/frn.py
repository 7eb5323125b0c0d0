"""Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, 2020): a norm-act layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from groupnorm import functional as F

__all__ = ["FilterResponseNorm"]


class FilterResponseNorm(nn.Module):
    r"""FRN + TLU: a batch-independent norm-act layer that replaces a (norm, ReLU) pair.

    .. math::
        \nu^2 = \frac{1}{|S|} \sum_{s \in S} x_s^2, \qquad
        y = \max\left(\gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta,\ \tau\right)

    with S the spatial positions of one sample and channel (no mean is subtracted), gamma
    (init 1), beta (init 0) and the TLU threshold tau (init 0) per channel. With ``learn_eps``
    eps becomes ``eps + |eps_l|`` with a learned per-channel eps_l (init ``learned_eps_init``),
    which the paper recommends where the spatial size is small (1x1 features). Statistics in
    float32 (float64 for float64 input).

    Args:
        num_features: C.
        eps: the fixed eps, or the lower bound of a learned one. Default 1e-6.
        learn_eps: learn eps too (keyword only). Default False.
        learned_eps_init: the initial eps_l with ``learn_eps`` (keyword only). Default 1e-4.
        tlu: apply the TLU max(., tau) (keyword only). Default True; False gives FRN alone.

    Shape:
        - Input: (N, C, *) with at least one trailing (spatial) dim: (N, C, L), (N, C, H, W), ...
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = FilterResponseNorm(64)                  # replaces BatchNorm2d(64) + ReLU
        >>> y = m(torch.randn(2, 64, 8, 8))
        >>> m = FilterResponseNorm(64, learn_eps=True)  # for 1x1 features
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        device=None,
        dtype=None,
        *,
        learn_eps: bool = False,
        learned_eps_init: float = 1e-4,
        tlu: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"FilterResponseNorm (frn): num_features must be a positive int; got {num_features!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"FilterResponseNorm (frn): eps must be a number >= 0; got {eps!r}")
        if learn_eps and not eps > 0 and not learned_eps_init > 0:
            raise ValueError("FilterResponseNorm (frn): with learn_eps, eps or learned_eps_init must be > 0")
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.learn_eps = bool(learn_eps)
        self.tlu = bool(tlu)
        self.weight = nn.Parameter(torch.ones(num_features, **kw))
        self.bias = nn.Parameter(torch.zeros(num_features, **kw))
        self.tau = nn.Parameter(torch.zeros(num_features, **kw)) if tlu else None
        self.eps_l = nn.Parameter(torch.full((num_features,), float(learned_eps_init), **kw)) if learn_eps else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FilterResponseNorm (frn) with {self.num_features} channels: expected input of shape "
                f"(N, {self.num_features}, *) with at least one spatial dim (FRN normalises over them); "
                f"got {tuple(x.shape)}"
            )
        eps: float | Tensor = self.eps
        if self.eps_l is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            eps = (self.eps + self.eps_l.abs()).float().view(shape)
            if x.dtype == torch.float64:
                eps = eps.double()
        return F.filter_response_norm(x, self.weight, self.bias, self.tau, eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learn_eps={self.learn_eps}, tlu={self.tlu}"
