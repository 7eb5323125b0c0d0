"""Does torch.compile beat eager for groupnorm's layers? Forward + backward, CPU, ratio compiled / eager.

    PYTHONPATH=src .venv/bin/python benchmarks/compile.py [--repeats 20]

For each layer (GroupNorm in NCHW and channels-last, GroupNormAct with SiLU in channels-last) on
x of shape (8, 128, 32, 32) float32: the median time of ``layer(x).sum().backward()`` eager and
under ``torch.compile`` (inductor, after a warm-up that compiles), alternated in three rounds so
that a busy moment of the machine falls on both. A ratio below 1 means compile is faster.
Under compile, GroupNorm runs torch's composite group_norm (inductor generates the kernel) and
GroupNormAct keeps groupnorm's fused op (groupnorm::group_norm_act).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from groupnorm import nn as gnn


def seconds(fn, x: torch.Tensor, repeats: int) -> float:
    times = []
    for i in range(repeats + 2):
        xi = x.detach().requires_grad_()
        start = time.perf_counter()
        fn(xi).sum().backward()
        if i >= 2:  # two warm-up steps (the first compiles)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(8, 128, 32, 32)
    cases = [
        ("GroupNorm(32, 128), NCHW", gnn.GroupNorm(32, 128), torch.contiguous_format),
        ("GroupNorm(32, 128), channels-last", gnn.GroupNorm(32, 128), torch.channels_last),
        ("GroupNormAct(32, 128, silu), channels-last", gnn.GroupNormAct(32, 128), torch.channels_last),
    ]
    print(f"forward + backward, x {tuple(x.shape)} float32, {torch.get_num_threads()} threads")
    for name, layer, fmt in cases:
        xf = x.contiguous(memory_format=fmt)
        compiled = torch.compile(layer, fullgraph=True)
        eager_t, compiled_t = [], []
        for _ in range(3):
            eager_t.append(seconds(layer, xf, args.repeats))
            compiled_t.append(seconds(compiled, xf, args.repeats))
        e, c = statistics.median(eager_t), statistics.median(compiled_t)
        rounds = f"eager {[round(t * 1e3, 2) for t in eager_t]}, compiled {[round(t * 1e3, 2) for t in compiled_t]}"
        print(f"   rounds (ms): {rounds}")
        print(f"{name:45s} eager {e * 1e3:7.2f} ms  compiled {c * 1e3:7.2f} ms  ratio {c / e:.2f}")


if __name__ == "__main__":
    main()
