"""The classification task: images from memory (Fashion-MNIST, CIFAR-10) or folders, cross-entropy, error %.

The reported error (result.json ``error``) is the median val error of the last ``median_last`` epochs;
``probe_every`` records percentiles of one module's responses (groupnorm.train.probe) in probes.jsonl.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupnorm.convert import set_devices
from groupnorm.data.datasets import LOADERS, dataset_shape, load_image_data
from groupnorm.data.loader import FolderLoader, MemoryLoader
from groupnorm.models import build_model
from groupnorm.nn.spec import parse_norm_spec
from groupnorm.train import distributed, records
from groupnorm.train.bn_eval import batch_norms, batch_statistics_mode, precise_bn
from groupnorm.train.config import TrainConfig
from groupnorm.train.engine import TASKS
from groupnorm.train.probe import probe_batch, probe_percentiles, probed_module
from groupnorm.train.task import Task

__all__ = ["EVAL_BATCH", "ClassificationTask", "build_classifier", "engine_norm", "evaluate"]

EVAL_BATCH = 500
BN_DIAGNOSIS = ("val_error_precise_bn", "val_error_batch_stats")


# Models whose activation after a norm is a ReLU: the engine builds GN, LN and IN there fused with it.
FUSES_RELU = ("resnet", "resnet-s2")


def engine_norm(cfg: TrainConfig) -> str:
    """The spec the engine builds ``cfg``'s model with: ``cfg.norm``, or for GN, LN and IN in a CIFAR-style
    ResNet the same fused with the ReLU after it (``gn:8`` -> ``gn:8+relu``): groupnorm's fused kernel, one pass
    less over memory and the same numbers to the bit (tested), so the run id does not change."""
    spec = parse_norm_spec(cfg.norm)
    if cfg.model in FUSES_RELU and spec.kind in ("gn", "ln", "in") and not spec.act and not spec.ws:
        return f"{spec}+relu"
    return cfg.norm


def build_classifier(cfg: TrainConfig, num_classes: int, in_channels: int, devices: int) -> nn.Module:
    """``cfg``'s model (norms as :func:`engine_norm` says); a spec that does not fit a layer raises ValueError
    naming the run, the spec as given and the layer."""
    norm = engine_norm(cfg)
    try:
        return build_model(
            cfg.model,
            norm=norm,
            num_classes=num_classes,
            in_channels=in_channels,
            devices=devices,
            zero_init_last=cfg.zero_init_last,
            depth=cfg.depth,
            width=cfg.width,
        )
    except ValueError as e:
        raise ValueError(f"{cfg.id}: {str(e).replace(repr(norm), repr(cfg.norm))}") from None


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, keep_modes: bool = False) -> dict[str, float]:
    """Mean loss, top-1 and top-5 error (%) over the whole loader, summed over all processes; in eval mode,
    or (``keep_modes``) with each module's mode as it is (e.g. BN with batch statistics)."""
    was_training = model.training
    if not keep_modes:
        model.eval()
    loss_sum, wrong, wrong5, seen = 0.0, 0.0, 0.0, 0.0
    for x, y in loader.epoch(0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        wrong += (top[:, 0] != y).sum().item()
        wrong5 += (~(top == y[:, None]).any(1)).sum().item()
        seen += len(y)
    if not keep_modes:
        model.train(was_training)
    loss_sum, wrong, wrong5, seen = distributed.all_reduce_sum([loss_sum, wrong, wrong5, seen], device)
    n = max(seen, 1)
    return {"val_loss": loss_sum / n, "val_error": 100.0 * wrong / n, "val_top5_error": 100.0 * wrong5 / n}


class ClassificationTask(Task[TrainConfig]):
    """Cross-entropy on images; metrics train/val loss and error, the probe where ``probe_every``."""

    name = "classification"
    stats: ClassVar[tuple[str, ...]] = ("loss_sum", "wrong", "seen")
    compiles: ClassVar[bool] = True

    @classmethod
    def check(cls, configs: Sequence[TrainConfig], runs_dir: Path) -> None:
        """Build each distinct model on the meta device (no memory, no time): a spec that does not fit a
        layer raises ValueError, naming the layer, before anything trains; so does a probe on a model
        that names no module to probe."""
        seen = set()
        for cfg in configs:
            in_channels, num_classes = cls.data_shape(cfg)
            key = (cfg.model, cfg.norm, cfg.depth, cfg.width, in_channels, cfg.probe_every > 0)
            if key in seen:
                continue
            seen.add(key)
            with torch.device("meta"):
                model = build_classifier(cfg, num_classes, in_channels, 1)
            if cfg.probe_every:
                try:
                    probed_module(model)
                except ValueError as e:
                    raise ValueError(f"{cfg.id}: probe_every={cfg.probe_every}: {e}") from None

    @classmethod
    def data_shape(cls, cfg: TrainConfig) -> tuple[int, int]:
        """(in_channels, num_classes), without loading the data (an image folder: 3, 1000 placeholders)."""
        return dataset_shape(cfg.dataset) if cfg.dataset in LOADERS else (3, 1000)

    @classmethod
    def cost(cls, cfg: TrainConfig) -> float:
        """Images trained, plus a per-step overhead that small batches pay.

        Measured on the CIFAR-style ResNet on CPU: seconds per image ~ a + b / batch with b/a ~ 9.
        """
        images = cfg.train_images or 60000
        depth = cfg.depth / 8 if cfg.model in ("resnet", "resnet-s2") else 1
        return cfg.epochs * images * (1.0 + 9.0 / cfg.effective_batch) * depth

    # ------------------------------------------------------------------ setup
    def dataset_key(self) -> str:
        return self.cfg.dataset

    def loader(self, split: str, batch: int, train: bool):
        """A loader of ``split`` (train | val); ``train``: shuffled and augmented, else every image in order."""
        cfg, ctx = self.cfg, self.ctx
        if cfg.dataset == "imagefolder":
            common = {"size": cfg.image_size, "seed": cfg.seed, "rank": ctx.rank, "world": ctx.world,
                      "workers": cfg.workers, "channels_last": cfg.channels_last}  # fmt: skip
            return FolderLoader(Path(cfg.data_dir) / split, batch, train=train, **common)
        data = load_image_data(self.dataset_key(), cfg.train_images, cfg.val_images, cfg.data_dir or None)
        images, labels = (
            (data.train_images, data.train_labels) if split == "train" else (data.val_images, data.val_labels)
        )
        return MemoryLoader(images, labels, batch, train=train, augment=data.augment, mean=data.mean, std=data.std,
                            seed=cfg.seed, rank=ctx.rank, world=ctx.world, channels_last=cfg.channels_last,
                            per_image=cfg.input_norm == "per-image")  # fmt: skip

    def loaders(self, batch: int):
        train = self.loader("train", batch, train=True)
        val = self.loader("val", EVAL_BATCH, train=False)
        if self.cfg.dataset == "imagefolder":
            return train, val, len(train.classes), 3
        data = load_image_data(
            self.dataset_key(), self.cfg.train_images, self.cfg.val_images, self.cfg.data_dir or None
        )
        return train, val, data.num_classes, data.in_channels

    memory_format = torch.channels_last

    def build(self) -> nn.Module:
        cfg, ctx = self.cfg, self.ctx
        self.train_loader, self.val_loader, num_classes, in_channels = self.loaders(
            cfg.images_per_device * self.local_devices
        )
        torch.manual_seed(cfg.seed)
        model = build_classifier(cfg, num_classes, in_channels, self.local_devices)
        set_devices(model, self.local_devices)
        fmt = self.memory_format if cfg.channels_last else torch.preserve_format
        model = model.to(ctx.device, memory_format=fmt)
        self.probes: list[dict[str, Any]] = []
        self.probe_x = None
        if cfg.probe_every and ctx.is_main:
            self.probe_x = probe_batch(self.val_loader, cfg.probe_images).to(ctx.device)
        return model

    # ------------------------------------------------------------------ training
    def step(self, net: nn.Module, batch: Any, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        x, y = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        out = net(x)
        loss = F.cross_entropy(out, y)
        with torch.no_grad():
            n = torch.tensor(float(len(y)), dtype=torch.float64, device=y.device)
            stats = torch.stack([loss.detach().double() * len(y), (out.argmax(1) != y).sum().double(), n]).cpu()
        return loss, stats

    def _probe(self, model: nn.Module, iteration: int) -> None:
        qs = self.cfg.probe_percentiles
        values = probe_percentiles(model, self.probe_x, qs)
        self.probes.append(
            {
                "iteration": iteration,
                "epoch": iteration / len(self.train_loader),
                "percentiles": {f"{q:g}": v for q, v in zip(qs, values, strict=True)},
            }
        )

    def begin(self, model: nn.Module) -> None:
        if self.probe_x is not None and not self.probes:  # (a resumed run has its earlier probes)
            self._probe(model, 0)

    def after_step(self, model: nn.Module, iteration: int) -> None:
        if self.probe_x is not None and iteration % self.cfg.probe_every == 0:
            self._probe(model, iteration)

    def state(self) -> dict[str, Any]:
        return {"probes": self.probes} if self.probe_x is not None else {}

    def load_state(self, state: dict[str, Any]) -> None:
        self.probes = list(state.get("probes", []))

    def write_records(self, run_dir: Path) -> None:
        if self.probe_x is not None:
            records.write_probes(run_dir, self.probes)

    def epoch_metrics(self, sums: list[float]) -> dict[str, Any]:
        loss_sum, wrong, seen = sums
        return {"train_loss": loss_sum / seen, "train_error": 100.0 * wrong / seen, "images_seen": int(seen)}

    def images_of(self, sums: list[float]) -> float:
        return sums[2]

    def evaluate(self, model: nn.Module, epoch: int, last: bool) -> dict[str, Any]:
        out = evaluate(model, self.val_loader, self.ctx.device)
        if last and parse_norm_spec(self.cfg.norm).variant != "sync" and batch_norms(model):
            out.update(self.bn_diagnosis(model))
        return out

    def bn_diagnosis(self, model: nn.Module) -> dict[str, float]:
        """Val error of the final BN model with PreciseBN statistics, and with batch statistics in batches of
        the run's per-device size (groupnorm.train.bn_eval): why BN fails at small batches."""
        device = self.ctx.device
        with precise_bn(model, self.loader("train", EVAL_BATCH, train=False), device):
            precise = evaluate(model, self.val_loader, device)
        with batch_statistics_mode(model):
            val = self.loader("val", self.cfg.images_per_device, train=False)
            batch = evaluate(model, val, device, keep_modes=True)
        return dict(zip(BN_DIAGNOSIS, (precise["val_error"], batch["val_error"]), strict=True))

    def log_line(self, entry: dict[str, Any]) -> str:
        val = f"  val err {entry['val_error']:5.2f}%" if "val_error" in entry else ""
        return (
            f"train err {entry['train_error']:5.2f}%{val}  {entry['images_per_second']:.0f} img/s"
            if "train_error" in entry
            else super().log_line(entry)
        )

    def summary(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The reported error is the median val error of the last ``median_last`` epochs."""
        val = [m["val_error"] for m in metrics if "val_error" in m]
        train = [m["train_error"] for m in metrics]
        k = max(1, min(self.cfg.median_last, len(val)))
        nan = float("nan")
        return {
            "norm": self.cfg.norm,
            "error": statistics.median(val[-k:]) if val else nan,
            "train_error": statistics.median(train[-k:]) if train else nan,
            "final_val_error": val[-1] if val else nan,
            "best_val_error": min(val) if val else nan,
            "final_val_top5_error": metrics[-1].get("val_top5_error", nan) if metrics else nan,
            **{
                k: metrics[-1][k]
                for k in ("val_error_precise_bn", "val_error_batch_stats")
                if metrics and k in metrics[-1]
            },
        }


TASKS[TrainConfig] = ClassificationTask
