"""The training loop: one code path for 1 process with virtual devices or N processes under torchrun.

    from groupnorm.train import TrainConfig, train_run
    result = train_run(TrainConfig(norm="gn:8", images_per_device=2), runs_dir="runs")

    torchrun --nproc_per_node 2 -m groupnorm train --set norm=bn --set devices=2   # 2 real devices

Per-device BN: with ``devices`` D over W processes, each process holds D/W virtual devices
and a batch of B x D/W images; BN takes statistics over each block of B (see
groupnorm.nn.BatchNorm), the optimiser sees the whole batch. ``bn:sync`` shares statistics
across processes. A run checkpoints after every epoch and at most every
``checkpoint_seconds`` within one, and resumes exactly: every batch is a pure function of
(seed, epoch, step), so a resumed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from groupnorm.convert import set_devices
from groupnorm.data.datasets import LOADERS, dataset_shape, load_image_data
from groupnorm.data.loader import FolderLoader, MemoryLoader
from groupnorm.models import build_model
from groupnorm.train import distributed, records
from groupnorm.train.config import TrainConfig
from groupnorm.train.probe import probe_batch, probe_percentiles, probed_module
from groupnorm.train.records import RunBusy, RunLock, load_checkpoint, save_checkpoint
from groupnorm.train.schedule import learning_rate

__all__ = ["RunBusy", "check_buildable", "evaluate", "run_dir_of", "summarize", "train_run"]

EVAL_BATCH = 500


def check_buildable(configs: list[TrainConfig]) -> None:
    """Build each distinct model on the meta device (no memory, no time): a spec that does not fit a
    layer (C not divisible by G) raises ValueError, naming the layer, before anything trains; so does
    a probe (probe_every) on a model that names no module to probe."""
    seen = set()
    for cfg in configs:
        in_channels, num_classes = dataset_shape(cfg.dataset) if cfg.dataset in LOADERS else (3, 1000)
        key = (cfg.model, cfg.norm, cfg.depth, cfg.width, in_channels, cfg.probe_every > 0)
        if key in seen:
            continue
        seen.add(key)
        with torch.device("meta"):
            model = _build(cfg, num_classes, in_channels, 1)
        if cfg.probe_every:
            try:
                probed_module(model)
            except ValueError as e:
                raise ValueError(f"{cfg.id}: probe_every={cfg.probe_every}: {e}") from None


def _build(cfg: TrainConfig, num_classes: int, in_channels: int, devices: int) -> nn.Module:
    try:
        return build_model(
            cfg.model,
            norm=cfg.norm,
            num_classes=num_classes,
            in_channels=in_channels,
            devices=devices,
            zero_init_last=cfg.zero_init_last,
            depth=cfg.depth,
            width=cfg.width,
        )
    except ValueError as e:
        raise ValueError(f"{cfg.id}: {e}") from None


def run_dir_of(cfg: TrainConfig, runs_dir: Path | str) -> Path:
    return Path(runs_dir) / cfg.experiment / cfg.id


def _loaders(cfg: TrainConfig, ctx: distributed.Dist, batch: int):
    if cfg.dataset == "imagefolder":
        root = Path(cfg.data_dir)
        common = {
            "size": cfg.image_size,
            "seed": cfg.seed,
            "rank": ctx.rank,
            "world": ctx.world,
            "workers": cfg.workers,
            "channels_last": cfg.channels_last,
        }
        train = FolderLoader(root / "train", batch, train=True, **common)
        val = FolderLoader(root / "val", EVAL_BATCH, train=False, **common)
        return train, val, len(train.classes), 3
    data = load_image_data(cfg.dataset, cfg.train_images, cfg.val_images, cfg.data_dir or None)
    common = {
        "mean": data.mean,
        "std": data.std,
        "seed": cfg.seed,
        "rank": ctx.rank,
        "world": ctx.world,
        "channels_last": cfg.channels_last,
    }
    train = MemoryLoader(data.train_images, data.train_labels, batch, train=True, augment=data.augment, **common)
    val = MemoryLoader(data.val_images, data.val_labels, EVAL_BATCH, train=False, **common)
    return train, val, data.num_classes, data.in_channels


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device) -> tuple[float, float]:
    """(mean loss, error %) over the whole loader, summed over all processes."""
    was_training = model.training
    model.eval()
    loss_sum, wrong, seen = 0.0, 0.0, 0.0
    for x, y in loader.epoch(0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum").item()
        wrong += (out.argmax(1) != y).sum().item()
        seen += len(y)
    model.train(was_training)
    loss_sum, wrong, seen = distributed.all_reduce_sum([loss_sum, wrong, seen], device)
    return loss_sum / max(seen, 1), 100.0 * wrong / max(seen, 1)


def _average_bn_buffers(model: nn.Module, world: int) -> None:
    """Running statistics averaged over processes, as over virtual devices (each process kept its own)."""
    if world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)


def summarize(cfg: TrainConfig, metrics: list[dict[str, Any]], status: str, world: int) -> dict[str, Any]:
    """result.json: the reported error is the median val error of the last ``median_last`` epochs."""
    val = [m["val_error"] for m in metrics]
    train = [m["train_error"] for m in metrics]
    k = max(1, min(cfg.median_last, len(val)))
    return {
        "run_id": cfg.id,
        "status": status,
        "norm": cfg.norm,
        "images_per_device": cfg.images_per_device,
        "devices": cfg.devices,
        "processes": world,
        "effective_batch": cfg.effective_batch,
        "lr": cfg.lr,
        "epochs": len(metrics),
        "error": statistics.median(val[-k:]) if val else float("nan"),
        "train_error": statistics.median(train[-k:]) if train else float("nan"),
        "final_val_error": val[-1] if val else float("nan"),
        "best_val_error": min(val) if val else float("nan"),
        "seconds": metrics[-1]["seconds"] if metrics else 0.0,
    }


def train_run(
    cfg: TrainConfig,
    runs_dir: Path | str,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run ``cfg`` under ``runs_dir``; return its result."""
    ctx = distributed.setup()
    log = log or (lambda msg: print(msg, flush=True))
    if not ctx.is_main:
        log = lambda msg: None  # noqa: E731
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.devices % ctx.world:
        raise ValueError(f"devices={cfg.devices} must be a multiple of the {ctx.world} torchrun processes")
    local_devices = cfg.devices // ctx.world
    batch = cfg.images_per_device * local_devices

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
        return _train(cfg, ctx, run_dir, local_devices, batch, log, progress)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, ctx, run_dir, local_devices, batch, log, progress) -> dict[str, Any]:
    train_loader, val_loader, num_classes, in_channels = _loaders(cfg, ctx, batch)
    torch.manual_seed(cfg.seed)
    model = _build(cfg, num_classes, in_channels, local_devices)
    set_devices(model, local_devices)
    clips = getattr(train_loader, "images", None) is not None and train_loader.images.dim() == 5
    fmt = (torch.channels_last_3d if clips else torch.channels_last) if cfg.channels_last else torch.preserve_format
    model = model.to(ctx.device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "metrics": [],
        "seconds": 0.0,
        "accum": torch.zeros(3, dtype=torch.float64),  # loss sum, wrong, seen
        "probes": [],
    }
    ckpt_path = run_dir / records.CHECKPOINT
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, ctx.device)
        model.load_state_dict(ckpt.pop("model"))
        opt.load_state_dict(ckpt.pop("optimizer"))
        state.update(ckpt)
        state["accum"] = state["accum"].cpu()
        log(f"[{cfg.id}] resuming at epoch {state['epoch'] + 1}, step {state['step']}")
    steps = len(train_loader)
    probes = state["probes"]
    probe = None
    if cfg.probe_every and ctx.is_main:
        probe_x = probe_batch(val_loader, cfg.probe_images).to(ctx.device)

        def probe(iteration: int) -> None:
            values = probe_percentiles(model, probe_x, cfg.probe_percentiles)
            probes.append(
                {
                    "iteration": iteration,
                    "epoch": iteration / steps,
                    "percentiles": {f"{q:g}": v for q, v in zip(cfg.probe_percentiles, values, strict=True)},
                }
            )

        if not probes:
            probe(0)

    def write_records(metrics: bool = True) -> None:
        if metrics:
            records.write_metrics(run_dir, state["metrics"])  # drops lines of epochs the checkpoint lacks
        if probe is not None:
            records.write_probes(run_dir, probes)  # likewise: the probes of the checkpoint, no more

    if ctx.is_main:
        write_records()

    net: nn.Module = model
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    show_bar = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    status = "finished"
    for epoch in range(state["epoch"], cfg.epochs):
        net.train()
        start_step = state["step"]
        accum = state["accum"]
        seen_before = accum[2].item() * ctx.world  # images of this epoch trained before a resume
        t0, last_ckpt = time.perf_counter(), time.perf_counter()
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=steps,
                initial=start_step,
                desc=f"{cfg.id} epoch {epoch + 1}/{cfg.epochs}",
                leave=False,
                file=sys.stderr,
            )
        for step, (x, y) in enumerate(train_loader.epoch(epoch, start_step), start_step):
            lr = learning_rate(cfg.lr, epoch + step / steps, cfg.epochs, cfg.schedule, cfg.warmup_epochs)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if probe is not None and (epoch * steps + step + 1) % cfg.probe_every == 0:
                probe(epoch * steps + step + 1)
            with torch.no_grad():
                accum += torch.stack(
                    [
                        loss.detach().double() * len(y),
                        (out.argmax(1) != y).sum().double(),
                        torch.tensor(float(len(y)), dtype=torch.float64, device=y.device),
                    ]
                ).cpu()
            if bar is not None:
                bar.update(1)
            now = time.perf_counter()
            due = (cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0) or (
                now - last_ckpt > cfg.checkpoint_seconds
            )
            if due and step + 1 < steps and ctx.is_main:
                save_checkpoint(
                    run_dir / records.CHECKPOINT,
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
                write_records(metrics=False)
                last_ckpt = now
        if bar is not None:
            bar.close()
        loss_sum, wrong, seen = distributed.all_reduce_sum(accum.tolist(), ctx.device)
        _average_bn_buffers(model, ctx.world)
        val_loss, val_error = evaluate(model, val_loader, ctx.device)
        elapsed = time.perf_counter() - t0
        seconds = state["seconds"] + elapsed
        entry = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_error": 100.0 * wrong / seen,
            "val_loss": val_loss,
            "val_error": val_error,
            "lr": lr,
            "images_seen": int(seen),
            "seconds": seconds,
            "images_per_second": (seen - seen_before) / max(elapsed, 1e-9),
        }
        state = {
            "epoch": epoch + 1,
            "step": 0,
            "metrics": [*state["metrics"], entry],
            "seconds": seconds,
            "accum": torch.zeros(3, dtype=torch.float64),
            "probes": probes,
        }
        if ctx.is_main:
            save_checkpoint(
                run_dir / records.CHECKPOINT, {"model": model.state_dict(), "optimizer": opt.state_dict(), **state}
            )
            write_records()
        log(
            f"[{cfg.id}] epoch {epoch + 1}/{cfg.epochs}  train err {entry['train_error']:5.2f}%  "
            f"val err {val_error:5.2f}%  lr {lr:.4f}  {entry['images_per_second']:.0f} img/s"
        )
        if not math.isfinite(entry["train_loss"]):
            status = "diverged"
            log(f"[{cfg.id}] diverged (loss {entry['train_loss']}); stopping")
            break
    result = summarize(cfg, state["metrics"], status, ctx.world)
    if ctx.is_main:
        records.write_result(run_dir, result)
    distributed.barrier()
    return result
