"""Speed and memory of groupnorm's fused GroupNorm + activation kernels against torch and timm.

    python benchmarks/kernels.py                          # CPU, float32: every shape, both formats
    python benchmarks/kernels.py --quick                  # a few shapes, fewer repeats
    python benchmarks/kernels.py --device cuda --dtype bfloat16
    python benchmarks/kernels.py --only layers            # or: models

Layers (ResNet-50 stage shapes at N = 2 and 32, SD-UNet shapes at N = 1 and 2, 32x64x56x56 and an FPN
level 8x256x28x28; contiguous and channels_last), each timed forward and forward+backward in interleaved
rounds (so load on a shared machine hits every variant alike), medians printed:
    fused   ours = groupnorm.functional.group_norm_act(x, 32, w, b, act="silu")
            eager = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, w, b))
            timm = timm.layers.GroupNormAct(C, 32, act_layer=nn.SiLU)   (its defaults otherwise)
    plain   ours = groupnorm.functional.group_norm, native = torch.nn.functional.group_norm
    copy    x.clone(): the bandwidth our forwards are compared with (all move 2 x numel bytes)
Ratios are speedups, baseline time / ours (> 1: ours is faster).

Memory: the bytes a GN + SiLU block keeps for backward (saved-tensor hooks, distinct
storages), and for a forward+backward of ResNet-50-GN and of a stack of SD-UNet-like resnet
blocks at batch 2: bytes kept for backward, and on CUDA the peak allocated memory.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as TF
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from allocator import steady_allocator

from groupnorm import functional as F
from groupnorm import kernels
from groupnorm import nn as gnn

try:
    from timm.layers import GroupNormAct as TimmGroupNormAct
except ImportError:  # timm is a dev dependency; the comparison is left out without it
    TimmGroupNormAct = None

# (label, N, C, H, W)
RESNET50 = [(f"r50.{name}", n, c, h, h) for n in (2, 32) for name, c, h in
            (("stem", 64, 112), ("c2", 256, 56), ("c3", 512, 28), ("c4", 1024, 14), ("c5", 2048, 7))]  # fmt: skip
SD_UNET = [(f"sd.{h}", n, c, h, h) for n in (1, 2) for c, h in ((320, 64), (640, 32), (1280, 16), (1280, 8))]
# The two shapes of issue 15's AMD table not above: ResNet-50's 64-channel first-stage maps at 32 images, and
# a 256-channel detection feature map (an FPN level) at 8 images.
OTHERS = [("r50.c2in", 32, 64, 56, 56), ("fpn.28", 8, 256, 28, 28)]
QUICK = ["r50.c2", "r50.c4", "sd.64", "sd.16"]
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
GROUPS = 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    warmup: bool = True,
    min_calls: int = 3,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds and median process CPU seconds per call of each fn, in interleaved rounds.

    CPU seconds (all threads of this process, from time.process_time) leave out the time the
    threads wait for a core while others' jobs run: on a shared machine they show the work a
    variant does when wall times mostly show the load. Each sample times enough back-to-back
    calls to last about 2 ms (at least ``min_calls`` on the CPU), so every variant is timed in its own steady
    state (its outputs' memory recycled, its inputs where its own last call left them) rather
    than in whatever state the variant before it left the caches and the allocator: one call per
    sample made the same cell swing 0.4-1.8x between runs at the 5-10 MB SD shapes. On a GPU only
    wall times mean anything.
    """
    inner = {}
    floor = 1 if device.type == "cuda" else min_calls
    for name, fn in fns.items():
        if warmup or device.type == "cuda":
            fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        inner[name] = max(floor, min(200, int(2e-3 / max(time.perf_counter() - t0, 1e-6))))
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner[name]):
                fn()
            sync(device)
            wall[name].append((time.perf_counter() - t0) / inner[name])
            cpu[name].append((time.process_time() - c0) / inner[name])
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def graph_timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per replay of each fn captured in a CUDA graph: device time, no launch overhead."""
    out = {}
    for name, fn in fns.items():
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            torch.cuda.synchronize()
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(20):
                    graph.replay()
                torch.cuda.synchronize()
                samples.append((time.perf_counter() - t0) / 20)
            out[name] = statistics.median(samples)
            del graph
        except Exception as e:  # report, do not stop the run
            print(f"  (CUDA graph of {name} failed: {type(e).__name__}: {str(e)[:120]})")
            out[name] = math.nan
    return out


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        fn(x).backward(dy)

    return run


def no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return fn(x)

    return run


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during fn(x)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(storages.values())


# ---------------------------------------------------------------------------------------
# layers


def layer_variants(c: int, device: torch.device, dtype: torch.dtype) -> dict[str, Callable]:
    w = torch.randn(c, device=device, dtype=dtype).requires_grad_()
    b = torch.randn(c, device=device, dtype=dtype).requires_grad_()
    variants = {
        "ours": lambda x: F.group_norm_act(x, GROUPS, w, b, act="silu"),
        "eager": lambda x: TF.silu(TF.group_norm(x, GROUPS, w, b)),
        "ours_gn": lambda x: F.group_norm(x, GROUPS, w, b),
        "native_gn": lambda x: TF.group_norm(x, GROUPS, w, b),
    }
    if TimmGroupNormAct is not None:
        timm_layer = TimmGroupNormAct(c, GROUPS, act_layer=nn.SiLU).to(device, dtype)
        variants["timm"] = timm_layer
    return variants


def bench_layers(args, device: torch.device, dtype: torch.dtype) -> dict[str, list[float]]:
    shapes = RESNET50 + SD_UNET + OTHERS
    if args.quick:
        shapes = [s for s in shapes if s[0] in QUICK and s[1] == 2]
    if args.shapes:
        shapes = [s for s in shapes if any(s[0].startswith(p) for p in args.shapes.split(","))]
    repeats = args.repeats or (5 if args.quick else 9)
    head = (
        f"{'shape':<9}{'N':>3} {'C':>5} {'HxW':>7} {'fmt':<5}| {'fwd ms':>7} {'x eager':>8} {'x timm':>7}"
        f" {'f+b ms':>8} {'x eager':>8} {'x timm':>7} | {'GN fwd':>7} {'GN f+b':>7} | {'GB/s':>6} {'of copy':>8}"
        f" {'fused':>6}"
    )
    print("fused = group_norm_act(silu); 'x eager' = eager time / ours (> 1: ours faster); GN = plain group_norm,")
    print("ours vs torch.nn.functional.group_norm; GB/s = our GroupNorm's forward bandwidth (read x, write y),")
    print("'of copy' = that over x.clone()'s (the target's), 'fused' = the same for the fused GN + SiLU forward.\n")
    print(head)
    print("-" * len(head))
    out: dict[str, list[float]] = {}
    for label, n, c, h, wd in shapes:
        for fname, fmt in FORMATS.items():
            x = torch.randn(n, c, h, wd, device=device, dtype=dtype).contiguous(memory_format=fmt)
            dy = torch.randn_like(x)
            xr = x.clone().requires_grad_()
            v = layer_variants(c, device, dtype)
            fwd = {k: no_grad(fn, x) for k, fn in v.items()}
            fwd["copy"] = x.clone
            tf, cf = timed(fwd, repeats, device)
            fb = {k: fwd_bwd(fn, xr, dy) for k, fn in v.items()}
            tb, cb = timed(fb, repeats, device)
            if device.type == "cuda":  # device time alone, without Python and launch overhead
                gf = graph_timed({k: fwd[k] for k in ("ours", "eager", "timm") if k in fwd}, repeats)
                gb = graph_timed({k: fb[k] for k in ("ours", "eager", "timm") if k in fb}, repeats)
            del xr
            nbytes = 2 * x.numel() * x.element_size()
            row = {
                "fwd_eager": tf["eager"] / tf["ours"],
                "fb_eager": tb["eager"] / tb["ours"],
                "gn_fwd": tf["native_gn"] / tf["ours_gn"],
                "gn_fb": tb["native_gn"] / tb["ours_gn"],
                "bw_copy": tf["copy"] / tf["ours_gn"],
                "bw_copy_fused": tf["copy"] / tf["ours"],
            }
            if "timm" in v:
                row["fwd_timm"] = tf["timm"] / tf["ours"]
                row["fb_timm"] = tb["timm"] / tb["ours"]
            if device.type == "cpu":  # the same ratios in CPU seconds (see timed)
                row["cpu:fb_eager"] = cb["eager"] / cb["ours"]
                row["cpu:fwd_eager"] = cf["eager"] / cf["ours"]
                row["cpu:gn_fwd"] = cf["native_gn"] / cf["ours_gn"]
                row["cpu:gn_fb"] = cb["native_gn"] / cb["ours_gn"]
                row["cpu:bw_copy"] = cf["copy"] / cf["ours_gn"]
                if "timm" in v:
                    row["cpu:fb_timm"] = cb["timm"] / cb["ours"]
            if device.type == "cuda":
                for key, t in (("gfwd", gf), ("gfb", gb)):
                    row[f"{key}_eager"] = t["eager"] / t["ours"]
                    if "timm" in t:
                        row[f"{key}_timm"] = t["timm"] / t["ours"]
            for k, r in row.items():
                out.setdefault(f"{k}.{fname}", []).append(r)
            print(
                f"{label:<9}{n:>3} {c:>5} {f'{h}x{wd}':>7} {fname:<5}| {tf['ours'] * 1e3:7.2f} {row['fwd_eager']:8.2f}"
                f" {row.get('fwd_timm', math.nan):7.2f} {tb['ours'] * 1e3:8.2f} {row['fb_eager']:8.2f}"
                f" {row.get('fb_timm', math.nan):7.2f} | {row['gn_fwd']:7.2f} {row['gn_fb']:7.2f} |"
                f" {nbytes / tf['ours_gn'] / 1e9:6.1f} {row['bw_copy']:8.2f} {row['bw_copy_fused']:6.2f}",
                flush=True,
            )
            if device.type == "cuda":
                gft, gbt = row.get("gfwd_timm", math.nan), row.get("gfb_timm", math.nan)
                print(
                    f"{'':<32}| graph {gf['ours'] * 1e6:6.1f} us {row['gfwd_eager']:8.2f} {gft:7.2f}"
                    f"  {gb['ours'] * 1e6:6.1f} us {row['gfb_eager']:6.2f} {gbt:7.2f} |  (CUDA graph replays)",
                    flush=True,
                )
    return out


def summarize(out: dict[str, list[float]], device: torch.device) -> None:
    def gmean(v: list[float]) -> float:
        return math.exp(sum(math.log(t) for t in v) / len(v))

    print("\nsummary over shapes (geometric mean, min); cpu: = the same ratios in process CPU seconds:")
    targets = {"fb_eager": 1.3, "gn_fwd": 1.0, "gn_fb": 1.0, "bw_copy": 0.8} if device.type == "cpu" else {}
    keys = ("fwd_eager", "fb_eager", "fwd_timm", "fb_timm", "gn_fwd", "gn_fb", "bw_copy", "bw_copy_fused")
    if device.type == "cuda":
        keys += ("gfwd_eager", "gfb_eager", "gfwd_timm", "gfb_timm")
    else:
        keys += ("cpu:fwd_eager", "cpu:fb_eager", "cpu:fb_timm", "cpu:gn_fwd", "cpu:gn_fb", "cpu:bw_copy")
    for key in keys:
        for fname in FORMATS:
            v = out.get(f"{key}.{fname}")
            if not v:
                continue
            target = targets.get(key.removeprefix("cpu:"))
            note = f"   (target >= {target})" if target else ""
            print(f"  {key:<14}{fname:<5} gmean {gmean(v):5.2f}  min {min(v):5.2f}{note}")


# ---------------------------------------------------------------------------------------
# blocks and models


def norm_act_factory(kind: str) -> Callable[[int, str], nn.Module]:
    """A GN(32) + activation layer of the given implementation; act "" means GN alone."""

    def make(c: int, act: str) -> nn.Module:
        act_layer = {"relu": nn.ReLU, "silu": nn.SiLU}.get(act)
        if kind == "ours":
            return gnn.GroupNormAct(GROUPS, c, act=act or "identity")
        if kind == "timm":
            return TimmGroupNormAct(c, GROUPS, act_layer=act_layer, apply_act=bool(act))
        gn = nn.GroupNorm(GROUPS, c)
        return nn.Sequential(gn, act_layer()) if act else gn

    return make


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck with GN; norm_act fuses the first two ReLUs."""

    def __init__(self, cin: int, width: int, stride: int, norm_act: Callable[[int, str], nn.Module]) -> None:
        super().__init__()
        cout = width * 4
        self.conv1, self.na1 = nn.Conv2d(cin, width, 1, bias=False), norm_act(width, "relu")
        self.conv2, self.na2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), norm_act(width, "relu")
        self.conv3, self.n3 = nn.Conv2d(width, cout, 1, bias=False), norm_act(cout, "")
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm_act(cout, ""))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.n3(self.conv3(self.na2(self.conv2(self.na1(self.conv1(x))))))
        return torch.relu(out + (x if self.down is None else self.down(x)))


