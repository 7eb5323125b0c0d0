"""Normalization layers: GN and its family, all on groupnorm.functional."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from groupnorm import functional as F

__all__ = ["BatchNorm", "FrozenBatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "resolve_groups"]


def resolve_groups(
    num_channels: int,
    num_groups: int | None = None,
    group_size: int | None = None,
    *,
    owner: str = "GroupNorm",
) -> int:
    """The number of groups G from exactly one of ``num_groups`` or ``group_size`` (C/G)."""
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels <= 0:
        raise ValueError(f"{owner}: num_channels must be a positive int; got {num_channels!r}")
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{owner}: give exactly one of num_groups or group_size; got num_groups={num_groups!r}, "
            f"group_size={group_size!r}"
        )
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
            raise ValueError(f"{owner}: group_size must be a positive int; got {group_size!r}")
        if num_channels % group_size:
            raise ValueError(
                f"{owner}: group_size must divide num_channels={num_channels}; got group_size={group_size}"
            )
        return num_channels // group_size
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0:
        raise ValueError(f"{owner}: num_groups must be a positive int; got {num_groups!r}")
    if num_channels % num_groups:
        raise ValueError(f"{owner}: num_groups must divide num_channels={num_channels}; got num_groups={num_groups}")
    return num_groups


def _drop_bias(module: nn.Module, bias: bool) -> None:
    """Support torch's keyword ``bias=False`` (gamma only) on torch versions that lack it."""
    if not bias and isinstance(getattr(module, "bias", None), nn.Parameter):
        del module.bias
        module.register_parameter("bias", None)


