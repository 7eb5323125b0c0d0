"""Report of the group-division study: Table 3 beside the paper's, and error against G and channels per group.

runs/groups/report.md       the verdict, both rows of Table 3, the figure embedded
runs/groups/summary.json    {"rows": [{axis, value, norm, seeds, error_mean, error_std, paper_error, ...}]}
runs/groups/figures/*.png
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from groupnorm.report import common, groups_split, paper
from groupnorm.report.common import (
    convergence,
    convergence_text,
    curves_figure,
    fmt,
    gated,
    group_cells,
    markdown_table,
    mean_std,
    pyplot,
    recipe,
    recorded,
    save_figure,
    seed_noise_note,
    tie,
    write_report,
)
from groupnorm.train.records import Record

__all__ = ["AXES", "Cell", "build_report", "setting_of", "verdict"]

SETTING_KEYS = ("dataset", "model", "depth", "width", "train_images", "epochs", "devices", "images_per_device")
# axis -> (title, the paper's row, what its value-1 end is)
AXES = {
    "groups": ("number of groups G", paper.TABLE3_GROUPS, "LN"),
    "channels_per_group": ("channels per group", paper.TABLE3_CHANNELS, "IN"),
}
MIDDLE_MARGIN = 1.0  # "the middle of the range within about a point of the best"
TIE_FLOOR = 0.5  # with one seed, an end leading its row by less than this is a tie (common.tie)


def setting_of(norm: str) -> tuple[str, int] | None:
    """The (axis, value) of Table 3 that a norm spec stands for (the inverse of experiments.groups.group_spec)."""
    if norm == "ln":
        return "groups", 1
    if norm == "in":
        return "channels_per_group", 1
    if norm.startswith("gn:") and norm[3:].isdigit():
        return "groups", int(norm[3:])
    if norm.startswith("gn/") and norm[3:].isdigit():
        return "channels_per_group", int(norm[3:])
    return None


class Cell(common.Cell):
    """The runs of one setting of Table 3 (one per seed): key (axis, value)."""

    @property
    def axis(self) -> str:
        return self.key[0]

    @property
    def value(self) -> int:
        return self.key[1]

    @property
    def norm(self) -> str:
        return self.config["norm"]

    @property
    def label(self) -> str:
        end = AXES[self.axis][2]
        return f"{self.value} (={end})" if self.value == 1 else str(self.value)


def _cells(recs: list[Record]) -> dict[str, dict[int, Cell]]:
    """axis -> value -> cell; runs whose norm is no Table 3 setting are left out."""
    rows: dict[str, dict[int, Cell]] = defaultdict(dict)
    for (axis, value), cell in group_cells(recs, lambda r: setting_of(r.config["norm"]), Cell).items():
        rows[axis][value] = cell
    return rows


def _row_verdict(axis: str, row: dict[int, Cell]) -> list[str]:
    title, paper_row, end = AXES[axis]
    if len(row) < 2:
        return [f"- {title}: fewer than two settings here; nothing to compare."]
    stats = {v: c.mean_std for v, c in row.items()}
    n = min(len(c.records) for c in row.values())
    best = min(stats, key=lambda v: stats[v][0])
    worst = max(stats, key=lambda v: stats[v][0])
    lines = [
        f"- **{title}**: best {row[best].label} ({stats[best][0]:.2f}%), worst {row[worst].label} "
        f"({stats[worst][0]:.2f}%); spread {stats[worst][0] - stats[best][0]:.2f} points (paper: "
        f"{max(paper_row.values()) - min(paper_row.values()):.1f})."
    ]
    if 1 in stats:
        others = [v for v in stats if v != 1]
        runner = max(others, key=lambda v: stats[v][0])
        gap = stats[1][0] - stats[runner][0]
        paper_gap = paper_row[1] - max(e for v, e in paper_row.items() if v != 1)
        sd = math.hypot(stats[1][1], stats[runner][1])
        noise = seed_noise_note(gap, sd, n) if n > 1 else f"one seed: differences below {TIE_FLOOR:.1f} count as ties"
        if worst == 1 and tie(gap, sd, n, TIE_FLOOR):
            where = f"the worst of its row, but tied with {row[runner].label}"
        elif worst == 1:
            where = "the worst of its row"
        else:
            where = f"not the worst of its row ({row[worst].label} is)"
        lines.append(
            f"  - {end} (value 1) is {where}: {gap:+.2f} points against the next worst, {row[runner].label} "
            f"({noise}); paper: {end} {paper_gap:+.1f} above the next worst."
        )
    middle = sorted(v for v in stats if v not in (1, max(stats)))
    if middle:
        gaps = {v: stats[v][0] - stats[best][0] for v in middle}
        far = [v for v in middle if gaps[v] > MIDDLE_MARGIN]
        paper_far = (
            max(paper_row[v] - min(paper_row.values()) for v in middle if v in paper_row)
            if any(v in paper_row for v in middle)
            else float("nan")
        )
        lines.append(
            f"  - the middle of the range ({', '.join(map(str, reversed(middle)))}) is within "
            f"{max(gaps.values()):.2f} points of the best"
            + (f"; beyond {MIDDLE_MARGIN:.0f} point: {', '.join(map(str, far))}" if far else "")
            + f" (paper: within {paper_far:.1f})."
        )
    return lines


def verdict(rows: dict[str, dict[int, Cell]]) -> list[str]:
    """Plain sentences: does the paper's shape hold (the value-1 ends worst, the middle near the best)?"""
    lines: list[str] = []
    for axis in AXES:
        if axis in rows:
            lines += _row_verdict(axis, rows[axis])
    if not lines:
        return ["No run of this report is a Table 3 setting (gn:G, gn/K, ln, in)."]
    holds, tied = [], []
    for axis in AXES:
        row = rows.get(axis, {})
        if 1 in row and len(row) > 1:
            stats = {v: c.mean_std for v, c in row.items()}
            best = min(m for m, _ in stats.values())
            middle = [v for v in stats if v not in (1, max(stats))]
            runner = max((v for v in stats if v != 1), key=lambda v: stats[v][0])
            n = min(len(c.records) for c in row.values())
            end_worst = max(stats, key=lambda v: stats[v][0]) == 1
            holds.append(end_worst and all(stats[v][0] - best <= MIDDLE_MARGIN for v in middle))
            gap, sd = stats[1][0] - stats[runner][0], math.hypot(stats[1][1], stats[runner][1])
            tied.append(holds[-1] and tie(gap, sd, n, TIE_FLOOR))
    if holds and all(holds) and not any(tied):
        summary = (
            "**The paper's shape holds here**: LN and IN are the worst of their rows and the middle of the range "
            "is within about a point of the best."
        )
    elif holds and all(holds):
        summary = (
            "**The paper's shape holds in direction only**: the ends are the worst of their rows, but at least one "
            "by less than the noise (see above)."
        )
    elif any(holds):
        summary = "**The paper's shape holds in one row only** (see above)" + (
            ", and there in direction only: its end leads by less than the noise." if any(tied) else "."
        )
    elif holds:
        summary = "**The paper's shape does not hold here** (see above): report the numbers, not the paper's story."
    else:
        summary = "Neither row has both ends and a middle: no shape to compare."
    lines.append(
        f"\n{summary} The paper's differences inside the middle of the range (0.1-0.6 points on ImageNet) are "
        "of the order of seed noise at this scale; read them with the ± columns."
    )
    return lines