def resnet50(norm_act: Callable[[int, str], nn.Module]) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), norm_act(64, "relu"), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1, norm_act))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


class ResnetBlock(nn.Module):
    """The resnet block of Stable Diffusion's UNet: GN+SiLU, conv, GN+SiLU, conv, skip."""

    def __init__(self, cin: int, cout: int, norm_act: Callable[[int, str], nn.Module]) -> None:
        super().__init__()
        self.na1, self.conv1 = norm_act(cin, "silu"), nn.Conv2d(cin, cout, 3, padding=1)
        self.na2, self.conv2 = norm_act(cout, "silu"), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.conv2(self.na2(self.conv1(self.na1(x))))


def sd_stack(norm_act: Callable[[int, str], nn.Module]) -> nn.Module:
    """Resnet blocks at 64x64 (320 ch), 32x32 (640), 16x16 (1280) and 8x8 (1280), stride-2 convs between."""
    return nn.Sequential(
        ResnetBlock(320, 320, norm_act), ResnetBlock(320, 320, norm_act), nn.Conv2d(320, 320, 3, 2, 1),
        ResnetBlock(320, 640, norm_act), ResnetBlock(640, 640, norm_act), nn.Conv2d(640, 640, 3, 2, 1),
        ResnetBlock(640, 1280, norm_act), ResnetBlock(1280, 1280, norm_act), nn.Conv2d(1280, 1280, 3, 2, 1),
        ResnetBlock(1280, 1280, norm_act), ResnetBlock(1280, 1280, norm_act),
    )  # fmt: skip


