"""The video task: classification of clips (N, C, T, H, W) with 3D models, top-1 and top-5 of the final model.

A run may start from a 2D classifier's checkpoint (``init``), whose kernels are inflated to 3D
(groupnorm.models.resnet3d.load_inflated), as the paper starts I3D from ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from groupnorm.data.clips import CLIP_FAMILIES, CLIP_LENGTHS, clip_dataset_name
from groupnorm.data.datasets import dataset_shape
from groupnorm.models.resnet3d import load_inflated
from groupnorm.train.classification import ClassificationTask
from groupnorm.train.config import TrainConfig
from groupnorm.train.engine import TASKS

__all__ = ["VideoConfig", "VideoTask"]


@dataclass(frozen=True)
class VideoConfig(TrainConfig):
    """One video run: a clip dataset (``dataset`` a family, ``frames`` per clip) and a 3D model."""

    dataset: str = "moving-fashion"  # moving-fashion (generated) | clips (a folder of clips in data_dir)
    frames: int = 8
    model: str = "resnet3d"
    reference_images_per_device: int = 8  # lr = base_lr x clips per device / 8
    epochs: int = 10
    median_last: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames not in CLIP_LENGTHS:
            raise ValueError(f"frames must be one of {', '.join(map(str, CLIP_LENGTHS))}; got {self.frames!r}")

    @staticmethod
    def datasets() -> tuple[str, ...]:
        return CLIP_FAMILIES

    def data_name(self) -> str:
        return clip_dataset_name(self.dataset, self.frames)

    def hashed_fields(self) -> dict[str, Any]:
        """As recorded before ``frames`` was a field: the clip dataset by its registered name
        (``moving-fashion-t8``), so the ids of earlier video runs stay valid."""
        out = super().hashed_fields()
        out["dataset"] = self.data_name()
        del out["frames"]
        return out


class VideoTask(ClassificationTask):
    """Classification of clips: channels_last_3d, inflation from a 2D checkpoint, top-1/top-5 in the result."""

    name = "video"
    memory_format = torch.channels_last_3d
    compiles: ClassVar[bool] = False  # not measured in 3D

    @classmethod
    def data_shape(cls, cfg: VideoConfig) -> tuple[int, int]:  # type: ignore[override]
        return dataset_shape(cfg.data_name())

    @classmethod
    def cost(cls, cfg: VideoConfig) -> float:  # type: ignore[override]
        """Clips x frames, plus a per-step overhead."""
        return cfg.epochs * (cfg.train_images or 10000) * cfg.frames * (1.0 + 4.0 / cfg.effective_batch)

    def dataset_key(self) -> str:
        return self.cfg.data_name()

    def initialize(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """Inflate a 2D checkpoint (same names, 2D kernels) into the 3D model; keep its last gammas."""
        try:
            load_inflated(model, state)
        except ValueError as e:
            raise ValueError(f"{self.cfg.id}: init={self.cfg.init!r}: {e}") from None

    def summary(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """Also top-1 / top-5 accuracy (%) of the final model on the val clips (the paper's Table 8)."""
        out = super().summary(metrics)
        last = metrics[-1] if metrics else {}
        nan = float("nan")
        out["top1"] = 100.0 - last.get("val_error", nan)
        out["top5"] = 100.0 - last.get("val_top5_error", nan)
        return out


TASKS[VideoConfig] = VideoTask
