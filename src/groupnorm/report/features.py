"""Report of the feature-distribution study: Figure 6 and the VGG's val errors beside the paper's.

runs/features/report.md       the verdict, the errors beside the paper's 29.2 / 28.0 / 27.6, figures embedded
runs/features/summary.json    {"rows": [{norm, seeds, error_mean, error_std, spread_first, spread_last, drift, ...}]}
runs/features/figures/*.png
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupnorm.report import common, paper
from groupnorm.report.common import (
    convergence,
    convergence_text,
    curves_figure,
    fmt,
    gated,
    group_cells,
    markdown_table,
    mean_std,
    norm_kind,
    norm_label,
    pyplot,
    recipe,
    save_figure,
    write_report,
)
from groupnorm.train.records import Record, read_probes

__all__ = ["Curves", "NormRuns", "build_report", "verdict"]

SETTING_KEYS = ("dataset", "model", "depth", "width", "train_images", "epochs", "devices", "images_per_device")
KIND_ORDER = {"none": 0, "bn": 1, "gn": 2}
DRIFT_FACTOR = 2.0  # a spread that grows (or shrinks) by more than this after the first epoch "drifts"


@dataclass
class Curves:
    """Percentile curves of one norm, averaged over seeds at the iterations every seed has."""

    iterations: list[int]
    epochs: list[float]
    values: dict[str, list[float]]  # percentile ("1", "20", ...) -> value per iteration

    @property
    def percentiles(self) -> list[str]:
        return sorted(self.values, key=float)

    @property
    def spread(self) -> list[float]:
        """The outermost percentiles' distance (p99 - p1 by default) per iteration."""
        lo, hi = self.percentiles[0], self.percentiles[-1]
        return [b - a for a, b in zip(self.values[lo], self.values[hi], strict=True)]

    def at_epoch(self, epoch: float) -> int:
        """Index of the first probe at or after ``epoch`` (the last one if none)."""
        return next((i for i, e in enumerate(self.epochs) if e >= epoch - 1e-9), len(self.epochs) - 1)

    @property
    def drift(self) -> float:
        """Spread at the last probe over the spread after the first epoch: ~1 bounded, >> 1 or << 1 drifting
        (nan for a run of one epoch or less)."""
        s = self.spread
        i = self.at_epoch(1.0)
        if i >= len(s) - 1 or s[i] <= 0:
            return float("nan")
        return s[-1] / s[i]

    @property
    def jitter(self) -> float:
        """Median relative change of the spread from one probe to the next after the first epoch, in %."""
        s = self.spread[self.at_epoch(1.0) :]
        steps = [abs(b - a) / abs(a) for a, b in itertools.pairwise(s) if a]
        return 100 * statistics.median(steps) if steps else float("nan")


class NormRuns(common.Cell):
    """The runs of one norm (one per seed) and their probes; key (norm,)."""

    @property
    def norm(self) -> str:
        return self.key[0]

    def curves(self) -> Curves | None:
        per_seed = [read_probes(r.run_dir) for r in self.records]
        per_seed = [p for p in per_seed if p]
        if not per_seed:
            return None
        shared = set.intersection(*({p["iteration"] for p in probes} for probes in per_seed))
        iterations = sorted(shared)
        by_seed = [{p["iteration"]: p for p in probes} for probes in per_seed]
        keys = sorted(per_seed[0][0]["percentiles"], key=float)
        values = {k: [statistics.fmean(s[i]["percentiles"][k] for s in by_seed) for i in iterations] for k in keys}
        epochs = [by_seed[0][i]["epoch"] for i in iterations]
        return Curves(iterations, epochs, values)

    @functools.cached_property
    def seed_curves(self) -> list[Curves]:
        """Each run's own curves, read once (the cell's runs are complete when a report asks). Drift and jitter
        are measured per run and then averaged: averaging the percentile curves over seeds first smooths the
        probe-to-probe jitter away (one no-norm run 8.9%, the mean curve of three 3.8%)."""
        out = []
        for r in self.records:
            probes = read_probes(r.run_dir)
            if probes:
                keys = sorted(probes[0]["percentiles"], key=float)
                values = {k: [p["percentiles"][k] for p in probes] for k in keys}
                out.append(Curves([p["iteration"] for p in probes], [p["epoch"] for p in probes], values))
        return out

    def run_stat(self, name: str) -> tuple[float, float]:
        """Mean and sd over the runs of a per-run curve statistic (``"drift"`` or ``"jitter"``); a run whose
        statistic is not finite (a diverged run) makes the mean that value, nan when there is none."""
        values = [getattr(c, name) for c in self.seed_curves]
        bad = [v for v in values if not _finite(v)]
        if bad:
            return bad[0], float("nan")
        return mean_std(values) if values else (float("nan"), float("nan"))


