"""Speed of groupnorm's GroupNorm and BatchNorm(devices=8) against torch's native layers.

    python benchmarks/layers.py                 # ResNet-50 and SD-UNet-like shapes, both memory formats
    python benchmarks/layers.py --quick         # fewer shapes and repeats
    python benchmarks/layers.py --device cuda

For each shape and memory format, forward and forward+backward are timed for ours and the
baseline in interleaved rounds (so load on a shared machine hits both alike); the printed
ratio is median(ours) / median(native): below 1 is faster. Targets (issue 2): GroupNorm
within 5% of native (ratio <= 1.05), BatchNorm(devices=8) at most 1.5x native BatchNorm2d.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from allocator import steady_allocator

from groupnorm import nn as gnn

# (label, N, C, H, W): ResNet-50 stages at 32 images (4 per device x 8) and SD-UNet-like maps.
RESNET50 = [
    ("r50.stem", 32, 64, 112, 112),
    ("r50.c2", 32, 256, 56, 56),
    ("r50.c3", 32, 512, 28, 28),
    ("r50.c4", 32, 1024, 14, 14),
    ("r50.c5", 32, 2048, 7, 7),
]
SD_UNET = [
    ("sd.64", 2, 320, 64, 64),
    ("sd.32", 2, 640, 32, 32),
    ("sd.16", 2, 1280, 16, 16),
    ("sd.8", 2, 1280, 8, 8),
]
BN_BATCH_SD = 8  # BN(devices=8) needs N divisible by 8: the SD shapes run at 1 image per device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor | None) -> Callable[[], None]:
    def run() -> None:
        if grad is None:
            with torch.no_grad():
                module(x)
        else:
            x.grad = None
            module(x).backward(grad)

    return run


def time_pair(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds after one warm-up each; a sample
    times back-to-back calls lasting about 2 ms (at least 3), so that each fn is timed in its own steady
    state rather than in the one the other left (benchmarks/kernels.py ``timed``)."""
    calls = {}
    for name, fn in fns.items():
        fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        calls[name] = max(3, min(200, int(2e-3 / max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / calls[name])
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three shapes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    repeats = args.repeats or (5 if args.quick else 11)
    shapes = [RESNET50[1], RESNET50[3], SD_UNET[0]] if args.quick else RESNET50 + SD_UNET
    print(
        f"device={device} dtype={dtype} threads={torch.get_num_threads()} repeats={repeats} torch={torch.__version__}"
    )
    print(steady_allocator())
    print("ratio = median(ours) / median(native); < 1 is faster than native\n")
    header = f"{'layer':<10} {'shape':<22} {'format':<13} {'fwd ms':>8} {'fwd ratio':>9} {'f+b ms':>8} {'f+b ratio':>9}"
    ratios: dict[str, list[float]] = {"gn": [], "bn": []}
    for kind in ("gn", "bn"):
        print(
            "GroupNorm(32) vs torch.nn.GroupNorm"
            if kind == "gn"
            else "BatchNorm(devices=8) vs torch.nn.BatchNorm2d (same tensor)"
        )
        print(header)
        for label, n, c, h, w in shapes:
            if kind == "bn" and label.startswith("sd"):
                n = BN_BATCH_SD
            for fmt_name, fmt in (
                ("contiguous", torch.contiguous_format),
                ("channels_last", torch.channels_last),
            ):
                x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
                x.requires_grad_()
                grad = torch.randn_like(x)
                if kind == "gn":
                    ours, native = gnn.GroupNorm(32, c), nn.GroupNorm(32, c)
                else:
                    ours, native = gnn.BatchNorm(c, devices=8), nn.BatchNorm2d(c)
                ours, native = ours.to(device, dtype), native.to(device, dtype)
                fwd = time_pair({"ours": step(ours, x, None), "native": step(native, x, None)}, repeats, device)
                fb = time_pair({"ours": step(ours, x, grad), "native": step(native, x, grad)}, repeats, device)
                r_f, r_fb = fwd["ours"] / fwd["native"], fb["ours"] / fb["native"]
                ratios[kind] += [r_f, r_fb]
                print(
                    f"{kind:<10} {(n, c, h, w)!s:<22} {fmt_name:<13} {fwd['ours'] * 1e3:8.2f} {r_f:9.2f} "
                    f"{fb['ours'] * 1e3:8.2f} {r_fb:9.2f}"
                )
                del x, grad
        print()
    gn_med, bn_med = statistics.median(ratios["gn"]), statistics.median(ratios["bn"])
    print(f"GroupNorm: median ratio {gn_med:.3f}, worst {max(ratios['gn']):.3f} (target <= 1.05)")
    print(f"BatchNorm(devices=8): median ratio {bn_med:.3f}, worst {max(ratios['bn']):.3f} (target <= 1.5)")


if __name__ == "__main__":
    main()
