"""What a run is: a frozen dataclass whose hash names the run.

``RunConfig`` holds what every task shares (the batch, the optimiser, the schedule, initialisation
from an earlier run, how the run executes) and the naming: ``id`` = a readable slug + a hash of every
field that changes the result. Each task's config extends it (``TrainConfig`` here for classification
and video, ``DetectionConfig`` in groupnorm.train.detection).

One lr rule and one warm-up rule for every task (groupnorm.train.schedule):

- scaling (Goyal et al.'s linear rule): ``lr = base_lr x effective_batch / reference_batch``, the images of
  one optimiser step over the reference batch. ``reference_batch`` 0 (the default) means
  ``reference_images_per_device x devices``: the paper's 0.1 x B/32 with B images per device on a fixed
  number of devices. A preset that holds the optimiser's batch fixed while B varies (more virtual devices
  at smaller B) gives ``reference_batch`` and so trains every B at the same lr;
- warm-up: linear from lr/10 to lr over ``warmup_epochs``, then ``schedule`` (cosine, or step: /10
  at each of ``milestones``, fractions of training).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from groupnorm.train.schedule import STEP_MILESTONES

__all__ = ["SCHEDULES", "RunConfig", "TrainConfig", "config_from", "hashed_fields", "run_id", "scaled_lr", "slug"]

SCHEDULES = ("cosine", "step")


def unhashed(default: Any) -> Any:
    """A setting about how a run executes, not what it computes: left out of the run id."""
    return field(default=default, metadata={"hash": False})


def hashed_unless_default(default: Any) -> Any:
    """A setting added after runs were recorded: in the run id only where it differs from its default,
    so the ids of earlier runs (and their records) stay valid."""
    return field(default=default, metadata={"hash": "unless-default", "neutral": default})


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def slug(spec: str) -> str:
    """A norm spec as a file-name part: 'gn:8' -> 'gn8', 'gn/16' -> 'gn-16', 'gn:8+silu' -> 'gn8_silu'."""
    return spec.replace(":", "").replace("/", "-").replace("+", "_")


@dataclass(frozen=True)
class RunConfig:
    """What every run shares, whatever its task. Subclasses add their fields and ``name()``."""

    experiment: str = "train"
    # the batch: images_per_device on each of ``devices`` devices (virtual ones x torchrun processes)
    images_per_device: int = 32
    devices: int = 8
    # optimisation: SGD with momentum; the lr rule and the warm-up rule are in the module docstring
    epochs: int = 16
    base_lr: float = 0.1
    reference_images_per_device: int = 32
    reference_batch: int = hashed_unless_default(0)  # 0: reference_images_per_device x devices
    schedule: str = "cosine"  # cosine | step (/10 at each of milestones)
    milestones: tuple[float, ...] = hashed_unless_default(STEP_MILESTONES)
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    # start from an earlier run: a checkpoint path (relative to the runs directory, or absolute) that the
    # engine loads with weights_only=True and hands to the task (e.g. inflated to 3D, or a detection backbone)
    init: str = hashed_unless_default("")
    # torchrun processes the run is for (WORLD_SIZE when the config is made): a run of 2 processes and one
    # of 1 are different runs (their BN statistics and data order differ), so they never share records
    processes: int = field(default_factory=_world_size, metadata={"hash": "unless-default", "neutral": 1})
    # how it runs (not part of the run id)
    data_dir: str = unhashed("")
    threads: int = unhashed(0)  # torch threads (0: leave torch's default)
    checkpoint_seconds: float = unhashed(300.0)  # a mid-epoch checkpoint at most this often
    checkpoint_steps: int = unhashed(0)  # ... or every this many steps (0: off; for tests)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        for key in ("images_per_device", "devices", "epochs", "reference_images_per_device", "processes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int; got {value!r}")
        if self.devices % self.processes:
            raise ValueError(f"devices={self.devices} must be a multiple of processes={self.processes}")
        if not self.base_lr > 0 or self.warmup_epochs < 0:
            raise ValueError(f"need base_lr > 0 and warmup_epochs >= 0; got {self.base_lr}, {self.warmup_epochs}")
        ms = tuple(float(m) for m in self.milestones)
        if not all(0 < m < 1 for m in ms) or list(ms) != sorted(ms):
            raise ValueError(f"milestones must be increasing fractions of training in (0, 1); got {self.milestones!r}")
        object.__setattr__(self, "milestones", ms)  # one spelling, one run id
        for key in ("threads", "checkpoint_steps", "reference_batch"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0; got {getattr(self, key)!r}")

    def name(self) -> str:
        """The readable part of the run id (before the hash)."""
        return f"{self.experiment.replace('/', '-')}_b{self.images_per_device}_s{self.seed}"

    @property
    def lr(self) -> float:
        reference = self.reference_batch or self.reference_images_per_device * self.devices
        return self.base_lr * self.effective_batch / reference

    @property
    def effective_batch(self) -> int:
        return self.images_per_device * self.devices

    @property
    def id(self) -> str:
        return run_id(self)

    def hashed_fields(self) -> dict[str, Any]:
        """What the run id hashes: every field that changes the result."""
        return hashed_fields(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


C = TypeVar("C", bound=RunConfig)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """One classification run (images or clips; the paper's recipe, the same for every norm and batch size)."""

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
    # inputs standardised with the dataset's mean and std, or each image on its own ("per-image": an
    # experiment on why IN wins on this data, docs/results/groups.md); in-memory datasets only
    input_norm: str = hashed_unless_default("dataset")
    median_last: int = 5  # the reported error: median val error of the last k epochs
    channels_last: bool = True
    # the percentile probe (groupnorm.train.probe): every probe_every iterations (0: off), the probe_percentiles
    # of the output of the model's probe_module on the first probe_images validation images, in probes.jsonl
    probe_every: int = hashed_unless_default(0)
    probe_images: int = hashed_unless_default(256)
    probe_percentiles: tuple[float, ...] = hashed_unless_default((1.0, 20.0, 80.0, 99.0))
    workers: int = unhashed(8)  # imagefolder loader processes
    # the training step under torch.compile: "on", "off", or "auto" where it was measured to pay
    # (groupnorm.train.engine.compiles); float-level differences only, so not part of the run id
    torch_compile: str = unhashed("off")

    def __post_init__(self) -> None:
        """Reject a config that cannot run before anything trains."""
        from groupnorm.models import MODELS
        from groupnorm.nn.spec import parse_norm_spec

        super().__post_init__()
        parse_norm_spec(self.norm)
        choices = {"dataset": self.datasets(), "model": tuple(MODELS)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        for key in ("median_last", "width", "probe_images"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.input_norm not in ("dataset", "per-image"):
            raise ValueError(f"input_norm must be 'dataset' or 'per-image'; got {self.input_norm!r}")
        if self.input_norm != "dataset" and self.dataset == "imagefolder":
            raise ValueError("input_norm='per-image' needs an in-memory dataset (not imagefolder)")
        if self.torch_compile not in ("off", "on", "auto"):
            raise ValueError(f"torch_compile must be 'off', 'on' or 'auto'; got {self.torch_compile!r}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: no probe); got {self.probe_every}")
        qs = tuple(float(q) for q in self.probe_percentiles)
        if not qs or not all(0 <= q <= 100 for q in qs):
            raise ValueError(f"probe_percentiles must be numbers in 0..100; got {self.probe_percentiles}")
        object.__setattr__(self, "probe_percentiles", qs)
        if self.model in ("resnet", "resnet-s2") and (self.depth < 8 or (self.depth - 2) % 6):
            raise ValueError(f"depth of the CIFAR-style resnet must be 6n+2 (8, 14, 20, ...); got {self.depth}")
        if self.dataset in ("imagefolder", "clips") and not self.data_dir:
            raise ValueError(f"dataset {self.dataset} needs data_dir (a folder with train/ and val/ class folders)")

    @staticmethod
    def datasets() -> tuple[str, ...]:
        from groupnorm.data.datasets import image_datasets

        return (*image_datasets(), "imagefolder")

    def data_name(self) -> str:
        return {"fashion-mnist": "fmnist", "imagefolder": "folder"}.get(self.dataset, self.dataset)

    def name(self) -> str:
        short = {"resnet": f"r{self.depth}w{self.width}", "resnet-s2": f"r{self.depth}s2w{self.width}"}
        model = short.get(self.model, self.model)
        return f"{self.data_name()}_{model}_{slug(self.norm)}_b{self.images_per_device}_s{self.seed}"


def config_from(preset: Any, cls: type[C] = TrainConfig, **fields: Any) -> C:  # type: ignore[assignment]
    """A ``cls`` config with every field it shares by name with ``preset`` (an experiment's preset
    dataclass), then ``fields`` (what varies across the grid: norm, seed, ...) on top."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name in names}
    return cls(**{**shared, **fields})


def scaled_lr(base_lr: float, images_per_device: int, reference: int = 32) -> float:
    """The paper's linear scaling at a fixed number of devices: base_lr at ``reference`` images per device."""
    return base_lr * images_per_device / reference


def hashed_fields(cfg: RunConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        how, value = f.metadata.get("hash", True), getattr(cfg, f.name)
        if how is True or (how == "unless-default" and value != f.metadata["neutral"]):
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def run_id(cfg: RunConfig) -> str:
    """A readable prefix and a hash of every field that changes the result."""
    digest = hashlib.sha256(json.dumps(cfg.hashed_fields(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.name()}_{digest}"
