"""The video experiment (paper Sec. 6.3, Table 8): BN and GN normalising over (T, H, W) in a 3D ResNet.

The paper trains ResNet-50 I3D on Kinetics-400 with 8 or 4 clips per GPU and 32- or 64-frame clips:
BN loses 1.2 points of top-1 accuracy from 8 to 4 clips per GPU, GN 0.2, and with 64-frame clips
GN gains more than BN. Here, at small scale: a 3D ResNet (groupnorm.models.ResNet3d) on clips of
real Fashion-MNIST garments whose class is their motion (groupnorm.data.clips), 8 virtual devices
for BN's per-device statistics, 8 and 4 clips per device, clips of 8 and 16 frames (the paper's 32
and 64 scaled down by 4), the same recipe for every norm (lr = base_lr x B / 8 at B clips per
device). After training, each run's final checkpoint is evaluated for top-1 and top-5 accuracy
(``eval.json`` beside its records).

``--set model=resnet3d-inflated`` starts from the 2D CifarResNet of the same norm pretrained on
Fashion-MNIST images, inflated to 3D (the paper starts from ImageNet); ``--set dataset=clips
--set data_dir=DIR`` trains on a folder of clips (see groupnorm.data.clips).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from groupnorm.data.clips import CLIP_LENGTHS, clip_dataset_name, dataset_frames
from groupnorm.io import atomic_write_json, cache_dir
from groupnorm.nn.spec import parse_norm_spec
from groupnorm.train.config import TrainConfig, config_from
from groupnorm.train.loop import check_buildable
from groupnorm.train.records import Record, load_checkpoint, load_records
from groupnorm.train.sweep import run_sweep

__all__ = [
    "EVAL",
    "NAME",
    "PRESETS",
    "PRETRAIN",
    "Preset",
    "configs",
    "ensure_pretrained",
    "evaluate_run",
    "evaluate_runs",
    "pretrain_configs",
    "run",
    "video_cost",
]

NAME = "video"
EVAL = "eval.json"  # per run: top-1 / top-5 accuracy of the final checkpoint on the val clips
FAMILIES = ("moving-fashion", "clips")
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
    seeds: tuple[int, ...] = (0, 1)
    devices: int = 8
    train_clips: int = 6000
    val_clips: int = 2000
    epochs: int = 10
    base_lr: float = 0.1
    reference_clips_per_device: int = 8  # lr = base_lr x clips per device / this
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    median_last: int = 3
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
    # The default: ~20 minutes on a quiet 2-core CPU.
    "quick": Preset(),
    # Three seeds, 2 clips per device too, every pair of the grid (hours on a CPU; minutes on a GPU).
    "full": Preset(clips_per_device=(8, 4, 2), grid="full", seeds=(0, 1, 2), train_clips=12000, epochs=16),
}

# The 2D source of resnet3d-inflated (groupnorm.models.resnet3d.PRETRAINED_2D names this recipe): the
# CifarResNet of the same norm, depth and width trained on Fashion-MNIST images with the paper's recipe.
PRETRAIN: dict[str, Any] = {
    "experiment": "video-pretrain-2d",
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
    if preset.dataset not in FAMILIES:
        raise ValueError(f"video: dataset must be one of {', '.join(FAMILIES)}; got {preset.dataset!r}")
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


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[TrainConfig]:
    """Every run of the preset; a preset that cannot run raises ValueError before anything trains."""
    _check(preset)
    out = []
    for frames, per_device in grid_pairs(preset):
        for norm in preset.norms:
            for seed in preset.seeds:
                out.append(
                    config_from(
                        preset,
                        experiment=NAME,
                        dataset=clip_dataset_name(preset.dataset, frames),
                        norm=norm,
                        zero_init_last=preset.model != "resnet3d-inflated",  # pretrained gammas are kept
                        images_per_device=per_device,
                        seed=seed,
                        train_images=preset.train_clips,
                        val_images=preset.val_clips,
                        reference_images_per_device=preset.reference_clips_per_device,
                    )
                )
    return out


def video_cost(cfg: TrainConfig) -> float:
    """Relative cost of a run for the sweep's ETA and packing: clips x frames, plus a per-step overhead."""
    frames = dataset_frames(cfg.dataset) or 1
    return cfg.epochs * (cfg.train_images or 10000) * frames * (1.0 + 4.0 / cfg.effective_batch)


# ---------------------------------------------------------------------------------------
# the 2D source of resnet3d-inflated


def pretrain_configs(norms: list[str] | tuple[str, ...], depth: int, width: int) -> list[TrainConfig]:
    """The 2D runs whose checkpoints ``resnet3d-inflated`` starts from, one per norm."""
    return [TrainConfig(**PRETRAIN, norm=n, depth=depth, width=width) for n in dict.fromkeys(norms)]


