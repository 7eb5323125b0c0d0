"""Batch Renormalization (Ioffe, 2017): BN whose training output is corrected toward its running statistics."""

from __future__ import annotations

from torch import Tensor

from groupnorm import functional as F
from groupnorm.nn.norm import BatchNorm

__all__ = ["RENORM_RAMP", "BatchRenorm", "renorm_limits"]

# The paper's schedule (Sec. 4.1): BN alone (r_max=1, d_max=0) for the first 5k steps, then relaxed
# linearly to d_max=5 at 25k steps and r_max=3 at 40k steps. renorm_limits scales those steps to a
# run: 40k lands at ``ramp_end`` of the run, 5k and 25k in proportion.
RENORM_RAMP = {"start": 5_000, "d_end": 25_000, "r_end": 40_000, "r_max": 3.0, "d_max": 5.0}


def renorm_limits(step: int, total_steps: int, *, ramp_end: float = 0.25) -> tuple[float, float]:
    """(r_max, d_max) at ``step`` of a ``total_steps`` run, the paper's ramp scaled to the run.

    The paper relaxes r_max 1 -> 3 and d_max 0 -> 5 after a BN-only start, at absolute steps
    (5k, 25k, 40k) of runs far longer than 40k steps. Here r_max reaches 3 at ``ramp_end *
    total_steps`` (default a quarter of the run: our choice, not the paper's); the BN-only start
    ends at 5/40 of that point and d_max reaches 5 at 25/40 of it; both rise linearly.

    Examples::

        >>> renorm_limits(0, 1000)
        (1.0, 0.0)
        >>> renorm_limits(250, 1000)
        (3.0, 5.0)
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"renorm_limits: total_steps must be a positive int; got {total_steps!r}")
    if not 0 < ramp_end <= 1:
        raise ValueError(f"renorm_limits: ramp_end must be a fraction of the run in (0, 1]; got {ramp_end!r}")
    scale = ramp_end * total_steps / RENORM_RAMP["r_end"]
    start = RENORM_RAMP["start"] * scale

    def ramp(end_step: float, top: float, bottom: float) -> float:
        end = end_step * scale
        t = min(max((step - start) / max(end - start, 1e-12), 0.0), 1.0)
        return bottom + t * (top - bottom)

    return ramp(RENORM_RAMP["r_end"], RENORM_RAMP["r_max"], 1.0), ramp(RENORM_RAMP["d_end"], RENORM_RAMP["d_max"], 0.0)


class BatchRenorm(BatchNorm):
    r"""Batch Renormalization (Ioffe, 2017) for (N, C, *) inputs, with per-device statistics.

    .. math::
        y = \gamma \left(\frac{x - \mu_B}{\sigma_B} \cdot r + d\right) + \beta, \quad
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\left(\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\left(\frac{\mu_B - \mu}{\sigma}\right)

    in training, with mu_B and sigma_B = sqrt(Var_B + eps) over each virtual device's block of
    the batch (``devices``, as :class:`BatchNorm`; under torchrun each process is a device),
    mu and sigma = sqrt(running_var + eps) the running statistics, and r and d held constant in
    the backward. Evaluation uses the running statistics, as BN. The running statistics update
    as BN's (momentum, unbiased variance), so the ``state_dict`` is BN's and BN checkpoints load.

    ``r_max`` and ``d_max`` are plain attributes a training loop changes as it goes: the paper
    starts as BN (``r_max=1, d_max=0``, the defaults) and relaxes them to 3 and 5; call
    :func:`groupnorm.set_renorm_limits` (model, step, total_steps) each step for the paper's
    ramp scaled to the run (:func:`renorm_limits`). Left at the defaults, the layer is BN.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats: as in torch.nn.BatchNorm2d.
        devices: virtual devices D (keyword only); the batch size must be divisible by it.
        bias: with ``affine``, learn beta too (keyword only). Default True.
        r_max: the bound on r, >= 1 (keyword only). Default 1.
        d_max: the bound on d, >= 0 (keyword only). Default 0.

    Shape:
        - Input: (N, C) or (N, C, *) with up to 3 trailing dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = BatchRenorm(64, devices=8)
        >>> m.r_max, m.d_max = renorm_limits(step=700, total_steps=1000)  # (3.0, 5.0)
        >>> y = m(torch.randn(16, 64, 8, 8))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        devices: int = 1,
        bias: bool = True,
        r_max: float = 1.0,
        d_max: float = 0.0,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, devices=devices, bias=bias
        )
        self.r_max = r_max
        self.d_max = d_max

    @property
    def r_max(self) -> float:
        return self._r_max

    @r_max.setter
    def r_max(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise ValueError(f"BatchRenorm: r_max must be a number >= 1; got {value!r}")
        self._r_max = float(value)

    @property
    def d_max(self) -> float:
        return self._d_max

    @d_max.setter
    def d_max(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"BatchRenorm: d_max must be a number >= 0; got {value!r}")
        self._d_max = float(value)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        mean, var, batch_statistics, momentum = self._statistics()
        return F.batch_renorm(
            x,
            mean,
            var,
            self.weight,
            self.bias,
            training=batch_statistics,
            momentum=momentum,
            eps=self.eps,
            r_max=self.r_max,
            d_max=self.d_max,
            devices=self.devices,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"
