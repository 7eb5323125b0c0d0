"""The run engine: one lifecycle for every task, 1 process with virtual devices or N under torchrun.

    from groupnorm.train import TrainConfig, train_run
    result = train_run(TrainConfig(norm="gn:8", images_per_device=2), runs_dir="runs")

    torchrun --nproc_per_node 2 -m groupnorm train --set norm=bn --set devices=2   # 2 real devices

A run is a config (its hash names ``runs/<experiment>/<run-id>/``) and a task (groupnorm.train.task)
chosen by the config's type. The engine takes the run's lock, writes config.json, returns the result
of a finished run, resumes an interrupted one from its checkpoint (every batch is a pure function of
(seed, epoch, step), so a resumed run ends with the same numbers as an uninterrupted one), loads
``cfg.init`` for a new one, sets the lr of each step (groupnorm.train.schedule), checkpoints after every
epoch and at most every ``checkpoint_seconds`` within one, averages BN running statistics over
processes, stops a diverged run and writes result.json.

Per-device BN: with ``devices`` D over W processes, each process holds D/W virtual devices and a batch
of B x D/W images; BN takes statistics over each block of B (groupnorm.nn.BatchNorm), the optimiser
sees the whole batch. ``bn:sync`` shares statistics across processes. Batch Renorm's r_max and d_max
follow the paper's ramp scaled to the run's steps (groupnorm.convert.set_renorm_limits).
"""

from __future__ import annotations

import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from groupnorm.convert import set_renorm_limits
from groupnorm.kernels import cpu as cpu_kernels
from groupnorm.nn.renorm import BatchRenorm
from groupnorm.nn.spec import parse_norm_spec
from groupnorm.train import distributed, records
from groupnorm.train.config import RunConfig
from groupnorm.train.records import RunLock
from groupnorm.train.schedule import lr_at
from groupnorm.train.task import Task

__all__ = [
    "COMPILE_PAYS",
    "TASKS",
    "check_configs",
    "compiles",
    "make_optimizer",
    "run_cost",
    "run_dir_of",
    "task_of",
    "train_run",
    "train_step",
    "training_net",
]

# config type -> task; filled by the task modules (groupnorm.train.__init__ imports them all)
TASKS: dict[type, type[Task]] = {}


def task_of(cfg: RunConfig) -> type[Task]:
    for klass in type(cfg).__mro__:
        if klass in TASKS:
            return TASKS[klass]
    raise TypeError(f"no task for a {type(cfg).__name__}; known: {', '.join(t.__name__ for t in TASKS)}")


def run_dir_of(cfg: RunConfig, runs_dir: Path | str) -> Path:
    return Path(runs_dir) / cfg.experiment / cfg.id


def check_configs(configs: list[RunConfig], runs_dir: Path | str = "runs", *, check_init: bool = True) -> None:
    """Reject every config that cannot run, before anything trains: each task's own checks, and
    (``check_init``) every ``init`` must name an existing checkpoint of a finished run."""
    by_task: dict[type[Task], list[RunConfig]] = {}
    for cfg in configs:
        by_task.setdefault(task_of(cfg), []).append(cfg)
    for task, cfgs in by_task.items():
        task.check(cfgs, Path(runs_dir))
    for cfg in configs:
        if check_init and cfg.init:
            _check_init(cfg, init_path(cfg, runs_dir))