def ensure_pretrained(
    norms: list[str] | tuple[str, ...],
    *,
    depth: int,
    width: int,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Train (once; records under the cache) the 2D source of each norm and publish its weights where
    ``resnet3d-inflated`` reads them (groupnorm.models.resnet3d.pretrained_2d_path)."""
    from groupnorm.models.resnet3d import pretrained_2d_path
    from groupnorm.train.records import save_checkpoint

    cfgs = pretrain_configs(norms, depth, width)
    paths = [pretrained_2d_path(c.norm, depth, width) for c in cfgs]
    todo = [c for c, p in zip(cfgs, paths, strict=True) if not p.is_file()]
    if todo:
        root = cache_dir() / "pretrained" / "runs"
        log(f"video: pretraining the 2D source of resnet3d-inflated for {', '.join(c.norm for c in todo)}")
        results = run_sweep(todo, root, jobs=jobs, log=log)
        for cfg, result in zip(todo, results, strict=True):
            if result is None or result.get("status") != "finished":
                raise RuntimeError(f"video: 2D pretraining {cfg.id} did not finish ({result})")
            state = load_checkpoint(root / cfg.experiment / cfg.id / "checkpoint.pt")["model"]
            source = {"run_id": cfg.id, "val_error": float(result["error"]), "config": cfg.to_dict()}
            save_checkpoint(pretrained_2d_path(cfg.norm, depth, width), {"model": state, "source": source})
            log(f"video: 2D {cfg.norm} source ready (val error {result['error']:.2f}%)")
    return paths


# ---------------------------------------------------------------------------------------
# top-1 / top-5 of the final checkpoints


@torch.no_grad()
def evaluate_run(run_dir: Path | str, ks: tuple[int, ...] = (1, 5), batch: int = 200) -> dict[str, Any]:
    """Top-k accuracy (%) of a finished run's final checkpoint on its val clips (the model in eval mode)."""
    from groupnorm.data.datasets import load_image_data
    from groupnorm.data.loader import MemoryLoader
    from groupnorm.models import build_model
    from groupnorm.train.records import read_metrics

    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in _CONFIG_FIELDS})
    data = load_image_data(cfg.dataset, cfg.train_images, cfg.val_images, cfg.data_dir or None)
    with torch.device("meta"):  # shapes only: the weights come from the checkpoint
        model = build_model(
            cfg.model,
            norm=cfg.norm,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            depth=cfg.depth,
            width=cfg.width,
        )
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    model.load_state_dict(ckpt["model"], assign=True)
    model.eval()
    loader = MemoryLoader(
        data.val_images, data.val_labels, batch, mean=data.mean, std=data.std, train=False, channels_last=True
    )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    hits = {k: 0 for k in ks}
    loss, seen = 0.0, 0
    for x, y in loader.epoch(0):
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        top = out.topk(min(max(ks), out.shape[1]), dim=1).indices
        for k in ks:
            hits[k] += (top[:, :k] == y[:, None]).any(1).sum().item()
        seen += len(y)
    return {
        **{f"top{k}": 100.0 * hits[k] / seen for k in ks},
        "val_loss": loss / seen,
        "val_clips": seen,
        "epoch": int(ckpt.get("epoch", len(read_metrics(run_dir)))),
        "num_classes": data.num_classes,
    }


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def evaluate_runs(experiment_dir: Path | str, log: Callable[[str], None] = print) -> int:
    """Write ``eval.json`` (top-1 / top-5) for every finished run under ``experiment_dir`` that lacks one
    (or whose checkpoint is newer); return how many were evaluated."""
    done = 0
    for rec in load_records(Path(experiment_dir)):
        path, ckpt = rec.run_dir / EVAL, rec.run_dir / "checkpoint.pt"
        if not rec.finished or not ckpt.is_file():
            continue
        if path.is_file() and path.stat().st_mtime_ns >= ckpt.stat().st_mtime_ns:
            continue
        result = evaluate_run(rec.run_dir)
        atomic_write_json(path, result)
        done += 1
        log(f"video: {rec.run_dir.name}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%")
    return done


# ---------------------------------------------------------------------------------------


def _check_dataset_marker(preset: Preset, experiment_dir: Path) -> None:
    """Runs of a clip folder are named without the folder (data_dir is not part of a run id): refuse to
    mix two folders' runs in one records directory."""
    if preset.dataset != "clips":
        return
    marker = experiment_dir / "dataset.json"
    here = {"dataset": preset.dataset, "data_dir": str(Path(preset.data_dir).resolve())}
    if marker.is_file():
        there = json.loads(marker.read_text())
        if there != here:
            raise ValueError(
                f"video: the records in {experiment_dir} were trained on {there['data_dir']}, not {here['data_dir']}; "
                "use another --runs directory for another folder of clips"
            )
    else:
        atomic_write_json(marker, here)


def run(
    preset: Preset, runs_dir: Path | str, *, jobs: int | None = None, log: Callable[[str], None] = print
) -> list[Record]:
    """Train every run of ``preset`` not yet finished under ``runs_dir``, evaluate top-1 / top-5 of each
    finished run, and return the experiment's records."""
    from groupnorm.data.datasets import load_image_data

    cfgs = configs(preset, log)
    check_buildable(cfgs)  # a spec that does not fit the model fails here, before data or pretraining
    experiment_dir = Path(runs_dir) / NAME
    _check_dataset_marker(preset, experiment_dir)
    for dataset in dict.fromkeys(c.dataset for c in cfgs):  # generate (or convert) the clips once, here
        load_image_data(dataset, preset.train_clips, preset.val_clips, preset.data_dir or None)
    if preset.model == "resnet3d-inflated":
        ensure_pretrained(preset.norms, depth=preset.depth, width=preset.width, jobs=jobs, log=log)
    run_sweep(cfgs, runs_dir, jobs=jobs, log=log, cost=video_cost)
    evaluate_runs(experiment_dir, log)
    return load_records(experiment_dir)