def _norm_runs(recs: list[Record]) -> dict[str, NormRuns]:
    runs = {key[0]: cell for key, cell in group_cells(recs, lambda r: (r.config["norm"],), NormRuns).items()}
    return dict(sorted(runs.items(), key=lambda kv: (KIND_ORDER.get(norm_kind(kv[0]), 9), kv[0])))


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _finite_or_none(x: float) -> float | None:
    return x if _finite(x) else None


def verdict(runs: dict[str, NormRuns], curves: dict[str, Curves | None]) -> list[str]:
    """Plain sentences: do the percentiles drift without a norm and stay bounded with BN and GN?"""
    lines = []
    for norm, c in curves.items():
        if c is None or len(c.iterations) < 2:
            lines.append(f"- {norm_label(norm)}: no percentile curve recorded.")
            continue
        s = c.spread
        i1 = c.at_epoch(1.0)
        if i1 >= len(s) - 1:
            lines.append(
                f"- {norm_label(norm)}: the run is one epoch or shorter, too short to tell drift "
                f"(p{c.percentiles[-1]} − p{c.percentiles[0]} {s[0]:.3g} at iteration 0, {s[-1]:.3g} at the end)."
            )
            continue
        lo, hi = c.percentiles[0], c.percentiles[-1]
        after = s[i1:]
        seeds = len(runs[norm].records)
        per_run = f"per run, mean over {seeds}" if seeds > 1 else "per run"
        lines.append(
            f"- {norm_label(norm)}: p{hi} − p{lo} goes from {s[0]:.3g} at iteration 0 to {s[i1]:.3g} after the first "
            f"epoch and {s[-1]:.3g} at the end (between {min(after):.3g} and {max(after):.3g}; {per_run}: "
            f"× {runs[norm].run_stat('drift')[0]:.2f} after the first epoch, "
            f"{runs[norm].run_stat('jitter')[0]:.1f}% median change from one probe to the next)."
        )
        if runs[norm].diverged:
            lines.append(f"  - {runs[norm].diverged} of its {len(runs[norm].records)} runs diverged.")
    drifts = {  # runs longer than one epoch, mean over seeds; a nan here is a spread gone nan or inf (diverged)
        n: runs[n].run_stat("drift")[0]
        for n, c in curves.items()
        if c is not None and c.at_epoch(1.0) < len(c.iterations) - 1
    }
    plain = [n for n in drifts if norm_kind(n) == "none"]
    normed = [n for n in drifts if norm_kind(n) in ("bn", "gn")]
    if plain and normed:

        def drifting(x: float) -> bool:
            return not _finite(x) or x > DRIFT_FACTOR or x < 1 / DRIFT_FACTOR

        plain_drifts = all(drifting(drifts[n]) for n in plain)
        normed_bounded = all(not drifting(drifts[n]) for n in normed)
        worst_normed = max(abs(math.log(drifts[n])) if _finite(drifts[n]) else math.inf for n in normed)
        plain_more = all(not _finite(drifts[n]) or abs(math.log(drifts[n])) > worst_normed for n in plain)
        if plain_drifts and normed_bounded:
            summary = (
                "**The paper's picture holds here**: without normalization the spread of the last conv's "
                f"responses changes by more than × {DRIFT_FACTOR:g} after the first epoch, with BN and GN by less."
            )
        elif plain_more:
            summary = (
                "**The paper's picture holds in direction only**: the no-norm responses move more than BN's and "
                f"GN's after the first epoch, but not all by the × {DRIFT_FACTOR:g} margin taken here."
            )
        else:
            summary = (
                "**The paper's picture does not hold here**: the no-norm responses do not drift more than BN's "
                "and GN's after the first epoch."
            )
        lines.append("\n" + summary)
    return lines


