"""Why BN fails at small batches, measured on a trained model (beyond the paper).

Two other ways to evaluate a BN model besides its running averages:

- ``precise_bn``: the statistics re-estimated over the training set with the final weights (PreciseBN,
  Wu & Johnson 2021): every BN layer's mean and variance averaged over large batches of training images
  in the model's final state, instead of the exponential average of small-batch statistics collected
  while the weights moved;
- ``batch_statistics``: BN in training mode at test time, in batches of the run's per-device size B: the
  model evaluated with the statistics it was trained with, so there is no train/test mismatch at all.

The gap between running averages and batch statistics is the train/test mismatch of small-batch BN; what
remains against BN at a large B is the cost of training with noisy small-batch statistics.

For BN* (BN frozen into an affine, the detection baseline), ``frozen_bn_statistics`` measures how far the
statistics a transferred backbone meets on new data are from the frozen ones, and ``refit_frozen_bn``
re-estimates them there (then frozen again).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupnorm.convert import set_devices
from groupnorm.nn.norm import FrozenBatchNorm
from groupnorm.train import distributed

__all__ = [
    "batch_norms",
    "batch_statistics_mode",
    "frozen_bn_statistics",
    "precise_bn",
    "refit_frozen_bn",
    "statistics_shift",
]


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers of ``model`` that keep running statistics (BN, SyncBN, Batch Renorm; not BN*)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def _kept(model: nn.Module, bns: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Restore the BN buffers, momenta, devices and training flags of ``model`` afterwards."""
    buffers = [{k: v.clone() for k, v in m.state_dict().items()} for m in bns]
    momenta = [m.momentum for m in bns]
    limits = [(getattr(m, "r_max", None), getattr(m, "d_max", None)) for m in bns]
    devices = {id(m): m.devices for m in model.modules() if hasattr(m, "devices")}
    modes = {id(m): m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, state, momentum, (r_max, d_max) in zip(bns, buffers, momenta, limits, strict=True):
            m.load_state_dict(state)
            m.momentum = momentum
            if r_max is not None:
                m.r_max, m.d_max = r_max, d_max
        for m in model.modules():
            if id(m) in devices:
                m.devices = devices[id(m)]
            m.training = modes[id(m)]


@contextlib.contextmanager
def precise_bn(model: nn.Module, loader, device: torch.device, images: int = 10000) -> Iterator[None]:
    """A context in which ``model``'s BN layers hold statistics re-estimated on ``images`` images of
    ``loader`` (training images, in order, no augmentation) with the current weights; restored after.

    Each layer's mean and variance are the average over batches of the loader's batch statistics (one
    device per batch: the loader's batches are large), averaged over processes under torchrun.
    """
    bns = batch_norms(model)
    with _kept(model, bns), torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        _plain_batch_norm(model, bns)
        seen = 0
        for x, _ in loader.epoch(0):
            model(x.to(device, non_blocking=True))
            seen += len(x)
            if seen >= images:
                break
        if distributed.all_reduce_sum([1.0], device)[0] > 1:
            world = torch.distributed.get_world_size()
            for m in bns:
                for buf in (m.running_mean, m.running_var):
                    torch.distributed.all_reduce(buf)
                    buf.div_(world)
        model.eval()
        yield


def _plain_batch_norm(model: nn.Module, bns: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Every layer in eval mode but the BN layers, which take the statistics of each whole batch (one device;
    Batch Renorm without its corrections)."""
    set_devices(model, 1)
    model.eval()
    for m in bns:
        m.train()
        if hasattr(m, "r_max"):
            m.r_max, m.d_max = 1.0, 0.0


@contextlib.contextmanager
def batch_statistics_mode(model: nn.Module) -> Iterator[None]:
    """``model`` evaluates its BN layers with the statistics of each batch (training mode, one device per
    batch, running statistics untouched); every other layer in eval mode. Restored after."""
    bns = batch_norms(model)
    with _kept(model, bns):
        _plain_batch_norm(model, bns)
        for m in bns:
            m.momentum = 0.0  # running = running: nothing is updated
        yield


@torch.no_grad()
def frozen_bn_statistics(
    body: nn.Module, batches: Iterable[Tensor], *, batch_normalized: bool = False
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per BN* layer of ``body`` (by module name): the per-channel mean and (biased) variance of its input over
    every position of every batch, in float64.

    ``batch_normalized=False``: the layers normalise with their frozen statistics, as BN* does, so each layer
    sees what the frozen backbone gives it. ``True``: during this pass each layer normalises with the
    statistics of the current batch instead (PreciseBN's pass), so a layer's input no longer carries the
    mismatch of the layers before it.
    """
    layers = {name: m for name, m in body.named_modules() if isinstance(m, FrozenBatchNorm)}
    sums: dict[str, list] = {name: [0.0, 0.0, 0] for name in layers}

    def hook(name: str):
        def fn(m: FrozenBatchNorm, args: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            x = args[0]
            dims = [0, *range(2, x.dim())]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            shifted = x.double() - m.running_mean.double().view(shape)  # shifted sums: no cancellation
            acc = sums[name]
            acc[0] = acc[0] + shifted.sum(dims)
            acc[1] = acc[1] + shifted.square().sum(dims)
            acc[2] += x.numel() // x.shape[1]
            if batch_normalized:
                return F.batch_norm(x, None, None, m.weight, m.bias, training=True, eps=m.eps)
            return None

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        for x in batches:
            body(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, (s1, s2, count) in sums.items():
        if not count:
            raise ValueError(f"frozen_bn_statistics: layer {name!r} saw no input (no batches, or not on the path)")
        mean = s1 / count
        out[name] = (layers[name].running_mean.double() + mean, (s2 / count - mean.square()).clamp_min(0.0))
    return out


def statistics_shift(layer: FrozenBatchNorm, mean: Tensor, var: Tensor) -> dict[str, float]:
    """How far a BN* layer's frozen statistics are from ``mean`` and ``var`` (those of the data it meets):
    ``mean_shift``, the channels' average |mean - frozen mean| in frozen standard deviations, and
    ``sd_factor``, the channels' geometric-average factor between the two standard deviations (>= 1, either
    way: 2 means off by 2x, up or down)."""
    frozen_var = layer.running_var.double() + layer.eps
    shift = ((mean - layer.running_mean.double()).abs() / frozen_var.sqrt()).mean()
    log_ratio = 0.5 * ((var + layer.eps) / frozen_var).log().abs().mean()
    return {"mean_shift": float(shift), "sd_factor": math.exp(float(log_ratio))}


@torch.no_grad()
def refit_frozen_bn(body: nn.Module, batches: Iterable[Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Replace every BN* layer's frozen mean and variance by those of its input over ``batches`` (one
    PreciseBN pass: ``frozen_bn_statistics(..., batch_normalized=True)``); weight and bias are kept. Returns
    the new statistics."""
    stats = frozen_bn_statistics(body, batches, batch_normalized=True)
    for name, m in body.named_modules():
        if name in stats:
            m.running_mean.copy_(stats[name][0])
            m.running_var.copy_(stats[name][1])
    return stats