def train_step(net: nn.Module, x: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    net(x).float().sum().backward()


def model_memory(net: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[int, float]:
    """(bytes kept for backward, parameters excluded; peak bytes allocated by a step on CUDA, else nan)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    out.float().sum().backward()
    del out
    peak = math.nan
    if device.type == "cuda":
        net.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(net, x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return sum(storages.values()), peak


def bench_memory(args, device: torch.device, dtype: torch.dtype) -> None:
    kinds = ["ours", "eager"] + (["timm"] if TimmGroupNormAct is not None else [])
    print("\nactivation memory a GN(32)+SiLU block keeps for backward (bytes of saved storages), SD shape 2x320x64x64:")
    x = torch.randn(2, 320, 64, 64, device=device, dtype=dtype).requires_grad_()
    block = {k: norm_act_factory(k)(320, "silu").to(device, dtype) for k in kinds}
    kept = {k: saved_bytes(m, x) for k, m in block.items()}
    for k in kinds:
        print(f"  {k:<6} {kept[k] / 2**20:8.1f} MiB  ({kept[k] / x.numel() / x.element_size():.2f} x input)"
              f"  ours / {k} = {kept['ours'] / kept[k]:.2f}")  # fmt: skip

    repeats = args.model_repeats or (1 if args.quick else 2)
    models = {"resnet50-gn": (resnet50, (2, 3, 224, 224)), "sd-unet-blocks": (sd_stack, (2, 320, 64, 64))}
    print(f"\nforward+backward of whole models at batch 2 (median of {repeats}); memory kept for backward")
    print("(saved storages, parameters excluded)" + (" and peak allocated (CUDA)" if device.type == "cuda" else ""))
    for name, (build, shape) in models.items():
        for fname, fmt in FORMATS.items():
            torch.manual_seed(0)
            x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
            nets = {}
            for k in kinds:
                torch.manual_seed(0)
                nets[k] = build(norm_act_factory(k)).to(device, dtype).to(memory_format=fmt)
            res = {k: model_memory(net, x, device) for k, net in nets.items()}

            # model_memory ran every net once: that was the warm-up
            times, _ = timed(
                {k: partial(train_step, net, x) for k, net in nets.items()}, repeats, device, warmup=False, min_calls=1
            )
            for k in kinds:
                kept_bytes, peak = res[k]
                extra = f"  peak {peak / 2**20:8.1f} MiB ({res['ours'][1] / peak:.2f})" if device.type == "cuda" else ""
                print(
                    f"  {name:<15}{fname:<5}{k:<6} f+b {times[k] * 1e3:8.1f} ms (x{times[k] / times['ours']:.2f})"
                    f"  kept {kept_bytes / 2**20:8.1f} MiB (ours/{k} {res['ours'][0] / kept_bytes:.2f}){extra}",
                    flush=True,
                )
            del nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few shapes, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds per layer shape")
    parser.add_argument("--model-repeats", type=int, default=None, help="timing rounds per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--only", choices=["layers", "models"], default=None)
    parser.add_argument("--shapes", default="", help="comma-separated label prefixes, e.g. sd or r50.c2,sd.64")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    x = torch.empty(1, 1, device=device, dtype=dtype)
    backend = kernels.backend_for(x)
    info = kernels.cpu.build_info() if backend == "cpu" else {}
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}) dtype={dtype} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} backend={backend}")  # fmt: skip
    if info:
        print(f"cpu kernels: {info.get('path', info)} (built in {info.get('build_seconds', 0):.1f} s this run)")
    print(steady_allocator())
    print()
    if args.only in (None, "layers"):
        summarize(bench_layers(args, device, dtype), device)
    if args.only in (None, "models"):
        bench_memory(args, device, dtype)


if __name__ == "__main__":
    main()