def _stat_cell(cell: NormRuns, name: str) -> str:
    m, sd = cell.run_stat(name)
    return fmt(m, sd, len(cell.records)) if _finite(m) else "–"


def _error_table(runs: dict[str, NormRuns]) -> str:
    header = ["", *[norm_label(n) for n in runs]]
    rows = [
        ["val error, ours", *[fmt(*mean_std(r.errors), len(r.records)) for r in runs.values()]],
        ["train error, ours", *[fmt(*mean_std(r.train_errors), len(r.records)) for r in runs.values()]],
        [
            "val error, paper (ImageNet, VGG-16)",
            *[f"{paper.VGG_ERRORS[k]:.1f}" if (k := norm_kind(n)) in paper.VGG_ERRORS else "–" for n in runs],
        ],
        ["spread drift after epoch 1 (×)", *[_stat_cell(r, "drift") for r in runs.values()]],
        ["probe-to-probe change of the spread (%)", *[_stat_cell(r, "jitter") for r in runs.values()]],
    ]
    return markdown_table(header, rows)


def _fig6(curves: dict[str, Curves | None]):
    present = {n: c for n, c in curves.items() if c is not None}
    if not present:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.6), squeeze=False)
    colors = ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown"]
    for ax, (norm, c) in zip(axes[0], present.items(), strict=True):
        keys = c.percentiles
        if len(keys) >= 2:
            ax.fill_between(c.iterations, c.values[keys[0]], c.values[keys[-1]], color="tab:blue", alpha=0.12)
        if len(keys) >= 4:
            ax.fill_between(c.iterations, c.values[keys[1]], c.values[keys[-2]], color="tab:blue", alpha=0.25)
        for k, color in zip(reversed(keys), colors, strict=False):
            ax.plot(c.iterations, c.values[k], color=color, lw=1.2, label=f"{k} percentile")
        ax.set_title(norm_label(norm))
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("last conv's response (before norm and ReLU)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fig_spread(curves: dict[str, Curves | None]):
    present = {n: c for n, c in curves.items() if c is not None}
    if not present:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for norm, c in present.items():
        s = c.spread
        if all(v > 0 and _finite(v) for v in s):
            ax.plot(c.iterations, s, label=norm_label(norm))
    lo, hi = next(iter(present.values())).percentiles[0], next(iter(present.values())).percentiles[-1]
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"p{hi} − p{lo}")
    ax.set_title("spread of the last conv's responses")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def _setting_title(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    images = f"{s['train_images']} training images" if s["train_images"] else "all training images"
    return (
        f"{s['dataset']}, {s['model']}-{s['depth']} (width {s['width']}), {images}, {s['epochs']} epoch(s), "
        f"{s['images_per_device']} images per device x {s['devices']} device(s)"
    )


def _slug(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    return f"{s['dataset']}-{s['model']}{s['depth']}w{s['width']}-n{s['train_images']}-e{s['epochs']}"


def _section(setting: tuple, recs: list[Record], fig_dir: Path, multi: bool) -> tuple[str, list[dict[str, Any]]]:
    runs = _norm_runs(recs)
    curves = {n: r.curves() for n, r in runs.items()}
    cfg = recs[0].config
    n_seeds = max(len(r.records) for r in runs.values())
    out = [f"## {_setting_title(setting)}\n\n" if multi else f"Setting: {_setting_title(setting)}.\n\n"]
    out.append("### Verdict\n\n")
    check = convergence(runs.values())
    out += [line + "\n" for line in gated(verdict(runs, curves), check)]
    out.append("\n" + convergence_text(check))
    out.append("\n### Val error beside the paper's\n\n")
    out.append(_error_table(runs))
    out.append(
        f"\nErrors in %: median val error of the last {cfg.get('median_last', 1)} epoch(s), mean ± sd over "
        f"{n_seeds} seed(s). The paper's are ImageNet top-1 of VGG-16: compare the order, not the levels. "
        "Spread: the distance between the outermost recorded percentiles (p99 − p1). Drift: the spread at the end "
        "over that after the first epoch. Probe-to-probe change: the median relative change of the spread between "
        "consecutive probes after the first epoch (how jumpy the distribution is). Drift and change are measured on "
        "each run's own curves, then averaged over the seeds (mean ± sd).\n"
    )
    slug = _slug(setting) if multi else "main"
    out.append("\n### Figures\n\n")
    probe = (
        f"the {', '.join(str(k) for k in next((c.percentiles for c in curves.values() if c), []))} percentiles of "
        f"the last conv's responses (before norm and ReLU) on a fixed batch of {cfg.get('probe_images')} validation "
        f"images, every {cfg.get('probe_every')} iterations, the model in eval mode"
    )
    for name, title, caption, draw in (
        (f"fig6_{slug}.png", "Figure 6", f"{probe}; one panel per norm.", lambda: _fig6(curves)),
        (
            f"fig6_spread_{slug}.png",
            "Spread",
            "the distance between the outermost percentiles, all norms on one log scale.",
            lambda: _fig_spread(curves),
        ),
        (
            f"curves_{slug}.png",
            "Convergence",
            "train (dashed) and val (solid) error per epoch, mean over seeds.",
            lambda: curves_figure({"train and val error": [(norm_label(n), r) for n, r in runs.items()]}, width=5.0),
        ),
    ):
        fig = draw()
        if fig is not None:
            save_figure(fig, fig_dir / name)
            out.append(f"**{title}** — {caption}\n\n![{title}](figures/{name})\n\n")
    rows = []
    for norm, r in runs.items():
        c = curves[norm]
        m, s = mean_std(r.errors)
        rows.append(
            {
                "norm": norm,
                "seeds": r.seeds,
                "error_mean": m,
                "error_std": s,
                "train_error_mean": mean_std(r.train_errors)[0],
                "diverged": r.diverged,
                "paper_error": paper.VGG_ERRORS.get(norm_kind(norm)),
                "probes": len(c.iterations) if c else 0,
                "spread_first": c.spread[0] if c else None,
                "spread_after_epoch_1": c.spread[c.at_epoch(1.0)] if c else None,
                "spread_last": c.spread[-1] if c else None,
                "drift": _finite_or_none(r.run_stat("drift")[0]),
                "drift_std": _finite_or_none(r.run_stat("drift")[1]),
                "jitter_percent": _finite_or_none(r.run_stat("jitter")[0]),
                "jitter_percent_std": _finite_or_none(r.run_stat("jitter")[1]),
                "last_percentiles": {k: v[-1] for k, v in c.values.items()} if c else None,
                **dict(zip(SETTING_KEYS, setting, strict=True)),
            }
        )
    return "".join(out), rows


def _setting_of(r: Record) -> tuple:
    return tuple(r.config.get(k) for k in SETTING_KEYS)


def _header(configs: list[dict[str, Any]]) -> str:
    return (
        "# Feature distributions: Figure 6\n\n"
        "A VGG-style network (torchvision's VGG conv configuration, global average pooling and one linear layer "
        f"as the head) with no norm, BN or GN right after every conv, trained with one recipe for the three: "
        f"{recipe(configs)}.\n\n"
    )


def build_report(experiment_dir: Path | str) -> Path:
    """Write report.md, summary.json and figures/ under ``experiment_dir``; return report.md's path."""
    return write_report(experiment_dir, "features", _setting_of, _header, _section)
