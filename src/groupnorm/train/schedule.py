"""The learning rate of every step, the same rule for every task (groupnorm.train.config explains it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from groupnorm.train.config import RunConfig

__all__ = ["STEP_MILESTONES", "learning_rate", "lr_at"]

STEP_MILESTONES = (0.3, 0.6, 0.9)  # the paper's 30, 60, 90 of 100 epochs


def learning_rate(
    peak: float,
    progress: float,
    epochs: int,
    schedule: str,
    warmup_epochs: float,
    milestones: Sequence[float] = STEP_MILESTONES,
) -> float:
    """lr at ``progress`` epochs: linear warm-up from peak/10 (Goyal et al.), then cosine, or step
    decay (/10 at each of ``milestones``, fractions of ``epochs``)."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return peak * (0.1 + 0.9 * progress / warmup_epochs)
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-9)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup_epochs) / span)))
    if schedule == "step":
        return peak * 0.1 ** sum(progress >= m * epochs for m in milestones)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'step'")


def lr_at(cfg: RunConfig, progress: float) -> float:
    """The lr of run ``cfg`` at ``progress`` epochs."""
    return learning_rate(cfg.lr, progress, cfg.epochs, cfg.schedule, cfg.warmup_epochs, cfg.milestones)
