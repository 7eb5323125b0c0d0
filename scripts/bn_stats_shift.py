"""How far a BN classifier's running statistics are from those of its own training images: the baseline of the
detection report's shift table (which measures the same against the detection scenes).

    python scripts/bn_stats_shift.py runs/detection/pretrain/<bn run>/checkpoint.pt

Reads the run's config.json beside the checkpoint (model, depth, width, dataset, training images), takes the
first ``--images`` of its training subset, normalised as the run normalised them, and prints per BN layer the
mean shift (in running standard deviations) and the sd factor, as groupnorm.train.bn_eval.statistics_shift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from groupnorm.data.datasets import load_image_data
from groupnorm.models import build_model
from groupnorm.train.bn_eval import frozen_bn_statistics, statistics_shift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a BN classifier's checkpoint.pt (config.json beside it)")
    parser.add_argument("--images", type=int, default=1000, help="training images to measure on (default 1000)")
    args = parser.parse_args(argv)
    cfg_path = args.checkpoint.parent / "config.json"
    if not cfg_path.is_file():
        parser.error(f"checkpoint: expected the run's config.json beside it; not found: {cfg_path}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("norm") != "bn":
        parser.error(f"checkpoint: expected a run with norm 'bn'; got {cfg.get('norm')!r}")
    data = load_image_data(cfg["dataset"], cfg["train_images"], 0, cfg.get("data_dir") or None)
    x = data.train_images[: args.images].float().div(255)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = (x - mean) / std
    net = build_model(
        cfg["model"], norm="bn:frozen", depth=cfg["depth"], width=cfg["width"],
        num_classes=len(data.classes), in_channels=x.shape[1],
    )  # fmt: skip
    state = torch.load(args.checkpoint, weights_only=True)
    state = state.get("model", state)
    net.load_state_dict({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    net.eval()
    layers = dict(net.named_modules())
    stats = frozen_bn_statistics(net, x.split(100))
    rows = [{"layer": name, **statistics_shift(layers[name], *mv)} for name, mv in stats.items()]
    print(f"{'layer':<24} {'mean shift':>10} {'sd factor':>10}")
    for r in rows:
        print(f"{r['layer']:<24} {r['mean_shift']:10.3f} {r['sd_factor']:10.3f}")
    avg_shift = statistics.fmean(r["mean_shift"] for r in rows)
    avg_factor = statistics.fmean(r["sd_factor"] for r in rows)
    print(f"{'average':<24} {avg_shift:10.3f} {avg_factor:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
