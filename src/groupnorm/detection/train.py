"""The detection training loop: one code path for 1 process with virtual devices or N processes under torchrun.

    from groupnorm.detection import DetectionConfig, train_detection
    result = train_detection(DetectionConfig(backbone_norm="gn:8", ...), runs_dir="runs")

    torchrun --nproc_per_node 8 -m groupnorm.detection --set devices=8 ...   # 8 real devices (see __main__)

As the classification engine (groupnorm.train.loop): with ``devices`` D over W processes each
process holds D/W virtual devices and B x D/W images per step (B = images_per_device); a
``bn`` backbone takes statistics over each block of B images. Records go to
``runs/<experiment>/<run-id>/`` (config.json, metrics.jsonl one line per epoch, result.json,
checkpoint.pt, samples.json: predictions on a few validation images for the report); a run
checkpoints after every epoch and at most every ``checkpoint_seconds`` within one, and resumes
exactly: every batch, and the RPN's and RoI heads' sampling, is a pure function of
(seed, epoch, step, rank). Evaluation is pycocotools' COCOeval on the validation split, run
on rank 0 over the predictions gathered from every process.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupnorm.detection.config import DetectionConfig, detection_lr
from groupnorm.detection.data import CocoDataset, DetectionLoader
from groupnorm.detection.evaluate import IOU_TYPES, METRICS, coco_evaluate, to_coco_results
from groupnorm.detection.model import build_mask_rcnn, load_backbone_weights, optimizer_groups
from groupnorm.detection.scenes import default_scenes_root, ensure_scenes
from groupnorm.io import atomic_write_json
from groupnorm.train import distributed, records
from groupnorm.train.records import RunLock, load_checkpoint, save_checkpoint

__all__ = [
    "LOSSES",
    "check_detection_configs",
    "dataset_paths",
    "detection_cost",
    "evaluate_detector",
    "open_datasets",
    "run_dir_of",
    "train_detection",
]

LOSSES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
SAMPLE_SCORE = 0.3  # predictions kept in samples.json score at least this


def run_dir_of(cfg: DetectionConfig, runs_dir: Path | str) -> Path:
    return Path(runs_dir) / cfg.experiment / cfg.id


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


def detection_cost(cfg: DetectionConfig) -> float:
    """Relative cost of a run, for a sweep's ETA and packing: images trained x pixels, plus per-step overhead."""
    images = cfg.scene_train if cfg.dataset == "scenes" else 118_000
    pixels = (cfg.resize[0] / 96) ** 2
    return cfg.epochs * images * pixels * (1.0 + 2.0 / cfg.effective_batch)


def check_detection_configs(
    configs: list[DetectionConfig], runs_dir: Path | str, *, check_weights: bool = True
) -> None:
    """Reject configs that cannot run, before anything trains: each distinct model is built on the
    meta device (a norm spec that does not fit a layer raises ValueError, naming it), a COCO
    folder must hold its annotation files, and (``check_weights``) each pre-trained checkpoint
    must exist, come from a finished run and fit its backbone."""
    seen_models, seen_weights = set(), set()
    for cfg in configs:
        model_key = json.dumps({k: v for k, v in cfg.hashed_fields().items() if k not in ("seed", "variant")})
        if model_key not in seen_models:
            seen_models.add(model_key)
            try:
                with torch.device("meta"):
                    build_mask_rcnn(cfg, 2, load_weights=False)
            except ValueError as e:
                raise ValueError(f"{cfg.id}: {e}") from None
        if cfg.dataset == "coco":
            for images_dir, annotations in dataset_paths(cfg, generate=False).values():
                if not annotations.is_file() or not images_dir.is_dir():
                    raise FileNotFoundError(f"{cfg.id}: COCO split not found: {annotations} and {images_dir}/")
        path = cfg.pretrained_path(runs_dir)
        if (
            not check_weights
            or path is None
            or (path, cfg.backbone, cfg.depth, cfg.width, cfg.backbone_norm) in seen_weights
        ):
            continue
        seen_weights.add((path, cfg.backbone, cfg.depth, cfg.width, cfg.backbone_norm))
        if not path.is_file():
            raise FileNotFoundError(f"{cfg.id}: pre-trained backbone checkpoint not found: {path}")
        if (path.parent / records.CONFIG).is_file() and not (path.parent / records.RESULT).is_file():
            raise ValueError(f"{cfg.id}: the pre-training run {path.parent} has not finished")
        from groupnorm.models import build_model

        body = build_model(
            cfg.backbone, norm=cfg.backbone_norm, num_classes=1, in_channels=3, depth=cfg.depth, width=cfg.width
        )
        try:
            load_backbone_weights(body, path)
        except ValueError as e:
            raise ValueError(f"{cfg.id}: {e}") from None


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 257 + rank + 1