class GroupNorm(nn.GroupNorm):
    r"""Group Normalization over (N, C, *) inputs: a drop-in for :class:`torch.nn.GroupNorm`.

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \cdot \gamma + \beta

    Mean and biased variance are taken per sample over each group of C/G contiguous
    channels and every trailing position; gamma and beta are per channel. Training and
    evaluation compute the same thing.

    Same argument order, ``state_dict`` keys and repr as torch's, and an ``isinstance`` of it;
    in addition the groups may be given by their size (``group_size=16`` is C/16 groups),
    any number of trailing dims works, the memory format is kept, and the CPU channels-last
    path stays accurate where torch's loses precision (see :func:`groupnorm.functional.group_norm`).

    Args:
        num_groups: G, dividing num_channels. Give this or ``group_size``.
        num_channels: C.
        eps: added to the variance. Default 1e-5.
        affine: learn per-channel gamma (init 1) and beta (init 0). Default True.
        bias: with ``affine``, learn beta too (keyword only, as in torch). Default True.
        group_size: C/G, keyword only, instead of ``num_groups``.

    Shape:
        - Input: (N, C, *), * any number of dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> m = GroupNorm(32, 64)
        >>> m = GroupNorm(num_channels=64, group_size=16)  # 4 groups
        >>> y = m(torch.randn(2, 64, 8, 8))
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
        bias: bool = True,
        group_size: int | None = None,
    ) -> None:
        owner = type(self).__name__
        groups = resolve_groups(num_channels, num_groups, group_size, owner=owner)  # type: ignore[arg-type]
        if not eps >= 0:
            raise ValueError(f"{owner}: eps must be >= 0; got {eps!r}")
        super().__init__(groups, num_channels, eps, affine, device, dtype)  # type: ignore[arg-type]
        _drop_bias(self, bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, {self.num_channels}, *); got {tuple(x.shape)}"
            )
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(GroupNorm):
    """LayerNorm for conv features: statistics over (C, *) of each sample, per-channel gamma and beta.

    GroupNorm with one group (torch's nn.LayerNorm instead has an affine per normalised element).

    Examples::

        >>> LayerNorm(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(1, num_channels, eps, affine, device, dtype, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self.bias is not None}"


class InstanceNorm(GroupNorm):
    """InstanceNorm: statistics over (*) of each sample and channel, per-channel gamma and beta.

    GroupNorm with one channel per group; no running statistics (as in the paper).

    Examples::

        >>> InstanceNorm(64)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_channels, num_channels, eps, affine, device, dtype, bias=bias)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}, bias={self.bias is not None}"


class BatchNorm(_BatchNorm):
    r"""Batch Normalization for (N, C, *) inputs (2-D to 5-D) with the paper's per-device statistics.

    ``devices=D`` splits each training batch into D equal, contiguous blocks and normalises
    each over its own values, as D GPUs of N/D images each would (the paper's BN at
    N/D images per GPU, on one device). ``sync=True`` instead takes statistics over the whole
    batch of every process of torch.distributed (SyncBN); outside torch.distributed it is
    plain BN over the whole batch. Running statistics update as in torch's BN (unbiased
    variance, momentum), averaged over the D blocks; evaluation uses them.

    ``state_dict`` keys are torch's (weight, bias, running_mean, running_var,
    num_batches_tracked) and it is an instance of torch's ``_BatchNorm``.

    Args (positional as torch.nn.BatchNorm2d; ``devices``, ``sync``, ``bias`` and
    ``process_group`` keyword only):
        num_features: C.
        eps, momentum, affine, track_running_stats: as in torch.nn.BatchNorm2d.
        devices: virtual devices D; the batch size must be divisible by it in training.
        sync: statistics over all processes (``process_group``, default the world).

    Shape:
        - Input: (N, C) or (N, C, *) with up to 3 trailing dims.
        - Output: same shape, dtype and memory format.

    Examples::

        >>> bn = BatchNorm(64, devices=8)   # 8 virtual GPUs
        >>> y = bn(torch.randn(16, 64, 8, 8))  # statistics over 2 images at a time
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
        sync: bool = False,
        bias: bool = True,
        process_group=None,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"BatchNorm: num_features must be a positive int; got {num_features!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        _drop_bias(self, bias)
        self.sync = bool(sync)
        self.process_group = process_group
        self.devices = devices

    @property
    def devices(self) -> int:
        return self._devices

    @devices.setter
    def devices(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"BatchNorm: devices must be a positive int; got {value!r}")
        if self.sync and value != 1:
            raise ValueError(f"BatchNorm: sync=True takes statistics over all devices; devices must be 1, got {value}")
        self._devices = value

    def _check_input_dim(self, x: Tensor) -> None:
        if not 2 <= x.dim() <= 5:
            raise ValueError(f"BatchNorm: expected a 2-D to 5-D input (N, C, *); got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm: expected {self.num_features} channels (dim 1); got shape {tuple(x.shape)}")

    def _statistics(self) -> tuple[Tensor | None, Tensor | None, bool, float]:
        """(running mean, running var, whether to use batch statistics, momentum) for this forward, as torch's
        _BatchNorm decides them (counting the step; momentum None is a cumulative average)."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        use_running = not self.training and self.running_mean is not None
        keep = (self.training and self.track_running_stats) or use_running
        return (self.running_mean if keep else None), (self.running_var if keep else None), not use_running, momentum

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        mean, var, batch_statistics, momentum = self._statistics()
        return F.batch_norm(
            x,
            mean,
            var,
            self.weight,
            self.bias,
            training=batch_statistics,
            momentum=momentum,
            eps=self.eps,
            devices=self.devices,
            sync_group=(self.process_group or "world") if self.sync else None,
        )

    def extra_repr(self) -> str:
        extra = f", devices={self.devices}" if self.devices != 1 else ""
        return super().extra_repr() + extra + (", sync=True" if self.sync else "")


class FrozenBatchNorm(nn.Module):
    """BN*: batch normalization frozen into a fixed per-channel affine (the paper's detection baseline).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` with all four as
    buffers, so nothing is learned and nothing depends on the batch. For (N, C, *) inputs;
    loads torchvision's FrozenBatchNorm2d and torch's BatchNorm state dicts.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"FrozenBatchNorm: num_features must be a positive int; got {num_features!r}")
        self.num_features = num_features
        self.eps = eps
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"FrozenBatchNorm: expected input of shape (N, {self.num_features}, *); got {tuple(x.shape)}"
            )
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(shape).to(x.dtype), x, scale.view(shape).to(x.dtype))

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
