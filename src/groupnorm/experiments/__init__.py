"""One module per paper experiment: a preset dataclass, PRESETS, and ``configs(preset) -> run configs``.

An experiment is preset -> configs -> run, nothing else: ``run_experiment(module, preset, runs_dir)``
trains the module's ``pretrain_configs(preset)`` first where it has them (runs whose checkpoints other
runs start from, through their ``init``), then its ``configs(preset)``, with the one run engine
(groupnorm.train), and returns the experiment's records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from groupnorm.experiments import batch_sizes, detection, features, groups, video
from groupnorm.train.engine import check_configs
from groupnorm.train.records import Record, load_records
from groupnorm.train.sweep import run_sweep

__all__ = ["EXPERIMENTS", "run_experiment"]

EXPERIMENTS: dict[str, ModuleType] = {
    batch_sizes.NAME: batch_sizes,
    detection.NAME: detection,
    groups.NAME: groups,
    features.NAME: features,
    video.NAME: video,
}


def run_experiment(
    module: ModuleType,
    preset: Any,
    runs_dir: Path | str,
    *,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Record]:
    """Train every run of ``preset`` not yet finished under ``runs_dir`` (its pre-training runs first);
    return the experiment's records. Every config is checked before anything trains."""
    main = module.configs(preset, log)
    pre = module.pretrain_configs(preset) if hasattr(module, "pretrain_configs") else []
    check_configs([*pre, *main], runs_dir, check_init=False)  # the inits are made by the pre-training
    if hasattr(module, "prepare"):
        module.prepare(preset, main, Path(runs_dir), log)  # e.g. generate a dataset once, before parallel runs read it
    if pre:
        log(f"{module.NAME}: pre-training {len(pre)} model(s) that other runs start from")
        run_sweep(pre, runs_dir, jobs=jobs, log=log)
    run_sweep(main, runs_dir, jobs=jobs, log=log)
    return load_records(Path(runs_dir) / module.NAME)
