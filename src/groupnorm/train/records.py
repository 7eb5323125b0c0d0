"""Records: the single source of truth of every result.

    runs/<experiment>/<run-id>/config.json      the TrainConfig
                               metrics.jsonl    one line per epoch
                               result.json      written once the run has finished
                               checkpoint.pt    the last checkpoint (resume point)

All files are written atomically; reports are rebuilt from these files alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupnorm.io import atomic_write_json, atomic_write_text

__all__ = ["Record", "load_records", "read_metrics", "write_metrics"]

CONFIG, METRICS, RESULT, CHECKPOINT = "config.json", "metrics.jsonl", "result.json", "checkpoint.pt"


def write_metrics(run_dir: Path, metrics: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Record:
    """A run's files, read back."""

    run_dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    result: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.result is not None


def load_records(experiment_dir: Path) -> list[Record]:
    """Every run under ``experiment_dir`` that has a config.json, finished or not, sorted by run id."""
    records = []
    for cfg_path in sorted(Path(experiment_dir).glob(f"*/{CONFIG}")):
        run_dir = cfg_path.parent
        result_path = run_dir / RESULT
        records.append(
            Record(
                run_dir,
                json.loads(cfg_path.read_text()),
                read_metrics(run_dir),
                json.loads(result_path.read_text()) if result_path.is_file() else None,
            )
        )
    return records


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_json(run_dir / CONFIG, config)


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    atomic_write_json(run_dir / RESULT, result)
