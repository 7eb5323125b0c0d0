"""Train (or resume) one detection run: ``python -m groupnorm.detection --set key=value ...``.

    python -m groupnorm.detection --set backbone_norm=gn:8 --set width=16 --set fpn_channels=32 ...
    torchrun --nproc_per_node 8 -m groupnorm.detection --set dataset=coco --set data_dir=/data/coco \\
        --set backbone=resnet50 --set depth=50 --set width=64 --set pretrained=/ckpt/r50_gn.pt ...

Every field of DetectionConfig can be --set (tuples comma-separated); records go to
``<runs>/<experiment>/<run-id>/``. The paper's whole grid is ``groupnorm reproduce detection``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from groupnorm.detection.config import DetectionConfig
from groupnorm.detection.train import check_detection_configs, train_detection
from groupnorm.experiments.overrides import OverrideError, apply_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m groupnorm.detection", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="directory of the records (default: ./runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        cfg = apply_overrides(DetectionConfig(), args.overrides)
        check_detection_configs([cfg], args.runs)
        result = train_detection(cfg, args.runs)
    except (OverrideError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"groupnorm.detection: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{cfg.id}: box AP {result['bbox_AP']}, mask AP {result['segm_AP']} (COCOeval, %), {result['status']}"
            if result["bbox_AP"] is not None
            else f"{cfg.id}: {result['status']}, no evaluation"
        )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