def _table(axis: str, row: dict[int, Cell]) -> str:
    title, paper_row, _ = AXES[axis]
    values = sorted(set(row) | set(paper_row), reverse=True)
    n = max(len(c.records) for c in row.values())
    best = min(c.mean_std[0] for c in row.values())
    paper_best = min(paper_row.values())
    header = [title, *[row[v].label if v in row else str(v) for v in values]]
    body = [
        ["val error, ours", *[fmt(*row[v].mean_std, len(row[v].records)) if v in row else "–" for v in values]],
        ["ours − best", *[f"{row[v].mean_std[0] - best:+.2f}" if v in row else "–" for v in values]],
        ["train error, ours", *[fmt(*mean_std(row[v].train_errors), n) if v in row else "–" for v in values]],
        ["val error, paper (ImageNet)", *[f"{paper_row[v]:.1f}" if v in paper_row else "–" for v in values]],
        ["paper − best", *[f"{paper_row[v] - paper_best:+.1f}" if v in paper_row else "–" for v in values]],
    ]
    return markdown_table(header, body)


def _figure(rows: dict[str, dict[int, Cell]]):
    plt = pyplot()
    axes_present = [a for a in AXES if a in rows]
    fig, axes = plt.subplots(1, len(axes_present), figsize=(5 * len(axes_present), 3.8), squeeze=False)
    for ax, axis in zip(axes[0], axes_present, strict=True):
        title, paper_row, end = AXES[axis]
        row = rows[axis]
        values = sorted(row)
        stats = [row[v].mean_std for v in values]
        best = min(m for m, _ in stats)
        ax.errorbar(
            values, [m - best for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label="ours"
        )
        pv = sorted(paper_row)
        pbest = min(paper_row.values())
        ax.plot(pv, [paper_row[v] - pbest for v in pv], marker="s", ls="--", color="gray", label="paper (ImageNet)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(values) | set(pv)))
        ax.set_xticklabels([f"{v}\n({end})" if v == 1 else str(v) for v in sorted(set(values) | set(pv))])
        ax.invert_xaxis()
        ax.set_xlabel(title)
        ax.set_ylabel("val error above the row's best (points)")
        ax.set_title(f"error against {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def _curves(rows: dict[str, dict[int, Cell]]):
    """Train (dashed) and val (solid) error per epoch of every setting, one panel per row, means over seeds."""
    return curves_figure(
        {AXES[a][0]: [(c.label, c) for _, c in sorted(rows[a].items(), reverse=True)] for a in AXES if a in rows},
        width=5.5,
    )


def _setting_title(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    model = (
        f"ResNet-{s['depth']}{' with a stride-2 stem' if s['model'] == 'resnet-s2' else ''} "
        f"(widths {s['width']}, {2 * s['width']}, {4 * s['width']})"
        if s["model"] in ("resnet", "resnet-s2")
        else f"{s['model']}-{s['depth']} (width {s['width']})"
    )
    images = f"{s['train_images']} training images" if s["train_images"] else "all training images"
    return (
        f"{s['dataset']}, {model}, {images}, {s['epochs']} epoch(s), {s['images_per_device']} images per device "
        f"x {s['devices']} device(s)"
    )


def _slug(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    return f"{s['dataset']}-{s['model']}{s['depth']}w{s['width']}-n{s['train_images']}-e{s['epochs']}-d{s['devices']}"


def _section(setting: tuple, recs: list[Record], fig_dir: Path, multi: bool) -> tuple[str, list[dict[str, Any]]]:
    rows = _cells(recs)
    out = [f"## {_setting_title(setting)}\n\n" if multi else f"Setting: {_setting_title(setting)}.\n\n"]
    out.append("### Verdict\n\n")
    check = convergence([c for row in rows.values() for c in row.values()])
    out += [line + "\n" for line in gated(verdict(rows), check)]
    out.append("\n" + convergence_text(check))
    n_seeds = max((len(c.records) for row in rows.values() for c in row.values()), default=0)
    for i, axis in enumerate(a for a in AXES if a in rows):
        out.append(f"\n### Table 3{'ab'[i]} — error against {AXES[axis][0]}\n\n")
        out.append(_table(axis, rows[axis]))
    out.append(
        f"\nErrors in %: median val error of the last epochs of each run, mean ± sd over {n_seeds} seed(s). "
        "The paper's are ImageNet/ResNet-50 top-1: compare the shape (the rows' − best), not the levels.\n"
    )
    summary_rows = []
    if rows:
        name = f"fig_groups_{_slug(setting) if multi else 'main'}.png"
        save_figure(_figure(rows), fig_dir / name)
        title = "Error against the number of groups and against channels per group"
        out.append(f"\n### Figures\n\n**{title}**\n\n![{title}](figures/{name})\n\n")
        curves = f"curves_{_slug(setting) if multi else 'main'}.png"
        save_figure(_curves(rows), fig_dir / curves)
        title = "Every setting: train and val error per epoch"
        out.append(f"**{title}**\n\n![{title}](figures/{curves})\n\n")
    out.append(groups_split.section(recs, fig_dir, _slug(setting) if multi else "main"))
    for axis in AXES:
        for value, c in sorted(rows.get(axis, {}).items(), reverse=True):
            m, s = c.mean_std
            summary_rows.append(
                {
                    "axis": axis,
                    "value": value,
                    "norm": c.norm,
                    "seeds": c.seeds,
                    "error_mean": m,
                    "error_std": s,
                    "train_error_mean": mean_std(c.train_errors)[0],
                    "paper_error": AXES[axis][1].get(value),
                    **dict(zip(SETTING_KEYS, setting, strict=True)),
                }
            )
    return "".join(out), summary_rows


def _setting_of(r: Record) -> tuple:
    return tuple(r.config.get(k) for k in SETTING_KEYS)


def _header(configs: list[dict[str, Any]]) -> str:
    return (
        "# Group division: Table 3\n\n"
        "GN with a fixed number of groups G and with a fixed number of channels per group, at "
        f"{recorded(configs, 'images_per_device')} images per device; one recipe for every setting, that of the "
        f"batch-size study: {recipe(configs)}; gamma = 0 in the last norm of each residual block. G = 1 runs as LN "
        "and one channel per group as IN. The paper's ResNet-50 has 64 channels in its narrowest layers, so that "
        "every setting divides every layer; so has the ResNet here at width 64 (its widths are width, 2 x width, "
        "4 x width).\n\n"
    )


def build_report(experiment_dir: Path | str) -> Path:
    """Write report.md, summary.json and figures/ under ``experiment_dir``; return report.md's path."""
    return write_report(experiment_dir, "groups", _setting_of, _header, _section)
