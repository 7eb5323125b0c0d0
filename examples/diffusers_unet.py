"""Time a small diffusers UNet2DModel's forward + backward on the CPU before and after fusing GN + SiLU.

    PYTHONPATH=src .venv/bin/python examples/diffusers_unet.py [--batch 4] [--size 32] [--repeats 5] [--threads N]

Builds a small UNet2DModel (channels 64, 128, 128; GroupNorm with 32 groups; channels-last, as the
fused CPU kernels are fastest there), fuses a copy with :func:`groupnorm.fuse_group_norm_act`, checks
that the outputs agree within 1e-4, and times ``loss.backward()`` of a forward for both (median of
``--repeats`` after a warm-up; three rounds alternating the two models, the fastest round of each kept);
prints both times and their ratio (after / before: below 1 is faster). Timings on a shared machine vary.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from diffusers import UNet2DModel

import groupnorm


def step_seconds(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward + backward, after one warm-up step."""
    times = []
    for i in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        model(x, t).sample.square().mean().backward()
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=args.size,
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
    ).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (args.batch,))

    reference = copy.deepcopy(unet)
    fused = groupnorm.fuse_group_norm_act(unet, x[:1], t[:1])
    with torch.no_grad():
        err = (unet(x, t).sample - reference(x, t).sample).abs().max().item()
    # alternate the two models so that a busy moment of the machine falls on both
    before, after = [], []
    for _ in range(3):
        before.append(step_seconds(reference, x, t, args.repeats))
        after.append(step_seconds(unet, x, t, args.repeats))
    before, after = min(before), min(after)  # the least disturbed round of each: a shared machine adds only delays

    print(f"UNet2DModel, batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads")
    print(f"fused {len(fused)} GroupNorm + SiLU pairs; largest output difference {err:.2e} (limit 1e-4)")
    print(f"forward + backward: before {before * 1e3:.1f} ms, after {after * 1e3:.1f} ms, ratio {after / before:.3f}")
    if err > 1e-4:
        raise SystemExit("outputs differ by more than 1e-4")


if __name__ == "__main__":
    main()
