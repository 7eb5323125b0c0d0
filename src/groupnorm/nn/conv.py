"""Weight-standardized convolutions (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization"), the usual companion of GN at 1-2 images per device."""

from __future__ import annotations

from torch import Tensor, nn

from groupnorm import functional as F

__all__ = ["WSConv2d", "WSConv3d"]


class _WeightStandardized:
    """Mixin: convolve with each output filter standardised to zero mean and unit variance."""

    ws_eps: float

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, F.weight_standardize(self.weight, self.ws_eps), self.bias)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ws_eps={self.ws_eps}"  # type: ignore[misc]


class WSConv2d(_WeightStandardized, nn.Conv2d):
    r"""A Conv2d whose weight is standardised per output filter at every forward.

    .. math::
        \hat W_o = \frac{W_o - \mathrm{mean}(W_o)}{\sqrt{\mathrm{Var}(W_o) + \epsilon}}

    over the filter's in-channels and kernel positions (biased variance). Arguments are
    nn.Conv2d's plus ``ws_eps`` (default 1e-5); the state_dict is nn.Conv2d's, so a
    plain conv's weights load into it.

    Examples::

        >>> conv = WSConv2d(64, 128, 3, padding=1, bias=False)
        >>> y = conv(torch.randn(1, 64, 32, 32))
    """

    def __init__(self, *args, ws_eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps


class WSConv3d(_WeightStandardized, nn.Conv3d):
    """A Conv3d with Weight Standardization, as :class:`WSConv2d` (for video models)."""

    def __init__(self, *args, ws_eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ws_eps = ws_eps
