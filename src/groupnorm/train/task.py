"""What a task plugs into the run engine (groupnorm.train.engine): the part of a run that differs by task.

The engine owns the lifecycle (lock, config.json, skip or resume, the lr of each step, checkpoints,
progress, BN-buffer averaging, the divergence check, result.json). A task owns:

- ``build()``: data and model (on the device), ``train_loader`` (``len`` and ``epoch(epoch, start_step)``);
- ``initialize(model, state)``: load an earlier run's weights (``cfg.init``; the engine reads the file);
- ``param_groups(model)``: what the optimiser updates, with its weight decay;
- ``step(net, batch, epoch, step)``: the loss of one batch and the numbers to sum over the epoch;
- ``epoch_metrics(sums)`` and ``evaluate(model, epoch, last)``: one line of metrics.jsonl;
- ``summary(metrics)``: the task's part of result.json;
- class methods ``check(configs, runs_dir)`` (reject configs before anything trains) and ``cost(cfg)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from groupnorm.train.config import RunConfig
from groupnorm.train.distributed import Dist

__all__ = ["Task"]

C = TypeVar("C", bound=RunConfig)


class Task(Generic[C]):
    """The base of every task: defaults that fit most; see the module docstring."""

    name: ClassVar[str] = "task"
    stats: ClassVar[tuple[str, ...]] = ()  # what ``step`` returns, summed over the epoch and all processes
    compiles: ClassVar[bool] = False  # torch_compile="auto" may compile its training step (measured to pay)

    def __init__(self, cfg: C, ctx: Dist, local_devices: int, runs_dir: Path) -> None:
        self.cfg, self.ctx, self.local_devices, self.runs_dir = cfg, ctx, local_devices, runs_dir
        self.train_loader: Any = None

    # ------------------------------------------------------------------ before training
    @classmethod
    def check(cls, configs: Sequence[C], runs_dir: Path) -> None:
        """Raise ValueError (naming the run) for a config that cannot run; nothing trains before this."""

    @classmethod
    def cost(cls, cfg: C) -> float:
        """Relative cost of a run, for a sweep's ETA and packing."""
        return float(cfg.epochs)

    def build(self) -> nn.Module:
        raise NotImplementedError

    def initialize(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """Start from an earlier run's weights (``cfg.init``): by default a strict load_state_dict."""
        model.load_state_dict(state)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": self.cfg.weight_decay}]

    # ------------------------------------------------------------------ training
    def begin(self, model: nn.Module) -> None:
        """Called once the model is built and loaded (from a checkpoint or ``init``), before training."""

    def step(self, net: nn.Module, batch: Any, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        """(loss to backpropagate, float64 CPU vector of ``stats`` for this batch)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, iteration: int) -> None:
        """Called after every optimiser step (``iteration`` counts from 1 over the whole run)."""

    def epoch_metrics(self, sums: list[float]) -> dict[str, Any]:
        """The training part of an epoch's metrics from ``stats`` summed over the epoch and processes."""
        return dict(zip(self.stats, sums, strict=True))

    def images_of(self, sums: list[float]) -> float:
        """Images trained, from ``stats`` sums (for the images/s of metrics.jsonl)."""
        return 0.0

    def evaluate(self, model: nn.Module, epoch: int, last: bool) -> dict[str, Any]:
        """Validation metrics after ``epoch`` (1-based); ``last``: the final epoch. Called on every process."""
        return {}

    def finite(self, entry: dict[str, Any]) -> bool:
        """Whether training is still finite (the engine stops a diverged run)."""
        loss = entry.get("train_loss", entry.get("loss", 0.0))
        return bool(torch.isfinite(torch.tensor(float(loss))))

    def log_line(self, entry: dict[str, Any]) -> str:
        return f"loss {entry.get('train_loss', float('nan')):.3f}"

    # ------------------------------------------------------------------ state beyond model and optimiser
    def state(self) -> dict[str, Any]:
        """Extra state kept in checkpoints (e.g. the probes so far)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def write_records(self, run_dir: Path) -> None:
        """Write the task's own records (as of the last checkpoint), on the main process."""

    def summary(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The task's fields of result.json."""
        return {}
