"""What every report needs: labels, seed statistics, markdown tables and figures written atomically."""

from __future__ import annotations

import io
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from groupnorm.io import atomic_write_bytes
from groupnorm.train.records import Record, load_records

__all__ = [
    "FinishedRuns",
    "finished_runs",
    "fmt",
    "markdown_table",
    "mean_std",
    "norm_kind",
    "norm_label",
    "save_figure",
    "seed_noise_note",
]


@dataclass
class FinishedRuns:
    """An experiment's finished records, grouped by setting (one report section per setting)."""

    records: list[Record]
    by_setting: dict[tuple, list[Record]]
    unfinished: int

    @property
    def multi(self) -> bool:
        return len(self.by_setting) > 1

    def provenance(self, experiment_dir: Path, experiment: str) -> str:
        """The report's "Rebuilt from ..." line."""
        left_out = f" ({self.unfinished} unfinished runs left out)" if self.unfinished else ""
        return (
            f"Rebuilt from {len(self.records)} finished runs in `{experiment_dir}` by "
            f"`groupnorm report {experiment}`{left_out}.\n\n"
        )


def finished_runs(
    experiment_dir: Path, setting_of: Callable[[Record], tuple], experiment: str, what: str = "runs"
) -> FinishedRuns:
    """The finished runs under ``experiment_dir`` by ``setting_of``; FileNotFoundError if there are none."""
    everything = load_records(experiment_dir)
    records = [r for r in everything if r.finished]
    if not records:
        raise FileNotFoundError(
            f"no finished {what} under {experiment_dir}: train some first (groupnorm reproduce {experiment})"
        )
    by_setting: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        by_setting[setting_of(r)].append(r)
    return FinishedRuns(records, dict(by_setting), len(everything) - len(records))


def norm_kind(spec: str) -> str:
    """bn, ln, in, gn, none ... from a spec such as 'gn:8' or 'ws+gn/16'."""
    return spec.split("+")[-1].split(":")[0].split("/")[0]


def norm_label(spec: str) -> str:
    """A human label: 'gn:8' -> 'GN (G=8)', 'gn/16' -> 'GN (16 ch/group)', 'bn' -> 'BN'."""
    ws = spec.startswith("ws+")
    core = spec[3:] if ws else spec
    kind = norm_kind(core).upper()
    if ":" in core:
        arg = core.split(":", 1)[1]
        label = f"{kind} (G={arg})" if arg.isdigit() else f"{kind}:{arg}"
    elif "/" in core:
        label = f"{kind} ({core.split('/', 1)[1]} ch/group)"
    else:
        label = {"NONE": "no norm"}.get(kind, kind)
    return ("WS+" if ws else "") + label


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std 0 for a single seed)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(mean: float, std: float | None = None, n: int = 1) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if std is not None and n > 1 else f"{mean:.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def seed_noise_note(diff: float, std: float, n_seeds: int) -> str:
    """Whether a difference of means stands out of seed noise (twice its standard deviation)."""
    if n_seeds < 2:
        return "one seed, so no estimate of seed noise"
    verdict = "beyond" if abs(diff) > 2 * std else "within"
    return f"{verdict} seed noise (2 sd = {2 * std:.2f})"


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
