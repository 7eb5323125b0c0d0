"""GN + SiLU on a GPU at batch 1 and 2: groupnorm's Triton kernels against eager torch and torch.compile.

    python benchmarks/gpu.py                 # every shape, N = 1 and 2, bfloat16, channels-last and NCHW
    python benchmarks/gpu.py --quick         # one shape of each family
    python benchmarks/gpu.py --smoke         # tiny shapes, 2 repeats, no torch.compile: checks the script
                                             # (on the CPU, where a GPU is missing; times mean nothing there)

Shapes (the GroupNorm inputs of the models our users train at 1-2 images per device, G = 32):
    sd     Stable Diffusion UNet: 320x64x64, 640x32x32, 1280x16x16, 1280x8x8
    vae    its VAE decoder: 512x64x64, 512x128x128, 256x256x256, 128x512x512
    video  a 3D ResNet (T x H x W): 64x16x56x56, 256x8x28x28 (channels_last_3d or NCDHW)
Variants, each forward and forward+backward (gradients of x, gamma and beta), timed with CUDA
events in interleaved rounds so that clock changes hit all alike; medians of the rounds:
    ours      groupnorm.functional.group_norm_act(x, 32, w, b, act="silu")  (Triton)
    eager     torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, w, b))
    compiled  torch.compile of the eager function (inductor's generated GroupNorm + SiLU)
Ratios are speedups, baseline time / ours (> 1: ours is faster). The last line is
``triton vs eager: median X.XXx fwd, Y.YYx fwd+bwd; vs torch.compile: median ...`` (on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from groupnorm import functional as F
from groupnorm import kernels

GROUPS = 32
# (family, label, C, spatial)
SHAPES = [
    ("sd", "sd.64", 320, (64, 64)), ("sd", "sd.32", 640, (32, 32)), ("sd", "sd.16", 1280, (16, 16)),
    ("sd", "sd.8", 1280, (8, 8)),
    ("vae", "vae.64", 512, (64, 64)), ("vae", "vae.128", 512, (128, 128)), ("vae", "vae.256", 256, (256, 256)),
    ("vae", "vae.512", 128, (512, 512)),
    ("video", "r3d.c2", 64, (16, 56, 56)), ("video", "r3d.c3", 256, (8, 28, 28)),
]  # fmt: skip
QUICK = ["sd.64", "vae.128", "r3d.c2"]
SMOKE = [("sd", "tiny.2d", 64, (8, 8)), ("video", "tiny.3d", 32, (2, 4, 4))]


def eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return TF.silu(TF.group_norm(x, GROUPS, w, b))


def ours(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.group_norm_act(x, GROUPS, w, b, act="silu")


class Timer:
    """Elapsed milliseconds of fn(): CUDA events on a GPU, the wall clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object], repeats: int) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) * 1e3 / repeats


def variants(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, compile_too: bool) -> dict[str, Callable]:
    """name -> (forward, forward+backward) callables on fresh leaves of x, w and b."""
    fns: dict[str, Callable] = {"ours": ours, "eager": eager}
    if compile_too:
        fns["compiled"] = torch.compile(eager)
    xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
    dy = torch.randn_like(x)
    out = {}
    for name, fn in fns.items():

        def fwd(fn=fn) -> None:
            with torch.no_grad():
                fn(x, w, b)

        def fwd_bwd(fn=fn) -> None:
            fn(xg, wg, bg).backward(dy)

        out[name] = (fwd, fwd_bwd)
    return out


def measure(x, w, b, timer: Timer, repeats: int, rounds: int, compile_too: bool) -> dict[str, tuple[float, float]]:
    fns = variants(x, w, b, compile_too)
    for fwd, fwd_bwd in fns.values():  # warm-up: Triton's and inductor's compilation
        for _ in range(2):
            fwd()
            fwd_bwd()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    for _ in range(rounds):
        for name, (fwd, fwd_bwd) in fns.items():
            times[name][0].append(timer(fwd, repeats))
            times[name][1].append(timer(fwd_bwd, repeats))
    return {name: (statistics.median(f), statistics.median(fb)) for name, (f, fb) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, no torch.compile: checks the script")
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--repeats", type=int, default=20, help="calls per timing")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (or --smoke to check the script on the CPU)")
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    shapes = SMOKE if args.smoke else [s for s in SHAPES if not args.quick or s[1] in QUICK]
    repeats, rounds = (2, 2) if args.smoke else (args.repeats, args.rounds)
    compile_too = not args.smoke
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke: times mean nothing)"
    backend = kernels.backend_for(torch.empty(1, GROUPS, 2, 2, device=device, dtype=dtype))
    print(f"{name}, torch {torch.__version__}, {dtype}, G={GROUPS}, SiLU; medians of {rounds} rounds of "
          f"{repeats} calls; ms, and speedups baseline / ours; ours runs the "
          f"{backend} kernels")  # fmt: skip
    head = f"{'shape':<22} {'layout':<6} {'ours fwd':>9} {'eager':>7} {'x':>6} {'ours f+b':>9} {'eager':>7} {'x':>6}"
    print(head + (f" {'compiled f+b':>13} {'x':>6}" if compile_too else ""))
    timer = Timer(device)
    vs_eager: tuple[list[float], list[float]] = ([], [])
    vs_compiled: tuple[list[float], list[float]] = ([], [])
    for n in args.batch:
        for _family, label, c, spatial in shapes:
            layouts = {"nchw": torch.contiguous_format}
            layouts["nhwc"] = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
            for layout, fmt in layouts.items():
                x = torch.randn(n, c, *spatial, device=device, dtype=dtype).contiguous(memory_format=fmt)
                w = torch.randn(c, device=device, dtype=dtype)
                b = torch.randn(c, device=device, dtype=dtype)
                t = measure(x, w, b, timer, repeats, rounds, compile_too)
                (of, ofb), (ef, efb) = t["ours"], t["eager"]
                vs_eager[0].append(ef / of)
                vs_eager[1].append(efb / ofb)
                row = (f"{n}x{label}".ljust(22) + f" {layout:<6} {of:>9.3f} {ef:>7.3f} {ef / of:>5.2f}x "
                       f"{ofb:>9.3f} {efb:>7.3f} {efb / ofb:>5.2f}x")  # fmt: skip
                if compile_too:
                    cf, cfb = t["compiled"]
                    vs_compiled[0].append(cf / of)
                    vs_compiled[1].append(cfb / ofb)
                    row += f" {cfb:>13.3f} {cfb / ofb:>5.2f}x"
                print(row, flush=True)
    line = (f"{backend} vs eager: median {statistics.median(vs_eager[0]):.2f}x fwd, "
            f"{statistics.median(vs_eager[1]):.2f}x fwd+bwd")  # fmt: skip
    if compile_too:
        line += (f"; vs torch.compile: median {statistics.median(vs_compiled[0]):.2f}x fwd, "
                 f"{statistics.median(vs_compiled[1]):.2f}x fwd+bwd")  # fmt: skip
    print(line)


if __name__ == "__main__":
    main()
