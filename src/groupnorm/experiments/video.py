"""The video experiment (paper Sec. 6.3, Table 8): BN and GN normalising over (T, H, W) in a 3D ResNet.

The paper trains ResNet-50 I3D on Kinetics-400 with 8 or 4 clips per GPU and 32- or 64-frame clips:
BN loses 1.2 points of top-1 accuracy from 8 to 4 clips per GPU, GN 0.2, and with 64-frame clips
GN gains more than BN. Here, at small scale: a 3D ResNet (groupnorm.models.ResNet3d) on clips of
real Fashion-MNIST garments whose class is their motion (groupnorm.data.clips), 8 virtual devices
for BN's per-device statistics, 8 and 4 clips per device, clips of 8 and 16 frames (the paper's 32
and 64 scaled down by 4), the same recipe for every norm (lr = base_lr x B / 8 at B clips per
device). Each run's result.json holds top-1 and top-5 accuracy of its final model on the val clips.

``--set model=resnet3d-inflated`` starts each run (its ``init``) from the 2D CifarResNet of the same norm
trained on Fashion-MNIST images in this experiment (records under ``runs/video/pretrain``), inflated to
3D by the engine's video task (the paper starts from ImageNet); ``--set dataset=clips
--set data_dir=DIR`` trains on a folder of clips (see groupnorm.data.clips).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupnorm.data.clips import CLIP_FAMILIES, CLIP_LENGTHS, clip_dataset_name
from groupnorm.io import atomic_write_json
from groupnorm.nn.spec import parse_norm_spec
from groupnorm.train.config import TrainConfig, config_from
from groupnorm.train.records import CHECKPOINT, read_json
from groupnorm.train.video import VideoConfig

__all__ = ["NAME", "PRESETS", "PRETRAIN", "PRETRAIN_EXPERIMENT", "Preset", "configs", "grid_pairs", "pretrain_configs"]

NAME = "video"
PRETRAIN_EXPERIMENT = f"{NAME}/pretrain"
GRIDS = ("paper", "full")
VIDEO_MODELS = ("resnet3d", "resnet3d-inflated", "i3d-resnet50")


@dataclass(frozen=True)
class Preset:
    """A grid of runs: every norm at every (clip length, clips per device) pair of ``grid``.

    ``grid="paper"``: Table 8's columns, i.e. the shortest clips at every clips-per-device and each
    longer clip length at the fewest clips per device only; ``grid="full"``: every pair.
    """

    dataset: str = "moving-fashion"  # moving-fashion (generated) | clips (a folder of clips in data_dir)
    model: str = "resnet3d"  # resnet3d | resnet3d-inflated | i3d-resnet50
    depth: int = 8
    width: int = 16
    norms: tuple[str, ...] = ("bn", "gn:8")
    clip_lengths: tuple[int, ...] = (8, 16)  # frames; the paper's 32 and 64 scaled down
    clips_per_device: tuple[int, ...] = (8, 4)
    grid: str = "paper"
    seeds: tuple[int, ...] = (0,)
    devices: int = 8
    train_clips: int = 6000
    val_clips: int = 2000
    epochs: int = 48  # the motion task keeps improving long after the image tasks flatten (docs/results/video.md)
    base_lr: float = 0.1
    reference_clips_per_device: int = 8  # lr = base_lr x clips per device / this
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    median_last: int = 12
    channels_last: bool = True
    data_dir: str = ""


PRESETS: dict[str, Preset] = {
    # End to end in about a minute: what the tests run.
    "smoke": Preset(
        clip_lengths=(4, 8),
        clips_per_device=(4, 2),
        seeds=(0,),
        devices=4,
        train_clips=256,
        val_clips=128,
        epochs=2,
        median_last=1,
    ),
    # The default: Table 8's 8-frame columns (8 and 4 clips per device), trained to convergence, one seed: about
    # 25 minutes on a quiet 2-core CPU.
    "quick": Preset(clip_lengths=(8,)),
    # Table 8's three columns (16-frame clips at 4 per device too), 3 seeds: about 2.5 hours on 2 cores.
    "medium": Preset(seeds=(0, 1, 2)),
    # Three seeds, 2 clips per device too, every pair of the grid (many hours on a CPU; minutes on a GPU).
    "full": Preset(clips_per_device=(8, 4, 2), grid="full", seeds=(0, 1, 2), train_clips=12000),
}

# The 2D source of resnet3d-inflated: the CifarResNet of the same norm, depth and width trained on
# Fashion-MNIST images with the paper's recipe (records in runs/video/pretrain).
PRETRAIN: dict[str, Any] = {
    "experiment": PRETRAIN_EXPERIMENT,
    "dataset": "fashion-mnist",
    "model": "resnet",
    "images_per_device": 32,
    "devices": 8,
    "train_images": 20000,
    "val_images": 2000,
    "epochs": 4,
    "median_last": 1,
}


def _check(preset: Preset) -> None:
    if preset.dataset not in CLIP_FAMILIES:
        raise ValueError(f"video: dataset must be one of {', '.join(CLIP_FAMILIES)}; got {preset.dataset!r}")
    if preset.dataset == "clips" and not preset.data_dir:
        raise ValueError("video: dataset clips needs data_dir (a folder with train/<class>/<clip> and val/...)")
    if preset.model not in VIDEO_MODELS:
        raise ValueError(f"video: model must be one of {', '.join(VIDEO_MODELS)}; got {preset.model!r}")
    if preset.grid not in GRIDS:
        raise ValueError(f"video: grid must be one of {', '.join(GRIDS)}; got {preset.grid!r}")
    for key in ("norms", "clip_lengths", "clips_per_device", "seeds"):
        if not getattr(preset, key):
            raise ValueError(f"video: {key} must not be empty")
    bad = [t for t in preset.clip_lengths if t not in CLIP_LENGTHS]
    if bad:
        raise ValueError(
            f"video: clip_lengths must be among {', '.join(map(str, CLIP_LENGTHS))}; got {', '.join(map(str, bad))}"
        )
    if min(preset.clips_per_device) < 1 or preset.reference_clips_per_device < 1:
        raise ValueError(f"video: clips per device must be >= 1; got {preset.clips_per_device}")
    for norm in preset.norms:
        parse_norm_spec(norm)


def grid_pairs(preset: Preset) -> list[tuple[int, int]]:
    """(clip length, clips per device) pairs of the preset's grid, in Table 8's order."""
    lengths, per_device = sorted(set(preset.clip_lengths)), sorted(set(preset.clips_per_device), reverse=True)
    if preset.grid == "full":
        return [(t, b) for t in lengths for b in per_device]
    return [(lengths[0], b) for b in per_device] + [(t, per_device[-1]) for t in lengths[1:]]


def _pretrain_config(preset: Preset, norm: str) -> TrainConfig:
    return TrainConfig(**PRETRAIN, norm=norm, depth=preset.depth, width=preset.width)


def pretrain_configs(preset: Preset) -> list[TrainConfig]:
    """The 2D runs whose checkpoints ``resnet3d-inflated`` starts from, one per norm (none otherwise)."""
    if preset.model != "resnet3d-inflated":
        return []
    return [_pretrain_config(preset, n) for n in dict.fromkeys(preset.norms)]


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[VideoConfig]:
    """Every run of the preset; a preset that cannot run raises ValueError before anything trains."""
    _check(preset)
    inflated = preset.model == "resnet3d-inflated"
    out = []
    for frames, per_device in grid_pairs(preset):
        for norm in preset.norms:
            init = f"{PRETRAIN_EXPERIMENT}/{_pretrain_config(preset, norm).id}/{CHECKPOINT}" if inflated else ""
            for seed in preset.seeds:
                out.append(
                    config_from(
                        preset,
                        VideoConfig,
                        experiment=NAME,
                        frames=frames,
                        model="resnet3d" if inflated else preset.model,
                        init=init,
                        norm=norm,
                        zero_init_last=not inflated,  # pretrained gammas are kept
                        images_per_device=per_device,
                        seed=seed,
                        train_images=preset.train_clips,
                        val_images=preset.val_clips,
                        reference_images_per_device=preset.reference_clips_per_device,
                    )
                )
    return out


def prepare(preset: Preset, cfgs: list[VideoConfig], runs_dir: Path, log: Callable[[str], None] = print) -> None:
    """Generate (or convert) each clip length's data once, before parallel runs read it; refuse to mix
    the runs of two clip folders in one records directory (data_dir is not part of a run id)."""
    from groupnorm.data.datasets import load_image_data

    if preset.dataset == "clips":
        _check_dataset_marker(preset, Path(runs_dir) / NAME)
    for frames in dict.fromkeys(c.frames for c in cfgs):
        key = clip_dataset_name(preset.dataset, frames)
        load_image_data(key, preset.train_clips, preset.val_clips, preset.data_dir or None)


def _check_dataset_marker(preset: Preset, experiment_dir: Path) -> None:
    marker = experiment_dir / "dataset.json"
    here = {"dataset": preset.dataset, "data_dir": str(Path(preset.data_dir).resolve())}
    if marker.is_file():
        there = read_json(marker)
        if there != here:
            raise ValueError(
                f"video: the records in {experiment_dir} were trained on {there['data_dir']}, not {here['data_dir']}; "
                "use another --runs directory for another folder of clips"
            )
    else:
        atomic_write_json(marker, here)
