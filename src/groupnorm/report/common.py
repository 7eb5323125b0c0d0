"""What every report needs: labels, seed statistics, markdown tables and figures written atomically."""

from __future__ import annotations

import io
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from groupnorm.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from groupnorm.nn.spec import parse_norm_spec
from groupnorm.train.records import Record, load_records

__all__ = [
    "CONVERGENCE_THRESHOLD",
    "Cell",
    "FinishedRuns",
    "convergence",
    "convergence_text",
    "curves_figure",
    "diff",
    "finished_runs",
    "fmt",
    "gated",
    "group_cells",
    "last_quarter_gain",
    "markdown_table",
    "mean_std",
    "near_chance",
    "norm_kind",
    "norm_label",
    "recipe",
    "recorded",
    "save_figure",
    "seed_noise_note",
    "tie",
    "write_report",
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


@dataclass
class Cell:
    """The finished runs of one setting of a table (one per seed): the one cell type of every report."""

    key: tuple
    records: list[Record] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        """The first run's config (the runs of a cell differ only in their seed)."""
        return self.records[0].config

    def values(self, key: str) -> list[float]:
        """``key`` of each run's result.json (NaN where a run lacks it)."""
        return [math.nan if r.result.get(key) is None else float(r.result[key]) for r in self.records]  # type: ignore[union-attr]

    @property
    def errors(self) -> list[float]:
        return self.values("error")

    @property
    def train_errors(self) -> list[float]:
        return self.values("train_error")

    @property
    def seeds(self) -> list[int]:
        return sorted(r.config["seed"] for r in self.records)

    @property
    def diverged(self) -> int:
        """How many of the runs stopped with a non-finite loss."""
        return sum(r.result.get("status") == "diverged" for r in self.records)  # type: ignore[union-attr]

    @property
    def mean_std(self) -> tuple[float, float]:
        return mean_std(self.errors)

    def stats(self, key: str) -> tuple[float, float]:
        """Mean and std over seeds of ``key`` of result.json."""
        return mean_std(self.values(key))

    def curve(self, key: str) -> list[float]:
        """``key`` of metrics.jsonl per epoch, averaged over seeds (over the epochs every seed has)."""
        n = min(len(r.metrics) for r in self.records)
        return [statistics.fmean(r.metrics[i][key] for r in self.records) for i in range(n)]


C = TypeVar("C", bound=Cell)


def group_cells(
    records: Iterable[Record], key_of: Callable[[Record], tuple | None], cell_type: type[C] = Cell
) -> dict[tuple, C]:
    """Records grouped into cells by ``key_of`` (None leaves a record out), in the records' order."""
    cells: dict[tuple, C] = {}
    for r in records:
        key = key_of(r)
        if key is not None:
            cells.setdefault(key, cell_type(key)).records.append(r)
    return cells


# Points of val error (or AP) gained over the last quarter of training, at most. A cosine schedule anneals in
# its last quarter, which gains 1.4-1.5 points even in runs at their floor (Fashion-MNIST ResNet-8, 6000 steps);
# runs still falling fast gain more (2.2-2.4 at 16 epochs of 12000 images: docs/results.md, issue 13).
CONVERGENCE_THRESHOLD = 2.0
CHANCE_MARGIN = 0.8  # an error above this fraction of chance's is "near chance"


def last_quarter_gain(metrics: Sequence[dict[str, Any]], key: str = "val_error", higher_better: bool = False):
    """How much ``key`` improved over the last quarter of training: its value at three quarters of the run minus
    its value at the end (points; positive = still improving), each the median of the last 3 values up to
    there, so that one noisy epoch neither hides nor fakes an improvement. None when the run is too short to
    tell (fewer than 8 epochs, or fewer than 3 values of ``key`` up to three quarters)."""
    points = [(m["epoch"], m[key]) for m in metrics if m.get(key) is not None]
    epochs = metrics[-1]["epoch"] if metrics else 0
    before = [v for e, v in points if e <= 0.75 * epochs][-3:]
    if epochs < 8 or len(before) < 3 or points[-1][0] <= 0.75 * epochs:
        return None
    gain = statistics.median(before) - statistics.median(v for _, v in points[-3:])
    return -gain if higher_better else gain


def convergence(cells: Iterable[Cell], key: str = "val_error", higher_better: bool = False) -> dict[str, Any]:
    """Every run's last-quarter gain, and which runs fail the check (gain above CONVERGENCE_THRESHOLD, or too
    short to tell): {"gains": {run_id: gain or None}, "failed": [run ids]}."""
    gains = {r.run_dir.name: last_quarter_gain(r.metrics, key, higher_better) for c in cells for r in c.records}
    failed = [k for k, g in gains.items() if g is None or g > CONVERGENCE_THRESHOLD]
    return {"gains": gains, "failed": failed, "threshold": CONVERGENCE_THRESHOLD, "key": key}


def convergence_text(check: dict[str, Any]) -> str:
    """The report's convergence paragraph."""
    gains = [g for g in check["gains"].values() if g is not None]
    worst = f"; the largest gain here is {max(gains):.2f}" if gains else ""
    rule = (
        f"Convergence check: a run passes when its {check['key']} improved by at most {check['threshold']:.1f} "
        f"points over the last quarter of its epochs (medians of 3 epochs at three quarters and at the end{worst}). "
    )
    if not check["failed"]:
        return rule + f"All {len(check['gains'])} runs pass.\n"
    return rule + (
        f"**{len(check['failed'])} of {len(check['gains'])} runs fail it** (still improving, or too short to "
        f"tell): {', '.join(f'`{r}`' for r in check['failed'])}. Their numbers are not converged values, and "
        "the verdict does not judge the paper's claims on them.\n"
    )


def gated(lines: list[str], check: dict[str, Any]) -> list[str]:
    """A verdict whose summary (its last line opening with "**") gives way to "no verdict" when runs failed
    the convergence check: the paper's claims are not judged on unconverged numbers."""
    if not check["failed"]:
        return lines
    out = list(lines)
    for i in range(len(out) - 1, -1, -1):
        if out[i].lstrip().startswith("**"):
            out[i] = (
                f"\n**No verdict on the paper's claims**: {len(check['failed'])} of {len(check['gains'])} runs did "
                "not converge (the check below), so the differences above measure the training budget as much "
                "as the normalization. Train longer (`--set epochs=...`) or use a larger preset."
            )
            break
    return out


def near_chance(error: float, classes: int | None) -> bool:
    """Whether a top-1 error % is near chance's (at least CHANCE_MARGIN of the error of guessing)."""
    return bool(classes) and error >= CHANCE_MARGIN * 100.0 * (1 - 1 / classes)  # type: ignore[operator]


def tie(diff: float, sd: float, n_seeds: int, floor: float = 0.5) -> bool:
    """A difference that cannot be told from noise: within twice the seed noise (2+ seeds), or below
    ``floor`` points with one seed."""
    return abs(diff) <= (2 * sd if n_seeds >= 2 else floor)


def norm_kind(spec: str) -> str:
    """The normalization of a spec: 'gn:8' -> 'gn', 'ws+gn/16' -> 'gn', 'gn:8+silu' -> 'gn'."""
    return parse_norm_spec(spec).kind


def norm_label(spec: str) -> str:
    """A human label: 'gn:8' -> 'GN (G=8)', 'gn/16' -> 'GN (16 ch/group)', 'bn' -> 'BN',
    'gn:8+silu' -> 'GN (G=8)+SiLU'."""
    s = parse_norm_spec(spec)
    kind = {"none": "no norm", "evonorm-s0": "EvoNorm-S0"}.get(s.kind, s.kind.upper())
    if s.groups is not None:
        label = f"{kind} (G={s.groups})"
    elif s.group_size is not None:
        label = f"{kind} ({s.group_size} ch/group)"
    else:
        label = f"{kind}:{s.variant}" if s.variant else kind
    act = {"relu": "ReLU", "silu": "SiLU", "gelu": "GELU"}.get(s.act, s.act)
    return ("WS+" if s.ws else "") + label + (f"+{act}" if act else "")


def recorded(configs: Sequence[dict[str, Any]], key: str, default: Any = None) -> str:
    """A recorded setting: its value, or each value where the runs differ."""
    vals = sorted({f"{c.get(key, default):g}" if isinstance(c.get(key, default), float) else str(c.get(key, default))
                   for c in configs})  # fmt: skip
    return " / ".join(vals)


def recipe(configs: Sequence[dict[str, Any]], unit: str = "images") -> str:
    """The optimisation recipe as the runs recorded it (not as a preset says): every task's lr and warm-up rule."""
    schedules = set()
    for c in configs:
        if c.get("schedule", "cosine") == "step":
            ms = c.get("milestones", (0.3, 0.6, 0.9))
            schedules.add("/10 at " + ", ".join(f"{m:.0%}" for m in ms) + " of training")
        else:
            schedules.add("cosine decay")
    if any(c.get("reference_batch") for c in configs):  # the optimiser's batch fixed: one lr for every B
        batch = recorded([{"b": c["images_per_device"] * c["devices"]} for c in configs], "b")
        rule = (
            f"B = {recorded(configs, 'images_per_device', 0)} {unit} per device on {recorded(configs, 'devices')} "
            f"(virtual) devices, the same {batch} {unit} per optimiser step at every B, so one lr = "
            f"{recorded(configs, 'base_lr')} x {batch}/{recorded(configs, 'reference_batch')}"
        )
    else:
        rule = (
            f"lr = {recorded(configs, 'base_lr')} x B/{recorded(configs, 'reference_images_per_device', 32)} at B "
            f"{unit} per device"
        )
    return (
        f"SGD momentum {recorded(configs, 'momentum')}, weight decay {recorded(configs, 'weight_decay')}; "
        f"{rule}, warmed up linearly from lr/10 over {recorded(configs, 'warmup_epochs')} epochs, then "
        f"{' / '.join(sorted(schedules))}; {recorded(configs, 'epochs')} epochs at every B"
    )


def write_report(
    experiment_dir: Path | str,
    experiment: str,
    setting_of: Callable[[Record], tuple],
    header: Callable[[list[dict[str, Any]]], str],
    section: Callable[[tuple, list[Record], Path, bool], tuple[str, list[dict[str, Any]]]],
    what: str = "runs",
    *,
    footer: Callable[[], str] | None = None,
) -> Path:
    """Every report's skeleton: the finished runs by setting; ``header(configs)`` (title, recipe), then one
    ``section`` per setting; report.md and summary.json ({"rows": ...}) written atomically. Returns report.md."""
    experiment_dir = Path(experiment_dir)
    runs = finished_runs(experiment_dir, setting_of, experiment, what)
    first, *rest = header([r.config for r in runs.records]).split("\n\n", 1)
    parts = [first + "\n\n", runs.provenance(experiment_dir, experiment), *rest]
    rows: list[dict[str, Any]] = []
    for setting in sorted(runs.by_setting, key=str):
        text, setting_rows = section(setting, runs.by_setting[setting], experiment_dir / "figures", runs.multi)
        parts.append(text)
        rows += setting_rows
    if footer is not None:
        parts.append(footer())
    report = experiment_dir / "report.md"
    atomic_write_text(report, "".join(parts))
    atomic_write_json(experiment_dir / "summary.json", {"rows": rows})
    return report


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


def diff(a: Cell, b: Cell, key: str = "error") -> tuple[float, float, int] | None:
    """mean(a) − mean(b) of ``key`` over the finished runs, the sd of that difference, and the fewest seeds."""
    va, vb = a.values(key), b.values(key)
    if not va or not vb:
        return None
    (ma, sa), (mb, sb) = mean_std(va), mean_std(vb)
    return ma - mb, math.hypot(sa, sb), min(len(va), len(vb))


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


def curves_figure(panels: dict[str, list[tuple[str, Cell]]], width: float = 3.6):
    """Train (dashed) and val (solid) error per epoch, means over seeds: a panel per title, a line pair per
    (label, cell) in it. Every report's convergence curves."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.2), sharey=True, squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, c in lines:
            val, train = c.curve("val_error"), c.curve("train_error")
            (line,) = ax.plot(range(1, len(val) + 1), val, label=label)
            ax.plot(range(1, len(train) + 1), train, "--", color=line.get_color())
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("error (%)")
    fig.tight_layout()
    return fig


def pyplot():
    """matplotlib.pyplot on the Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
