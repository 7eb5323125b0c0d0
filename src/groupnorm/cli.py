"""``groupnorm <command>``: reproduce the paper's experiments, train, sweep, report.

Thin on purpose: it parses, then calls groupnorm.experiments and groupnorm.report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from groupnorm.experiments import EXPERIMENTS, run_experiment
from groupnorm.train.overrides import OverrideError, apply_overrides
from groupnorm.train.sweep import SweepFailed

__all__ = ["main"]

DEFAULT_EXPERIMENT = "batch-sizes"

EPILOG = """\
examples:
  groupnorm reproduce                              the batch-size study, quick preset (~19 min on 2 cores)
  groupnorm reproduce --preset smoke               the same, end to end in under 2 minutes
  groupnorm reproduce batch-sizes --preset full    the whole grid: 3 seeds, ResNet-8 and -20, CIFAR-10 if present
  groupnorm reproduce --set epochs=30 --set seeds=0,1,2
  groupnorm reproduce groups                       Table 3: G and channels per group (~25 min)
  groupnorm reproduce features                     Fig. 6: conv5_3 percentiles of VGG-16, none / BN / GN (~15 min)
  groupnorm reproduce video                        Table 8: 3D ResNets on moving Fashion-MNIST clips (~25 min)
  groupnorm reproduce detection                    Tables 4-7: Mask R-CNN on generated scenes (see docs/results.md)
  groupnorm train --set norm=gn:8 --set images_per_device=2
  groupnorm train --task detection --set backbone_norm=gn:8 --set width=16 --set fpn_channels=32
  groupnorm sweep --norms bn gn:8 --images-per-device 32 4 1 --seeds 0 1
  groupnorm report batch-sizes
  groupnorm check resnet50                         is a model batch-independent? (exit 1 if not; names the culprits)
  groupnorm check resnet50 --norm gn:32 --input 2,3,64,64
  torchrun --nproc_per_node 8 -m groupnorm reproduce --preset paper --set data_dir=/data/imagenet

Records go under --runs (default ./runs): runs/<experiment>/<run-id>/{config.json, metrics.jsonl,
result.json, checkpoint.pt}. Re-running skips finished runs and resumes interrupted ones.
"""


TASK_CONFIGS = {"classification": "TrainConfig", "video": "VideoConfig", "detection": "DetectionConfig"}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of runs at once; got {text!r}")
    return value


def _runs_dir(text: str) -> Path:
    """--runs: a directory that exists or can be made, and that this user can write."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot create the records directory {text!r}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"the records directory {text!r} is not writable by this user")
    return path


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2, no usage dump, no traceback)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str) -> int:
    print(f"groupnorm: error: {message}", file=sys.stderr)
    return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="groupnorm",
        description="Group Normalization (Wu & He, 2018): reproduce the paper's experiments on real data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--runs", type=_runs_dir, default=Path("runs"), help="directory of the records (default: ./runs)"
        )
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting (repeatable); tuples are comma-separated, e.g. seeds=0,1,2",
        )

    experiments = sorted(EXPERIMENTS)
    rep = sub.add_parser(
        "reproduce",
        help="train one of the paper's experiments and write its report",
        description="Train every run of an experiment's preset that is not finished yet, then write "
        "runs/<experiment>/report.md, summary.json and figures beside the paper's numbers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: " + "; ".join(f"{n}: {', '.join(EXPERIMENTS[n].PRESETS)}" for n in experiments),
    )
    rep.add_argument(
        "experiment",
        nargs="?",
        default=DEFAULT_EXPERIMENT,
        choices=experiments,
        help=f"which experiment (default: {DEFAULT_EXPERIMENT})",
    )
    rep.add_argument("--preset", default="quick", help="smoke | quick (default) | full | paper")
    rep.add_argument("--jobs", type=_positive, default=None, help="runs at once (default: one per CPU core, 1 on GPU)")
    common(rep)

    train = sub.add_parser(
        "train",
        help="train one run",
        description="Train (or resume) one run of a task; every field of the task's config can be --set "
        "(classification: TrainConfig, video: VideoConfig, detection: DetectionConfig, in groupnorm.train).",
    )
    train.add_argument("--task", choices=sorted(TASK_CONFIGS), default="classification", help="default: classification")
    common(train)

    sweep = sub.add_parser("sweep", help="train a grid of norms x images per device x seeds")
    sweep.add_argument("--norms", nargs="+", default=["bn", "gn:8"], help="norm specs (default: bn gn:8)")
    sweep.add_argument("--images-per-device", nargs="+", type=int, default=[32, 2], help="default: 32 2")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0])
    sweep.add_argument("--experiment", default="sweep", help="records go to runs/<experiment> (default: sweep)")
    sweep.add_argument("--jobs", type=_positive, default=None, help="runs at once (default: one per CPU core)")
    common(sweep)

    report = sub.add_parser("report", help="rebuild an experiment's report from its records")
    report.add_argument(
        "experiment",
        nargs="?",
        default=DEFAULT_EXPERIMENT,
        help=f"experiment name or records directory (default: {DEFAULT_EXPERIMENT})",
    )
    report.add_argument("--runs", type=Path, default=Path("runs"))
    report.add_argument("--as", dest="kind", default=None, help="which report a records directory gets "
                        "(default: the directory's name; a sweep's records: batch-sizes)")  # fmt: skip

    check = sub.add_parser(
        "check",
        help="is a model batch-independent in training? names the modules that mix samples",
        description="Compare, in training mode, each sample's output alone and in the batch, and the gradient of "
        "its output w.r.t. the other samples' inputs; print the modules that mix samples. Exit status 1 when the "
        "model is not batch-independent.",
    )
    check.add_argument("model", help="a torchvision or timm model name (e.g. resnet50), or module:attr")
    check.add_argument("--norm", default=None, help="convert every BN to this norm spec first (e.g. gn:32)")
    check.add_argument("--input", default="2,3,224,224", help="input shape N,C,H,W (default: 2,3,224,224)")
    check.add_argument("--tolerance", type=float, default=1e-4, help="relative difference tolerated (default 1e-4)")
    return parser


