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


def _hashed_unless_default(default: Any) -> Any:
    """A setting added after runs were recorded: in the run id only where it differs from its default,
    so the ids of earlier runs (and their records) stay valid."""
    return field(default=default, metadata={"hash": "unless-default"})


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
    model: str = "resnet"  # resnet (CIFAR-style 6n+2) | resnet-s2 (its stride-2 stem) | vgg | resnet50 | ...
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
    # the percentile probe (groupnorm.train.probe): every probe_every iterations (0: off), the probe_percentiles
    # of the output of the model's probe_module on the first probe_images validation images, in probes.jsonl
    probe_every: int = _hashed_unless_default(0)
    probe_images: int = _hashed_unless_default(256)
    probe_percentiles: tuple[float, ...] = _hashed_unless_default((1.0, 20.0, 80.0, 99.0))
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
        for key in ("images_per_device", "devices", "epochs", "median_last", "width", "probe_images"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: no probe); got {self.probe_every}")
        qs = tuple(float(q) for q in self.probe_percentiles)
        if not qs or not all(0 <= q <= 100 for q in qs):
            raise ValueError(f"probe_percentiles must be numbers in 0..100; got {self.probe_percentiles}")
        object.__setattr__(self, "probe_percentiles", qs)  # one spelling, one run id
        if self.model in ("resnet", "resnet-s2") and (self.depth < 8 or (self.depth - 2) % 6):
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


def config_from(preset: Any, **fields: Any) -> TrainConfig:
    """A TrainConfig with every field it shares by name with ``preset`` (an experiment's preset
    dataclass), then ``fields`` (what varies across the grid: norm, seed, ...) on top."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name in names}
    return TrainConfig(**{**shared, **fields})


def scaled_lr(base_lr: float, images_per_device: int, reference: int = 32) -> float:
    """The paper's linear scaling: base_lr at ``reference`` images per device, proportional to B."""
    return base_lr * images_per_device / reference


def hashed_fields(cfg: TrainConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        how, value = f.metadata.get("hash", True), getattr(cfg, f.name)
        if how is True or (how == "unless-default" and value != f.default):
            out[f.name] = value
    return out


def run_id(cfg: TrainConfig) -> str:
    """A readable prefix and a hash of every field that changes the result."""
    digest = hashlib.sha256(json.dumps(hashed_fields(cfg), sort_keys=True).encode()).hexdigest()[:10]
    norm = cfg.norm.replace(":", "").replace("/", "-").replace("+", "_")
    data = {"fashion-mnist": "fmnist", "imagefolder": "folder"}.get(cfg.dataset, cfg.dataset)
    short = {"resnet": f"r{cfg.depth}w{cfg.width}", "resnet-s2": f"r{cfg.depth}s2w{cfg.width}"}
    model = short.get(cfg.model, cfg.model)
    return f"{data}_{model}_{norm}_b{cfg.images_per_device}_s{cfg.seed}_{digest}"
