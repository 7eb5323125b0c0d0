"""The reproduction's training speed against a plain eager PyTorch loop of the same model, in one run.

    python benchmarks/train_step.py                      # BN and GN at 32 and 2 images per device, 1 thread
    python benchmarks/train_step.py --threads 2 --rounds 7

Both sides train the batch-size study's quick-preset model (ResNet-8, width 16, Fashion-MNIST) on
batches of 32 images, as the preset does at every per-device batch B (32 / B virtual devices):

    engine  the run engine's own code: the task's model as built for the run (groupnorm's layers,
            channels-last), its optimiser and its train step (groupnorm.train.engine.train_step)
            fed by the task's loader; BN takes statistics over each device's B images in one call;
            under torch.compile where the engine compiles (``--compile``, default the preset's auto:
            BN, FRN and EvoNorm-S0, groupnorm.train.engine.COMPILE_PAYS), compiled in the warm-up.
    plain   CifarResNet built from torch.nn modules only (nn.Conv2d, nn.BatchNorm2d or nn.GroupNorm,
            nn.ReLU, nn.Linear), contiguous NCHW, torch.optim.SGD with its defaults, F.cross_entropy,
            the same loader without channels-last. For BN each device's B images go through the model
            on their own with gradients accumulated (what a per-device BN is in plain PyTorch); GN, which
            does not depend on the batch, takes the 32 images at once.

Rounds alternate engine and plain (load on a shared machine hits both alike); each round times
``--steps`` steps including getting the batches; images/s are medians over rounds. The last line is
``engine vs plain torch: min X.XXx, median Y.YYx`` over the (norm, B) cells (target: median >= 1.3x,
min >= 1.0x). Threads: --threads for both (the sweep runs one run per core at 1 thread).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from groupnorm.data import MemoryLoader
from groupnorm.experiments import batch_sizes
from groupnorm.models.cifar_resnet import CifarResNet
from groupnorm.train import distributed
from groupnorm.train.config import TrainConfig
from groupnorm.train.engine import compiles, make_optimizer, task_of, train_step, training_net

TOTAL_BATCH = 32  # the quick preset's images per step at every per-device batch


def quick_config(norm: str, per_device: int) -> TrainConfig:
    """The batch-size quick preset's run of ``norm`` at ``per_device`` images per device (seed 0)."""
    preset = batch_sizes.PRESETS["quick"]
    for cfg in batch_sizes.configs(preset, log=lambda _: None):
        if cfg.norm == norm and cfg.images_per_device == per_device:
            return cfg
    return next(c for c in batch_sizes.configs(preset, log=lambda _: None) if c.norm == norm).replace(
        images_per_device=per_device, devices=TOTAL_BATCH // per_device
    )


def batches(loader) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def engine_runner(cfg: TrainConfig, runs_dir: Path) -> Callable[[int], None]:
    """``run(k)``: k steps of the engine on the run ``cfg``, its batches included."""
    ctx = distributed.setup()
    task = task_of(cfg)(cfg, ctx, cfg.devices // ctx.world, runs_dir)
    model = task.build().train()
    opt = make_optimizer(task, model)
    net = training_net(task, model)  # compiled where the engine compiles (torch_compile)
    stream = batches(task.train_loader)

    def run(k: int) -> None:
        for step in range(k):
            train_step(task, net, opt, next(stream), 0, step)

    run.compiled = compiles(task)  # type: ignore[attr-defined]
    return run


def plain_norm(norm: str) -> Callable[[int], nn.Module]:
    if norm == "bn":
        return nn.BatchNorm2d
    groups = int(norm.split(":")[1])
    return lambda c: nn.GroupNorm(groups, c)


def plain_runner(cfg: TrainConfig) -> Callable[[int], None]:
    """``run(k)``: k steps of a plain eager loop of the same model from torch.nn modules."""
    torch.manual_seed(cfg.seed)
    model = CifarResNet(cfg.depth, cfg.width, 10, 1, plain_norm(cfg.norm)).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    from groupnorm.data import load_image_data

    data = load_image_data("fashion-mnist", cfg.train_images, cfg.val_images)
    loader = MemoryLoader(data.train_images, data.train_labels, TOTAL_BATCH, mean=data.mean, std=data.std,
                          train=True, augment=data.augment, seed=cfg.seed, channels_last=False)  # fmt: skip
    stream = batches(loader)
    chunks = cfg.devices if cfg.norm == "bn" else 1

    def run(k: int) -> None:
        for _ in range(k):
            x, y = next(stream)
            opt.zero_grad(set_to_none=True)
            for xs, ys in zip(x.chunk(chunks), y.chunk(chunks), strict=True):
                (F.cross_entropy(model(xs), ys) / chunks).backward()
            opt.step()

    return run


def images_per_second(runners: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, float]:
    for run in runners.values():
        run(3)  # warm-up (and torch.compile's compilation)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run(steps)
            times[name].append(time.perf_counter() - t0)
    return {name: steps * TOTAL_BATCH / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (default 1)")
    parser.add_argument("--norms", nargs="+", default=["bn", "gn:8"])
    parser.add_argument("--per-device", nargs="+", type=int, default=[32, 2])
    parser.add_argument("--steps", type=int, default=30, help="steps of 32 images per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="the engine's torch_compile (default: the preset's, auto)")  # fmt: skip
    parser.add_argument("--runs", default="/tmp/groupnorm-bench-runs", help="runs directory the engine may read")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch-size quick preset's ResNet-8 (width 16), Fashion-MNIST, {TOTAL_BATCH} images per step, "
          f"threads={args.threads}, median of {args.rounds} rounds of {args.steps} steps; "
          f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(f"{'norm':<6} {'img/device':>10} {'devices':>8} {'compiled':>8} {'engine img/s':>13} {'plain img/s':>12} "
          f"{'ratio':>7}")  # fmt: skip
    ratios = []
    for per_device in args.per_device:
        for norm in args.norms:
            cfg = quick_config(norm, per_device).replace(torch_compile=args.compile)
            engine = engine_runner(cfg, Path(args.runs))
            speed = images_per_second({"engine": engine, "plain": plain_runner(cfg)}, args.steps, args.rounds)
            ratio = speed["engine"] / speed["plain"]
            ratios.append(ratio)
            print(f"{norm:<6} {per_device:>10} {cfg.devices:>8} {'yes' if engine.compiled else 'no':>8} "
                  f"{speed['engine']:>13.0f} {speed['plain']:>12.0f} "
                  f"{ratio:>6.2f}x", flush=True)  # fmt: skip
    print(f"engine vs plain torch: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