def _check_init(cfg: RunConfig, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{cfg.id}: init={cfg.init!r}: no checkpoint at {path}")
    if (path.parent / records.CONFIG).is_file() and not (path.parent / records.RESULT).is_file():
        raise ValueError(f"{cfg.id}: init={cfg.init!r}: the run {path.parent} has not finished")


def run_cost(cfg: RunConfig) -> float:
    return task_of(cfg).cost(cfg)


def init_path(cfg: RunConfig, runs_dir: Path | str) -> Path:
    """Where ``cfg.init`` is: relative to the runs directory, or absolute."""
    path = Path(cfg.init)
    return path if path.is_absolute() else Path(runs_dir) / path


def load_init(cfg: RunConfig, runs_dir: Path | str) -> dict[str, torch.Tensor]:
    """The state dict that ``cfg.init`` names: an engine checkpoint's model, or a plain state dict."""
    path = init_path(cfg, runs_dir)
    _check_init(cfg, path)
    ckpt = records.load_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{cfg.id}: init {path}: expected a state dict or a checkpoint with a 'model' state dict")
    return state


def train_run(
    cfg: RunConfig,
    runs_dir: Path | str,
    *,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run ``cfg`` under ``runs_dir``; return its result."""
    task_type = task_of(cfg)
    ctx = distributed.setup()
    log = log or (lambda msg: print(msg, flush=True))
    if not ctx.is_main:
        log = lambda msg: None  # noqa: E731
    if cfg.processes != ctx.world:
        raise ValueError(
            f"{cfg.id} is a run of processes={cfg.processes}, launched with {ctx.world}: its records would mix "
            f"with another run's. Launch it with torchrun --nproc_per_node {cfg.processes}, or make the config "
            f"in the launched processes (processes is WORLD_SIZE by default)"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = run_dir_of(cfg, runs_dir)
    if (run_dir / records.RESULT).is_file():
        return records.read_result(run_dir)
    lock = None
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        records.write_config(run_dir, cfg.to_dict())
    try:
        task = task_type(cfg, ctx, cfg.devices // ctx.world, Path(runs_dir))
        return _train(task, run_dir, log, progress)
    finally:
        if lock is not None:
            lock.release()


def _average_bn_buffers(model: nn.Module, world: int) -> None:
    """Running statistics averaged over processes, as over virtual devices (each process kept its own)."""
    if world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            for buf in (m.running_mean, m.running_var):
                torch.distributed.all_reduce(buf)
                buf.div_(world)


# Norm kinds whose training step runs faster under torch.compile on the CPU (the batch-size study's ResNet-8,
# one thread, AVX-512 Xeon, train-step images/s compiled / eager in one process, docs/results.md; check with
# benchmarks/train_step.py --compile on|off): BN 1.09x at 32 and 1.30x at 2 images per device, FRN 2.06x,
# EvoNorm-S0 1.22x. Not here: GN, LN and IN (groupnorm's own fused kernels already; the compiled step was
# 0.93x) and Batch Renorm (1.88x, but its limits change every step, which would recompile every step).
COMPILE_PAYS = frozenset({"bn", "frn", "evonorm-s0"})


def compiles(task: Task) -> bool:
    """Whether the run's training steps run under torch.compile: ``torch_compile="on"``; or ``"auto"``
    for a task that allows it (``Task.compiles``), on the CPU, where inductor can build (a C++ compiler and
    Python's headers), for a norm in COMPILE_PAYS. Evaluation always runs the eager model."""
    mode = getattr(task.cfg, "torch_compile", "off")
    if mode != "auto":
        return mode == "on"
    if not task.compiles or task.ctx.device.type != "cpu" or not inductor_can_build():
        return False
    spec = parse_norm_spec(task.cfg.norm)
    return spec.kind in COMPILE_PAYS and not spec.variant


def inductor_can_build() -> bool:
    """A C++ compiler and Python.h (Debian's python3-dev): what torch.compile's CPU code needs."""
    return cpu_kernels.compiler() is not None and (Path(sysconfig.get_path("include")) / "Python.h").is_file()


def training_net(task: Task, model: nn.Module) -> nn.Module:
    """What the training steps call: the model, in DistributedDataParallel over processes, compiled where
    :func:`compiles` says (one compilation per run; inductor's on-disk cache serves the runs after it)."""
    net: nn.Module = model
    if task.ctx.world > 1:
        ids = [task.ctx.device.index] if task.ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if not compiles(task):
        return net
    # Each run compiles afresh: graphs that dynamo keeps from earlier compilations in this process (a sweep
    # worker's last run, a user's code) would otherwise turn shapes dynamic, and inductor fails on some
    # symbolic strides (e.g. "cannot determine truth value of Relational"). The on-disk cache stays.
    torch._dynamo.reset()
    return torch.compile(net)


def make_optimizer(task: Task, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimiser: SGD with momentum over the task's parameter groups (foreach: one kernel per
    group and op instead of one per parameter)."""
    return torch.optim.SGD(task.param_groups(model), lr=task.cfg.lr, momentum=task.cfg.momentum, foreach=True)


def train_step(task: Task, net: nn.Module, opt: torch.optim.Optimizer, batch: Any, epoch: int, step: int) -> Tensor:
    """One optimiser step on ``batch``: the task's loss, backward, SGD; returns the task's stats of the batch."""
    loss, stats = task.step(net, batch, epoch, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return stats


def _train(task: Task, run_dir: Path, log: Callable[[str], None], progress: bool | None) -> dict[str, Any]:
    cfg, ctx = task.cfg, task.ctx
    model = task.build()
    opt = make_optimizer(task, model)
    n_stats = len(task.stats)
    fresh_accum = lambda: torch.zeros(n_stats, dtype=torch.float64)  # noqa: E731
    state: dict[str, Any] = {"epoch": 0, "step": 0, "metrics": [], "seconds": 0.0, "accum": fresh_accum()}
    ckpt_path = run_dir / records.CHECKPOINT
    if ckpt_path.is_file():
        ckpt = records.load_checkpoint(ckpt_path, ctx.device)
        try:
            model.load_state_dict(ckpt.pop("model"))
            opt.load_state_dict(ckpt.pop("optimizer"))
            task.load_state(ckpt.pop("task", {}))
        except (KeyError, RuntimeError, ValueError) as e:
            raise records.CorruptRecord(ckpt_path, f"it does not fit this run's model ({e})") from None
        state.update(ckpt)
        state["accum"] = state["accum"].cpu()
        log(f"[{cfg.id}] resuming at epoch {state['epoch'] + 1}, step {state['step']}")
    elif cfg.init:
        task.initialize(model, load_init(cfg, task.runs_dir))
    task.begin(model)
    if ctx.is_main:
        records.write_metrics(run_dir, state["metrics"])  # drops lines of epochs the checkpoint lacks
        task.write_records(run_dir)

    net = training_net(task, model)

    def checkpoint(extra: dict[str, Any]) -> None:
        full = {"model": model.state_dict(), "optimizer": opt.state_dict(), **state, **extra, "task": task.state()}
        records.save_checkpoint(ckpt_path, full)

    steps = len(task.train_loader)
    renorm = any(isinstance(m, BatchRenorm) for m in model.modules())  # Batch Renorm's r_max/d_max ramp
    show_bar = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    status, lr = "finished", cfg.lr
    for epoch in range(state["epoch"], cfg.epochs):
        net.train()
        start_step, accum = state["step"], state["accum"]
        steps_before = accum.clone()
        t0 = last_ckpt = time.perf_counter()
        bar = None
        if show_bar:
            from tqdm import tqdm

            desc = f"{cfg.id} epoch {epoch + 1}/{cfg.epochs}"
            bar = tqdm(total=steps, initial=start_step, desc=desc, leave=False, file=sys.stderr)
        for step, batch in enumerate(task.train_loader.epoch(epoch, start_step), start_step):
            lr = lr_at(cfg, epoch + step / steps)
            for group in opt.param_groups:
                group["lr"] = lr
            if renorm:  # the paper's ramp scaled to the run (a pure function of the step: resumes exactly)
                set_renorm_limits(model, epoch * steps + step, cfg.epochs * steps)
            accum += train_step(task, net, opt, batch, epoch, step)
            task.after_step(model, epoch * steps + step + 1)
            if bar is not None:
                bar.update(1)
            now = time.perf_counter()
            due = (cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0) or (
                now - last_ckpt > cfg.checkpoint_seconds
            )
            if due and step + 1 < steps and ctx.is_main:
                checkpoint({"epoch": epoch, "step": step + 1, "accum": accum, "seconds": state["seconds"] + now - t0})
                task.write_records(run_dir)
                last_ckpt = now
        if bar is not None:
            bar.close()
        sums = distributed.all_reduce_sum(accum.tolist(), ctx.device)
        before = distributed.all_reduce_sum(steps_before.tolist(), ctx.device)
        _average_bn_buffers(model, ctx.world)
        train_seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"epoch": epoch + 1, **task.epoch_metrics(sums), "lr": lr}
        images = task.images_of(sums) - task.images_of(before)  # trained since this session began
        entry["images_per_second"] = images / max(train_seconds, 1e-9)
        finite = task.finite(entry)
        if finite:
            entry.update(task.evaluate(model, epoch + 1, epoch + 1 == cfg.epochs))
        entry["seconds"] = state["seconds"] + time.perf_counter() - t0
        state = {
            "epoch": epoch + 1,
            "step": 0,
            "metrics": [*state["metrics"], entry],
            "seconds": entry["seconds"],
            "accum": fresh_accum(),
        }
        if ctx.is_main:
            checkpoint({})
            records.write_metrics(run_dir, state["metrics"])
            task.write_records(run_dir)
        log(f"[{cfg.id}] epoch {epoch + 1}/{cfg.epochs}  {task.log_line(entry)}  lr {lr:.4f}")
        if not finite:
            status = "diverged"
            log(f"[{cfg.id}] diverged ({task.log_line(entry)}); stopping")
            break
    metrics = state["metrics"]
    result = {
        "run_id": cfg.id,
        "status": status,
        "images_per_device": cfg.images_per_device,
        "devices": cfg.devices,
        "processes": ctx.world,
        "effective_batch": cfg.effective_batch,
        "lr": cfg.lr,
        "epochs": len(metrics),
        "seconds": metrics[-1]["seconds"] if metrics else 0.0,
        **task.summary(metrics),
    }
    if ctx.is_main:
        records.write_result(run_dir, result)
    distributed.barrier()
    return result