def _average_bn_buffers(model: nn.Module, world: int) -> None:
    """Running statistics averaged over processes, as over virtual devices (each process kept its own)."""
    if world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)


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


def summarize(cfg: DetectionConfig, metrics: list[dict[str, Any]], status: str, world: int) -> dict[str, Any]:
    """result.json: the last evaluation's box and mask APs (percent), and what the run was."""
    evaluated = [m for m in metrics if "bbox_AP" in m]
    last = evaluated[-1] if evaluated else {}
    return {
        "run_id": cfg.id,
        "status": status,
        "variant": cfg.variant,
        "backbone_norm": cfg.backbone_norm,
        "fpn_norm": cfg.fpn_norm,
        "head": cfg.head,
        "head_norm": cfg.head_norm,
        "pretrained": bool(cfg.pretrained),
        "images_per_device": cfg.images_per_device,
        "devices": cfg.devices,
        "processes": world,
        "effective_batch": cfg.effective_batch,
        "lr": cfg.lr,
        "epochs": len(metrics),
        "final_loss": metrics[-1]["loss"] if metrics else float("nan"),
        "seconds": metrics[-1]["seconds"] if metrics else 0.0,
        **{f"{t}_{k}": last.get(f"{t}_{k}") for t in IOU_TYPES for k in METRICS},
    }


