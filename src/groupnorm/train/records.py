"""Records: the single source of truth of every result.

    runs/<experiment>/<run-id>/config.json      the run's config (a RunConfig of its task, as a dict)
                               metrics.jsonl    one line per epoch
                               result.json      written once the run has finished
                               checkpoint.pt    the last checkpoint (resume point)
                               probes.jsonl     percentiles of a layer's responses (runs with probe_every)

All files are written atomically (readable as the umask allows, like any file the user writes); reports
are rebuilt from these files alone. A file that cannot be read back raises CorruptRecord, which names
the file, what is wrong and how to go on.
"""

from __future__ import annotations

import fcntl
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from groupnorm.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "CorruptRecord",
    "Record",
    "RunBusy",
    "RunLock",
    "load_checkpoint",
    "load_records",
    "read_json",
    "read_metrics",
    "read_probes",
    "read_result",
    "save_checkpoint",
    "write_config",
    "write_metrics",
    "write_probes",
    "write_result",
]

CONFIG, METRICS, RESULT, CHECKPOINT = "config.json", "metrics.jsonl", "result.json", "checkpoint.pt"
PROBES = "probes.jsonl"


class CorruptRecord(ValueError):
    """A record file that cannot be read back: names the file, what is wrong, and how to go on."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path} is unreadable: {problem}. To go on, restart that run: delete its directory "
            f"{self.path.parent} (or just this file) and run the same command again"
        )


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(m, sort_keys=True) + "\n" for m in lines))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRecord(path, f"not valid JSON ({e})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise CorruptRecord(path, f"line {number} is not valid JSON ({e})") from None
    return out


def write_metrics(run_dir: Path, metrics: list[dict[str, Any]]) -> None:
    _write_jsonl(run_dir / METRICS, metrics)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return _read_jsonl(Path(run_dir) / METRICS)


def write_probes(run_dir: Path, probes: list[dict[str, Any]]) -> None:
    _write_jsonl(run_dir / PROBES, probes)


def read_probes(run_dir: Path) -> list[dict[str, Any]]:
    """probes.jsonl: one line per probe, {"iteration", "epoch", "percentiles": {"1": value, "20": ...}}."""
    return _read_jsonl(Path(run_dir) / PROBES)


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
        result = read_json(result_path) if result_path.is_file() else None
        records.append(Record(run_dir, read_json(cfg_path), read_metrics(run_dir), result))
    return records


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_json(run_dir / CONFIG, config)


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    atomic_write_json(run_dir / RESULT, result)


def read_result(run_dir: Path) -> dict[str, Any]:
    result = read_json(Path(run_dir) / RESULT)
    if not isinstance(result, dict):
        raise CorruptRecord(Path(run_dir) / RESULT, f"expected a JSON object, got {type(result).__name__}")
    return result


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save ``state`` (tensors, numbers, strings, lists and dicts of them) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: no pickled code runs. CorruptRecord if it cannot be read."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a truncated or foreign file: torch raises several types, none naming the file
        raise CorruptRecord(Path(path), f"not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


class RunBusy(RuntimeError):
    """Another process is training this run right now."""


class RunLock:
    """An exclusive lock on a run directory, so two processes never train the same run at once."""

    def __init__(self, run_dir: Path) -> None:
        self._handle = open(Path(run_dir) / ".lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise RunBusy(f"{run_dir} is being trained by another process") from None

    def release(self) -> None:
        self._handle.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
