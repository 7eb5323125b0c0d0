"""Percentiles of one module's responses on a fixed batch: how a layer's distribution moves during training.

A model names the module to watch in its ``probe_module`` attribute (a dotted name for
``model.get_submodule``; the VGG's is its last conv, so the responses are those before norm
and ReLU, as in the paper's Fig. 6). The probe runs the model in eval mode under no_grad on
the main process: it changes no weight, no BN running statistic and no random state, so a
run with probes trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["percentiles", "probe_batch", "probe_percentiles", "probed_module"]


def percentiles(values: Tensor, qs: Sequence[float]) -> list[float]:
    """The ``qs`` percentiles (0..100) of all elements of ``values``, interpolated linearly as numpy's default.

    Sorts instead of calling torch.quantile, which refuses inputs of more than 2**24 elements.
    """
    flat = values.detach().flatten().double().sort().values
    n = flat.numel()
    if n == 0:
        raise ValueError("percentiles of an empty tensor")
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        lo = min(int(pos), n - 1)
        hi = min(lo + 1, n - 1)
        out.append((flat[lo] + (flat[hi] - flat[lo]) * (pos - lo)).item())
    return out


def probed_module(model: nn.Module) -> nn.Module:
    """The module that ``model.probe_module`` names; ValueError if the model names none or a missing one."""
    name = getattr(model, "probe_module", None)
    if not name:
        raise ValueError(
            f"{type(model).__name__} has no probe_module attribute naming the module to probe "
            "(as the VGG names its last conv)"
        )
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__}.probe_module = {name!r} names no submodule") from None


@torch.no_grad()
def probe_percentiles(model: nn.Module, x: Tensor, qs: Sequence[float]) -> list[float]:
    """Percentiles ``qs`` of the output of ``model``'s probed module when the model (in eval mode) sees ``x``."""
    captured: list[Tensor] = []
    handle = probed_module(model).register_forward_hook(lambda m, args, out: captured.append(out.detach().clone()))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return percentiles(captured[0], qs)


def probe_batch(loader, images: int) -> Tensor:
    """The first ``images`` images of ``loader``'s epoch 0 (a validation loader: in order, no augmentation)."""
    parts, seen = [], 0
    for x, _ in loader.epoch(0):
        parts.append(x[: images - seen])
        seen += len(parts[-1])
        if seen >= images:
            break
    return torch.cat(parts)
