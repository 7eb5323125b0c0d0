"""The detection task: torchvision's Mask R-CNN (groupnorm.models.maskrcnn) on COCO-format data, COCOeval.

With ``devices`` D over W processes each process holds D/W virtual devices and B x D/W images per
step (B = images_per_device); a ``bn`` backbone takes statistics over each block of B images.
Besides the engine's records a run writes samples.json (predictions on a few validation images, for
the report). Resume is exact: every batch, and the RPN's and RoI heads' sampling, is a pure function
of (seed, epoch, step, rank). Evaluation is pycocotools' COCOeval on the validation split, on rank 0
over the predictions gathered from every process, every ``eval_every`` epochs and at the end.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from groupnorm.data.coco import CocoDataset, DetectionLoader
from groupnorm.data.scenes import default_scenes_root, ensure_scenes
from groupnorm.io import atomic_write_json
from groupnorm.models.maskrcnn import build_mask_rcnn, load_backbone_weights, optimizer_groups
from groupnorm.nn.norm import FrozenBatchNorm
from groupnorm.train import distributed
from groupnorm.train.bn_eval import frozen_bn_statistics, refit_frozen_bn, statistics_shift
from groupnorm.train.coco_eval import IOU_TYPES, METRICS, coco_evaluate, to_coco_results
from groupnorm.train.detection_config import DetectionConfig
from groupnorm.train.distributed import Dist
from groupnorm.train.engine import TASKS
from groupnorm.train.task import Task

__all__ = ["LOSSES", "DetectionTask", "dataset_paths", "evaluate_detector", "open_datasets"]

LOSSES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
SAMPLE_SCORE = 0.3  # predictions kept in samples.json score at least this
SAMPLES = "samples.json"
BACKBONE_STATS = "backbone_stats.json"  # BN* runs: how far the frozen statistics are from the training images'
STATS_IMAGES = 1000  # training images that measure (and, backbone_stats="target", re-estimate) BN*'s statistics


def dataset_paths(cfg: DetectionConfig, *, generate: bool = True) -> dict[str, tuple[Path, Path]]:
    """{"train"/"val": (images folder, instances JSON)}; scenes are generated here on first use."""
    if cfg.dataset == "scenes":
        root = Path(cfg.data_dir) if cfg.data_dir else default_scenes_root()
        if generate:
            base = ensure_scenes(cfg.scene_spec, root, data_dir=cfg.fashion_mnist_dir or None)
        else:
            base = root / cfg.scene_spec.id
        splits = {"train": "train", "val": "val"}
    else:
        base = Path(cfg.data_dir)
        splits = {"train": cfg.train_split, "val": cfg.val_split}
    return {k: (base / s, base / "annotations" / f"instances_{s}.json") for k, s in splits.items()}


@functools.lru_cache(maxsize=4)
def _dataset(images_dir: str, annotation_file: str, train: bool) -> CocoDataset:
    return CocoDataset(images_dir, annotation_file, train=train)


def open_datasets(cfg: DetectionConfig) -> tuple[CocoDataset, CocoDataset]:
    """(train, val) of ``cfg`` (held in memory per process, so the runs of a sweep share them)."""
    paths = dataset_paths(cfg)
    train = _dataset(str(paths["train"][0]), str(paths["train"][1]), True)
    val = _dataset(str(paths["val"][0]), str(paths["val"][1]), False)
    if train.cat_ids != val.cat_ids:
        raise ValueError(f"train and val categories differ: {train.cat_ids} vs {val.cat_ids}")
    return train, val


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 257 + rank + 1


def _gather(obj: list, ctx: distributed.Dist) -> list:
    if ctx.world == 1:
        return obj
    parts: list[list] = [[] for _ in range(ctx.world)]
    torch.distributed.all_gather_object(parts, obj)
    return [x for part in parts for x in part]


@torch.no_grad()
def evaluate_detector(
    model: nn.Module, dataset: CocoDataset, ctx: distributed.Dist, batch_size: int = 8
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """COCOeval of ``model`` on ``dataset``: ({"bbox": {...}, "segm": {...}}, the COCO results), on every rank."""
    was_training = model.training
    model.eval()
    loader = DetectionLoader(dataset, batch_size, train=False, rank=ctx.rank, world=ctx.world)
    results: list[dict[str, Any]] = []
    for images, targets in loader.epoch(0):
        outputs = model([img.to(ctx.device) for img in images])
        ids = [int(t["image_id"]) for t in targets]
        results += to_coco_results(outputs, ids, dataset.cat_id_of_label)
    model.train(was_training)
    results = _gather(results, ctx)
    box: list[Any] = [None]
    if ctx.is_main:
        box[0] = coco_evaluate(dataset.coco, results, IOU_TYPES, image_ids=dataset.image_ids)
    if ctx.world > 1:
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0], results


def _flat_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """{"bbox_AP": 37.7, ...}: percent, as the paper's tables."""
    return {f"{t}_{k}": (None if metrics[t][k] is None else 100.0 * metrics[t][k]) for t in IOU_TYPES for k in METRICS}


