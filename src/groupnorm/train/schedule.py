"""Learning-rate schedules, as functions of training progress in epochs (fractional)."""

from __future__ import annotations

import math

__all__ = ["learning_rate"]

STEP_MILESTONES = (0.3, 0.6, 0.9)  # the paper's 30, 60, 90 of 100 epochs


def learning_rate(peak: float, progress: float, epochs: int, schedule: str, warmup_epochs: float) -> float:
    """lr at ``progress`` epochs: linear warm-up from peak/10 (Goyal et al.), then cosine or step decay."""
    if warmup_epochs > 0 and progress < warmup_epochs:
        return peak * (0.1 + 0.9 * progress / warmup_epochs)
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-9)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup_epochs) / span)))
    if schedule == "step":
        return peak * 0.1 ** sum(progress >= m * epochs for m in STEP_MILESTONES)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'step'")
