"""What one training run is: a frozen dataclass whose hash names the run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "hashed_fields", "run_id", "scaled_lr"]

SCHEDULES = ("cosine", "step")


def _unhashed(default: Any) -> Any:
    """A setting about how a run executes, not what it computes: left out of the run id."""
    return field(default=default, metadata={"hash": False})


@dataclass(frozen=True)
class TrainConfig:
    """One run of the classification engine (the paper's recipe, same for every norm and batch size)."""

    experiment: str = "train"
    # data
    dataset: str = "fashion-mnist"  # fashion-mnist | cifar10 | imagefolder
    train_images: int = 20000  # a fixed random subset (0: all)
    val_images: int = 0  # of the test split (0: all)
    image_size: int = 224  # imagefolder only
    # model
    model: str = "resnet"  # resnet (CIFAR-style 6n+2) | resnet50 (torchvision)
    depth: int = 8
    width: int = 16
    norm: str = "bn"
    zero_init_last: bool = True
    # the batch
    images_per_device: int = 32
    devices: int = 8  # all devices: virtual ones x torchrun processes
    # optimisation (paper: SGD 0.9, wd 1e-4 on every weight, lr 0.1 x B/32)
    epochs: int = 16
    base_lr: float = 0.1
    reference_images_per_device: int = 32
    schedule: str = "cosine"  # cosine | step (/10 at 30%, 60%, 90% of the epochs, as 30/60/90 of 100)
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    median_last: int = 5  # the reported error: median val error of the last k epochs
    seed: int = 0
    channels_last: bool = True
    # how it runs (not part of the run id)
    data_dir: str = _unhashed("")
    threads: int = _unhashed(0)  # torch threads (0: leave torch's default)
    checkpoint_seconds: float = _unhashed(300.0)  # a mid-epoch checkpoint at most this often
    checkpoint_steps: int = _unhashed(0)  # ... or every this many steps (0: off; for tests)
    workers: int = _unhashed(8)  # imagefolder loader processes

    def __post_init__(self) -> None:
        """Reject a config that cannot run before anything trains."""
        from groupnorm.data.datasets import LOADERS
        from groupnorm.models import MODELS
        from groupnorm.nn.spec import parse_norm_spec

        parse_norm_spec(self.norm)
        choices = {"dataset": (*LOADERS, "imagefolder"), "model": tuple(MODELS), "schedule": SCHEDULES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for key in ("images_per_device", "devices", "epochs", "median_last", "width"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.model == "resnet" and (self.depth < 8 or (self.depth - 2) % 6):
            raise ValueError(f"depth of the CIFAR-style resnet must be 6n+2 (8, 14, 20, ...); got {self.depth}")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ValueError("dataset imagefolder needs data_dir (a folder with train/ and val/ class folders)")

    @property
    def lr(self) -> float:
        return scaled_lr(self.base_lr, self.images_per_device, self.reference_images_per_device)

    @property
    def effective_batch(self) -> int:
        return self.images_per_device * self.devices

    @property
    def id(self) -> str:
        return run_id(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def scaled_lr(base_lr: float, images_per_device: int, reference: int = 32) -> float:
    """The paper's linear scaling: base_lr at ``reference`` images per device, proportional to B."""
    return base_lr * images_per_device / reference


def hashed_fields(cfg: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("hash", True)}


def run_id(cfg: TrainConfig) -> str:
    """A readable prefix and a hash of every field that changes the result."""
    digest = hashlib.sha256(json.dumps(hashed_fields(cfg), sort_keys=True).encode()).hexdigest()[:10]
    norm = cfg.norm.replace(":", "").replace("/", "-").replace("+", "_")
    data = {"fashion-mnist": "fmnist", "imagefolder": "folder"}.get(cfg.dataset, cfg.dataset)
    model = f"r{cfg.depth}w{cfg.width}" if cfg.model == "resnet" else cfg.model
    return f"{data}_{model}_{norm}_b{cfg.images_per_device}_s{cfg.seed}_{digest}"
