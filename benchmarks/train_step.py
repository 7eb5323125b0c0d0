"""Training throughput of the batch-size study's engine, per norm, at 32 and 2 images per device x 8 devices.

    python benchmarks/train_step.py                  # ResNet-8 (width 16) on Fashion-MNIST, 1 thread
    python benchmarks/train_step.py --threads 2 --depth 20

For each norm and per-device batch it times, over repeats, (a) getting the next batch from
the in-memory loader (shuffle, crop, flip, normalise) and (b) the train step (forward,
loss, backward, SGD step), and prints images/s and the share of wall time spent in the
step (target: at least 90%, i.e. data never bottlenecks a CPU run). BN runs with 8
virtual devices, as in the study. Medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from groupnorm.data import MemoryLoader, load_image_data
from groupnorm.models import build_model


def measure(norm: str, per_device: int, devices: int, depth: int, steps: int, repeats: int, data) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet", norm=norm, depth=depth, width=16, num_classes=10, in_channels=1, devices=devices)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = MemoryLoader(data.train_images, data.train_labels, per_device * devices, mean=data.mean, std=data.std,
                          train=True, augment=data.augment, seed=0, channels_last=True)  # fmt: skip
    data_times, step_times = [], []
    batches = loader.epoch(0)
    for r in range(repeats + 1):  # the first round warms up
        t_data = t_step = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            try:
                x, y = next(batches)
            except StopIteration:
                batches = loader.epoch(r + 1)
                x, y = next(batches)
            t1 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t2 = time.perf_counter()
            t_data, t_step = t_data + t1 - t0, t_step + t2 - t1
        if r:
            data_times.append(t_data)
            step_times.append(t_step)
    data_t, step_t = statistics.median(data_times), statistics.median(step_times)
    images = steps * per_device * devices
    return {
        "images_per_s": images / (data_t + step_t),
        "step_share": step_t / (data_t + step_t),
        "ms_per_step": 1e3 * step_t / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sweep runs 1 per job)")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--norms", nargs="+", default=["bn", "gn:8", "ln", "in"])
    parser.add_argument("--per-device", nargs="+", type=int, default=[32, 2])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=3000, help="images per timed round (default 3000)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_image_data("fashion-mnist", 20000)
    print(f"ResNet-{args.depth} width 16, Fashion-MNIST, {args.devices} virtual devices, threads={args.threads}, "
          f"median of {args.repeats} rounds of ~{args.images} images")  # fmt: skip
    print(f"{'norm':<8} {'img/device':>10} {'batch':>6} {'images/s':>9} {'ms/step':>8} {'step share':>11}")
    shares = []
    for per_device in args.per_device:
        for norm in args.norms:
            steps = max(5, args.images // (per_device * args.devices))
            r = measure(norm, per_device, args.devices, args.depth, steps, args.repeats, data)
            shares.append(r["step_share"])
            print(f"{norm:<8} {per_device:>10} {per_device * args.devices:>6} {r['images_per_s']:>9.0f} "
                  f"{r['ms_per_step']:>8.2f} {100 * r['step_share']:>10.1f}%")  # fmt: skip
    print(f"\ntrain step share of wall time: min {100 * min(shares):.1f}% (target >= 90%)")


if __name__ == "__main__":
    main()
