"""Train step time of each Mask R-CNN variant of the detection experiment, against BN* in the same run.

    python benchmarks/detection_step.py                      # the quick preset's sizes, every variant, 1 thread
    python benchmarks/detection_step.py --preset full --threads 2
    python benchmarks/detection_step.py --device cuda --preset paper --set dataset=scenes --set scene_size=800 ...

One step is forward + backward + SGD update of torchvision's MaskRCNN at the preset's batch
(images_per_device x devices) on real scene images. Variants are timed in interleaved rounds
(so load on a shared machine hits them alike) after warm-up steps; the printed ratio is
median(variant) / median(BN*). Weights are random (the step's cost does not depend on them but
through the number of proposals, which the fixed RoI sample sizes bound). The last line
extrapolates the preset's training time on this machine from the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from groupnorm.data.coco import DetectionLoader
from groupnorm.experiments import detection as experiment
from groupnorm.models.maskrcnn import build_mask_rcnn
from groupnorm.train.detection import open_datasets
from groupnorm.train.overrides import apply_overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", choices=list(experiment.PRESETS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variants", nargs="+", default=None, help=f"default: all of {', '.join(experiment.VARIANTS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: as a sweep runs on a CPU)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    variants = tuple(args.variants or experiment.VARIANTS)
    preset = apply_overrides(experiment.PRESETS[args.preset], [*args.overrides, "seeds=0"])
    preset = apply_overrides(preset, [f"variants={','.join(variants)}"])
    cfgs = {c.variant: c for c in experiment.configs(preset)}
    train_set, _ = open_datasets(next(iter(cfgs.values())))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    runners = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)  # random weights: the step's cost does not depend on them (see the docstring)
        model = build_mask_rcnn(cfg, train_set.num_classes, devices=cfg.devices)
        model = model.to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
        loader = DetectionLoader(train_set, cfg.effective_batch, train=True, seed=0)
        batches = loader.epoch(0)

        def step(model=model, opt=opt, batches=batches):
            images, targets = next(batches)
            images = [i.to(device) for i in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            sync()
            t0 = time.perf_counter()
            loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            return time.perf_counter() - t0

        runners[name] = (cfg, step)

    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.warmup):
        for _, step in runners.values():
            step()
    for _ in range(args.steps):
        for name, (_, step) in runners.items():
            times[name].append(step())

    base = "bn*" if "bn*" in times else next(iter(times))
    base_t = statistics.median(times[base])
    batch = next(iter(runners.values()))[0].effective_batch
    print(
        f"Mask R-CNN train step, preset {args.preset}: {batch} images/step, {args.threads} thread(s), {device}, "
        f"torch {torch.__version__}"
    )
    print(f"{'variant':<16} {'backbone':<10} {'heads':<14} {'s/step':>8} {'img/s':>7} {'vs ' + base:>8}")
    for name, ts in times.items():
        cfg = runners[name][0]
        med = statistics.median(ts)
        heads = f"{cfg.head} {cfg.head_norm}"
        print(f"{name:<16} {cfg.backbone_norm:<10} {heads:<14} {med:8.3f} {batch / med:7.1f} {med / base_t:8.2f}")
    total = 0.0
    for cfg in experiment.configs(apply_overrides(experiment.PRESETS[args.preset], args.overrides)):
        steps = cfg.epochs * (cfg.scene_train // cfg.effective_batch)
        total += steps * statistics.median(times.get(cfg.variant, times[base]))
    print(
        f"estimated detection training of preset {args.preset} on this machine: {total / 60:.1f} min of single-run "
        "time (divide by the runs that go in parallel; evaluation and pre-training not included)"
    )


if __name__ == "__main__":
    main()