def train_detection(
    cfg: DetectionConfig,
    runs_dir: Path | str,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the detection run ``cfg`` under ``runs_dir``; return its result."""
    ctx = distributed.setup()
    log = log or (lambda msg: print(msg, flush=True))
    if not ctx.is_main:
        log = lambda msg: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.devices % ctx.world:
        raise ValueError(f"devices={cfg.devices} must be a multiple of the {ctx.world} torchrun processes")
    run_dir = run_dir_of(cfg, runs_dir)
    result_path = run_dir / records.RESULT
    if result_path.is_file():
        return json.loads(result_path.read_text())
    lock = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        records.write_config(run_dir, cfg.to_dict())
    try:
        return _train(cfg, ctx, Path(runs_dir), run_dir, log, progress)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, ctx, runs_dir, run_dir, log, progress) -> dict[str, Any]:
    local_devices = cfg.devices // ctx.world
    batch = cfg.images_per_device * local_devices
    if ctx.is_main:
        train_set, val_set = open_datasets(cfg)  # generates the scenes once, before the other ranks read them
    distributed.barrier()
    if not ctx.is_main:
        train_set, val_set = open_datasets(cfg)
    loader = DetectionLoader(
        train_set, batch, train=True, seed=cfg.seed, rank=ctx.rank, world=ctx.world, hflip=cfg.hflip
    )
    torch.manual_seed(cfg.seed)
    model = build_mask_rcnn(cfg, train_set.num_classes, devices=local_devices, runs_dir=runs_dir).to(ctx.device)
    opt = torch.optim.SGD(
        optimizer_groups(model, cfg.weight_decay, cfg.norm_weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )
    n_acc = len(LOSSES) + 2  # total loss, each loss, steps
    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "metrics": [],
        "seconds": 0.0,
        "accum": torch.zeros(n_acc, dtype=torch.float64),
    }
    ckpt_path = run_dir / records.CHECKPOINT
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, ctx.device)
        model.load_state_dict(ckpt.pop("model"))
        opt.load_state_dict(ckpt.pop("optimizer"))
        state.update(ckpt)
        state["accum"] = state["accum"].cpu()
        log(f"[{cfg.id}] resuming at epoch {state['epoch'] + 1}, step {state['step']}")
    if ctx.is_main:
        records.write_metrics(run_dir, state["metrics"])  # drops lines of epochs the checkpoint lacks

    net: nn.Module = model
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    steps = len(loader)
    show_bar = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    status = "finished"
    lr = cfg.lr
    for epoch in range(state["epoch"], cfg.epochs):
        net.train()
        start_step = state["step"]
        accum = state["accum"]
        steps_before = accum[-1].item()
        t0, last_ckpt = time.perf_counter(), time.perf_counter()
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=start_step, desc=f"{cfg.id} epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for step, (images, targets) in enumerate(loader.epoch(epoch, start_step), start_step):
            lr = detection_lr(cfg, epoch + step / steps)
            for group in opt.param_groups:
                group["lr"] = lr
            torch.manual_seed(_step_seed(cfg.seed, epoch, step, ctx.rank))  # the RPN's and RoI heads' sampling
            images = [img.to(ctx.device, non_blocking=True) for img in images]
            targets = [{k: v.to(ctx.device, non_blocking=True) for k, v in t.items()} for t in targets]
            losses = net(images, targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                values = [loss.detach(), *(losses[k].detach() for k in LOSSES)]
                accum += torch.stack([v.double().cpu() for v in values] + [torch.tensor(1.0, dtype=torch.float64)])
            if bar is not None:
                bar.update(1)
            now = time.perf_counter()
            due = (cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0) or (
                now - last_ckpt > cfg.checkpoint_seconds
            )
            if due and step + 1 < steps and ctx.is_main:
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        **state,
                        "epoch": epoch,
                        "step": step + 1,
                        "accum": accum,
                        "seconds": state["seconds"] + now - t0,
                    },
                )
                last_ckpt = now
        if bar is not None:
            bar.close()
        sums = distributed.all_reduce_sum(accum.tolist(), ctx.device)
        _average_bn_buffers(model, ctx.world)
        n = max(sums[-1], 1.0)
        train_seconds = time.perf_counter() - t0
        images_now = (sums[-1] / ctx.world - steps_before) * cfg.effective_batch  # trained since this session began
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": sums[0] / n,
            **{k: sums[i + 1] / n for i, k in enumerate(LOSSES)},
            "lr": lr,
            "images_seen": int(sums[-1] / ctx.world * cfg.effective_batch),
            "images_per_second": images_now / max(train_seconds, 1e-9),
        }
        finite = math.isfinite(entry["loss"])
        last_epoch = epoch + 1 == cfg.epochs
        if finite and (last_epoch or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            te = time.perf_counter()
            metrics, results = evaluate_detector(model, val_set, ctx, cfg.eval_batch)
            entry.update(_flat_metrics(metrics))
            entry["val_detections"] = len(results)
            entry["eval_seconds"] = time.perf_counter() - te
            if ctx.is_main and last_epoch:
                atomic_write_json(run_dir / "samples.json", {"images": _samples(val_set, results, cfg.sample_images)})
        entry["seconds"] = state["seconds"] + time.perf_counter() - t0
        state = {
            "epoch": epoch + 1,
            "step": 0,
            "metrics": [*state["metrics"], entry],
            "seconds": entry["seconds"],
            "accum": torch.zeros(n_acc, dtype=torch.float64),
        }
        if ctx.is_main:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), **state})
            records.write_metrics(run_dir, state["metrics"])
        ap = f"  box AP {entry['bbox_AP']:.1f}  mask AP {entry['segm_AP']:.1f}" if "bbox_AP" in entry else ""
        log(
            f"[{cfg.id}] epoch {epoch + 1}/{cfg.epochs}  loss {entry['loss']:.3f}  lr {lr:.4f}  "
            f"{entry['images_per_second']:.1f} img/s{ap}"
        )
        if not finite:
            status = "diverged"
            log(f"[{cfg.id}] diverged (loss {entry['loss']}); stopping")
            break
    result = summarize(cfg, state["metrics"], status, ctx.world)
    if ctx.is_main:
        records.write_result(run_dir, result)
    distributed.barrier()
    return result