def _reproduce(args: argparse.Namespace) -> int:
    from groupnorm.report import build_report

    module = EXPERIMENTS[args.experiment]
    if args.preset not in module.PRESETS:
        return _fail(f"unknown preset {args.preset!r} for {args.experiment}; choose from {', '.join(module.PRESETS)}")
    preset = apply_overrides(module.PRESETS[args.preset], args.overrides)
    print(
        f"groupnorm: {args.experiment}, preset {args.preset}, records in {args.runs / module.NAME}",
        flush=True,
    )
    run_experiment(module, preset, args.runs, jobs=args.jobs)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 writes the report
        return 0
    report = build_report(module.NAME, args.runs / module.NAME)
    print(f"\nReport: {report}")
    print(_verdict_of(report))
    return 0


def _verdict_of(report: Path) -> str:
    """The verdict paragraph of a report, for the terminal."""
    text = report.read_text()
    start = text.find("### Verdict")
    if start < 0:
        return ""
    end = text.find("\n### ", start + 1)
    return text[start : end if end > 0 else None].strip()


def _train(args: argparse.Namespace) -> int:
    import groupnorm.train as train

    cfg = apply_overrides(getattr(train, TASK_CONFIGS[args.task])(), args.overrides)
    train.check_configs([cfg], args.runs)
    result = train.train_run(cfg, args.runs)
    if int(os.environ.get("RANK", "0")) == 0:
        if "bbox_AP" in result:
            ap = result["bbox_AP"]
            print(f"{cfg.id}: box AP {ap}, mask AP {result['segm_AP']} (COCOeval, %), {result['status']}")
        else:
            print(
                f"{cfg.id}: error {result['error']:.2f}% (median of the last {cfg.median_last} epochs), "
                f"train error {result['train_error']:.2f}%, {result['status']}"
            )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from groupnorm.nn.spec import parse_norm_spec
    from groupnorm.report import build_report
    from groupnorm.train import TrainConfig
    from groupnorm.train.sweep import run_sweep

    base = apply_overrides(TrainConfig(experiment=args.experiment), args.overrides)
    configs = [
        base.replace(norm=n, images_per_device=b, seed=s)
        for n in args.norms
        for b in args.images_per_device
        for s in args.seeds
    ]
    for c in configs:  # fail before training anything
        parse_norm_spec(c.norm)
    run_sweep(configs, args.runs, jobs=args.jobs)
    print(f"\nReport: {build_report('batch-sizes', args.runs / args.experiment)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from groupnorm.report import build_report

    given = Path(args.experiment)
    directory = given if given.is_dir() else args.runs / args.experiment
    print(build_report(args.kind or directory.name, directory))
    return 0


def _check(args: argparse.Namespace) -> int:
    import torch

    from groupnorm.convert import convert_norms
    from groupnorm.convert.check import check_batch_independence, load_model

    try:
        shape = tuple(int(v) for v in args.input.split(","))
    except ValueError:
        return _fail(f"--input must be comma-separated ints such as 2,3,224,224; got {args.input!r}")
    model = load_model(args.model)
    if args.norm:
        convert_norms(model, args.norm)
    report = check_batch_independence(model, torch.randn(shape), tolerance=args.tolerance)
    print(f"{args.model}{f' with {args.norm}' if args.norm else ''}, input {args.input}:\n{report}")
    return 0 if report.independent else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    handler = {"reproduce": _reproduce, "train": _train, "sweep": _sweep, "report": _report, "check": _check}[
        args.command
    ]
    try:
        return handler(args)
    except OverrideError as e:
        return _fail(str(e))
    except SweepFailed as e:
        print(f"groupnorm: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("GROUPNORM_DEBUG"):
            raise
        return _fail(str(e))
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished runs are kept, the current one resumes from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