def _samples(dataset: CocoDataset, results: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Predictions on the first ``count`` validation images, for the report's figure."""
    out = []
    for index in range(min(count, len(dataset))):
        info = dataset.image_info(index)
        dets = [r for r in results if r["image_id"] == info["id"] and r["score"] >= SAMPLE_SCORE]
        out.append(
            {
                "image_id": info["id"],
                "file": str(dataset.image_path(index).resolve()),
                "height": info["height"],
                "width": info["width"],
                "detections": sorted(dets, key=lambda r: -r["score"]),
            }
        )
    return out


class DetectionTask(Task[DetectionConfig]):
    """Mask R-CNN: the sum of torchvision's losses; box and mask AP of COCOeval."""

    name = "detection"
    stats: ClassVar[tuple[str, ...]] = ("loss", *LOSSES, "steps")

    @classmethod
    def check(cls, configs: Sequence[DetectionConfig], runs_dir: Path) -> None:
        """Each distinct model is built on the meta device (a norm spec that does not fit a layer raises
        ValueError, naming it); a COCO folder must hold its annotation files."""
        seen = set()
        for cfg in configs:
            key = json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("seed", "variant", "init")})
            if key not in seen:
                seen.add(key)
                try:
                    with torch.device("meta"):
                        build_mask_rcnn(cfg, 2)
                except ValueError as e:
                    raise ValueError(f"{cfg.id}: {e}") from None
            if cfg.dataset == "coco":
                for images_dir, annotations in dataset_paths(cfg, generate=False).values():
                    if not annotations.is_file() or not images_dir.is_dir():
                        raise FileNotFoundError(f"{cfg.id}: COCO split not found: {annotations} and {images_dir}/")

    @classmethod
    def cost(cls, cfg: DetectionConfig) -> float:
        """Images trained x pixels, plus a per-step overhead."""
        images = cfg.scene_train if cfg.dataset == "scenes" else 118_000
        pixels = (cfg.resize[0] / 96) ** 2
        return cfg.epochs * images * pixels * (1.0 + 2.0 / cfg.effective_batch)

    def __init__(self, cfg: DetectionConfig, ctx: Dist, local_devices: int, runs_dir: Path) -> None:
        super().__init__(cfg, ctx, local_devices, runs_dir)
        self.samples: list[dict[str, Any]] | None = None
        self.backbone_stats: dict[str, Any] | None = None

    def build(self) -> nn.Module:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.train_set, self.val_set = open_datasets(cfg)  # generates the scenes once, before the others read
        distributed.barrier()
        if not ctx.is_main:
            self.train_set, self.val_set = open_datasets(cfg)
        batch = cfg.images_per_device * self.local_devices
        self.train_loader = DetectionLoader(
            self.train_set, batch, train=True, seed=cfg.seed, rank=ctx.rank, world=ctx.world, hflip=cfg.hflip
        )
        torch.manual_seed(cfg.seed)
        return build_mask_rcnn(cfg, self.train_set.num_classes, devices=self.local_devices).to(ctx.device)

    def initialize(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """The backbone from a classification checkpoint (its fc dropped, a grey stem adapted to RGB)."""
        try:
            load_backbone_weights(model.backbone.body, state)
        except ValueError as e:
            raise ValueError(f"{self.cfg.id}: init={self.cfg.init!r}: {e}") from None
        if any(isinstance(m, FrozenBatchNorm) for m in model.backbone.body.modules()):
            self.backbone_stats = self._fit_frozen_statistics(model)

    def _backbone_inputs(self, model: nn.Module, batch: int = 8):
        """The first STATS_IMAGES training images as the backbone receives them (the detector's transform:
        resized, normalised, batched), in order, without augmentation."""
        loader = DetectionLoader(self.train_set, batch, train=False)
        training = model.training
        model.eval()
        try:
            for step, (images, _) in enumerate(loader.epoch(0)):
                if step * batch >= STATS_IMAGES:
                    break
                yield model.transform([img.to(self.ctx.device) for img in images])[0].tensors
        finally:
            model.train(training)

    def _fit_frozen_statistics(self, model: nn.Module) -> dict[str, Any]:
        """Measure, per BN* layer, how far the frozen statistics are from those of the training images (what
        the paper's BN* baseline meets on a new domain); with backbone_stats="target" re-estimate them there.
        Reads images only: no random state is drawn, so a BN* run trains as it would without this."""
        body = model.backbone.body
        layers = dict(body.named_modules())
        seen = frozen_bn_statistics(body, self._backbone_inputs(model))
        record: dict[str, Any] = {
            "images": min(STATS_IMAGES, len(self.train_set)),
            "backbone_stats": self.cfg.backbone_stats,
            "layers": [{"layer": name, **statistics_shift(layers[name], *mv)} for name, mv in seen.items()],
        }
        if self.cfg.backbone_stats == "target":
            refit_frozen_bn(body, self._backbone_inputs(model))
            after = frozen_bn_statistics(body, self._backbone_inputs(model))
            record["layers_after"] = [
                {"layer": name, **statistics_shift(layers[name], *mv)} for name, mv in after.items()
            ]
        return record

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return optimizer_groups(model, self.cfg.weight_decay, self.cfg.norm_weight_decay)

    def step(self, net: nn.Module, batch: Any, epoch: int, step: int) -> tuple[Tensor, Tensor]:
        images, targets = batch
        torch.manual_seed(_step_seed(self.cfg.seed, epoch, step, self.ctx.rank))  # the RPN's and heads' sampling
        images = [img.to(self.ctx.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.ctx.device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = net(images, targets)
        loss = sum(losses.values())
        with torch.no_grad():
            values = [loss.detach(), *(losses[k].detach() for k in LOSSES)]
            stats = torch.stack([v.double().cpu() for v in values] + [torch.tensor(1.0, dtype=torch.float64)])
        return loss, stats

    def epoch_metrics(self, sums: list[float]) -> dict[str, Any]:
        n = max(sums[-1], 1.0)
        return {
            "loss": sums[0] / n,
            **{k: sums[i + 1] / n for i, k in enumerate(LOSSES)},
            "images_seen": int(self.images_of(sums)),
        }

    def images_of(self, sums: list[float]) -> float:
        return sums[-1] / self.ctx.world * self.cfg.effective_batch

    def finite(self, entry: dict[str, Any]) -> bool:
        return bool(torch.isfinite(torch.tensor(float(entry["loss"]))))

    def evaluate(self, model: nn.Module, epoch: int, last: bool) -> dict[str, Any]:
        if not (last or (self.cfg.eval_every and epoch % self.cfg.eval_every == 0)):
            return {}
        t0 = time.perf_counter()
        metrics, results = evaluate_detector(model, self.val_set, self.ctx, self.cfg.eval_batch)
        if last:
            self.samples = _samples(self.val_set, results, self.cfg.sample_images)
        return {**_flat_metrics(metrics), "val_detections": len(results), "eval_seconds": time.perf_counter() - t0}

    def write_records(self, run_dir: Path) -> None:
        if self.backbone_stats is not None:
            atomic_write_json(run_dir / BACKBONE_STATS, self.backbone_stats)
        if self.samples is not None:
            atomic_write_json(run_dir / SAMPLES, {"images": self.samples})

    def log_line(self, entry: dict[str, Any]) -> str:
        ap = f"  box AP {entry['bbox_AP']:.1f}  mask AP {entry['segm_AP']:.1f}" if "bbox_AP" in entry else ""
        return f"loss {entry['loss']:.3f}  {entry['images_per_second']:.1f} img/s{ap}"

    def summary(self, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        """The last evaluation's box and mask APs (percent), and what the run was."""
        cfg = self.cfg
        evaluated = [m for m in metrics if "bbox_AP" in m]
        last = evaluated[-1] if evaluated else {}
        return {
            "variant": cfg.variant,
            "backbone_norm": cfg.backbone_norm,
            "fpn_norm": cfg.fpn_norm,
            "head": cfg.head,
            "head_norm": cfg.head_norm,
            "pretrained": bool(cfg.init),
            "backbone_stats": cfg.backbone_stats,
            "final_loss": metrics[-1]["loss"] if metrics else float("nan"),
            **{f"{t}_{k}": last.get(f"{t}_{k}") for t in IOU_TYPES for k in METRICS},
        }


TASKS[DetectionConfig] = DetectionTask
