"""Report of the batch-size study: Table 1, Table 2, Figures 1, 4 and 5 beside the paper's, from records alone.

runs/batch-sizes/report.md       tables, the verdict, figures embedded
runs/batch-sizes/summary.json    {"rows": [{norm, images_per_device, devices, seeds, error_mean, error_std, ...}]}
runs/batch-sizes/figures/*.png
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from groupnorm.report import common, paper
from groupnorm.report.batch_sizes_figures import KIND_ORDER, fig1, fig4, fig5, fig_runs
from groupnorm.report.batch_sizes_sections import BN_DIAGNOSIS, family_section, why_bn_fails_section
from groupnorm.report.common import (
    convergence,
    convergence_text,
    fmt,
    group_cells,
    markdown_table,
    mean_std,
    near_chance,
    norm_kind,
    norm_label,
    recipe,
    save_figure,
    seed_noise_note,
    tie,
    write_report,
)
from groupnorm.train.records import Record

__all__ = ["Cell", "build_report", "verdict"]

SETTING_KEYS = ("dataset", "model", "depth", "width", "train_images", "epochs", "batch_axis")


class Cell(common.Cell):
    """The runs of one (norm, images per device) in one setting: one per seed."""

    @property
    def norm(self) -> str:
        return self.key[0]

    @property
    def images_per_device(self) -> int:
        return self.key[1]

    @property
    def devices(self) -> int:
        return self.config["devices"]

    @property
    def steps(self) -> int:
        """Optimizer steps of one run (the first seed's): images seen over the batch of all devices."""
        r = self.records[0]
        return round(sum(m["images_seen"] for m in r.metrics) / (self.images_per_device * self.devices))


def _batch_axis(config: dict[str, Any]) -> str:
    """What the grid holds fixed along the batch axis: the devices (the paper: 8 GPUs), or the images of one
    optimiser step (a preset with reference_batch: more virtual devices at smaller B)."""
    if config.get("reference_batch"):
        return f"{config['images_per_device'] * config['devices']} images per step"
    return f"{config['devices']} devices"


def _setting_of(r: Record) -> tuple:
    values = {**r.config, "batch_axis": _batch_axis(r.config)}
    return tuple(values.get(k) for k in SETTING_KEYS)


def _setting_title(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    model = f"ResNet-{s['depth']} (width {s['width']})" if s["model"] == "resnet" else s["model"]
    images = f"{s['train_images']} training images" if s["train_images"] else "all training images"
    return f"{s['dataset']}, {model}, {images}, {s['epochs']} epochs, {s['batch_axis']}"


def _slug(setting: tuple) -> str:
    s = dict(zip(SETTING_KEYS, setting, strict=True))
    return f"{s['dataset']}-{s['model']}{s['depth']}w{s['width']}-n{s['train_images']}-e{s['epochs']}"


def _cells(recs: list[Record]) -> dict[tuple[str, int], Cell]:
    return group_cells(recs, lambda r: (r.config["norm"], r.config["images_per_device"]), Cell)


def _main_norms(cells: dict[tuple[str, int], Cell]) -> tuple[str | None, str | None]:
    """The BN and GN specs of the batch axis: of each kind, the one run at the most batch sizes."""
    counts: dict[str, int] = defaultdict(int)
    for norm, _ in cells:
        counts[norm] += 1
    pick = []
    for kind in ("bn", "gn"):
        specs = [n for n in counts if norm_kind(n) == kind and n not in ("bn:sync", "bn:frozen")]
        pick.append(max(specs, key=lambda n: (counts[n], not n.startswith("ws+"))) if specs else None)
    return pick[0], pick[1]


def _per_device(b: int) -> str:
    return f"{b} image{'s' if b != 1 else ''} per device"


def verdict(cells: dict[tuple[str, int], Cell], bn: str | None, gn: str | None, classes: int = 10) -> list[str]:
    """Plain sentences: does the paper's direction hold here, and by how much? Judged only on converged runs
    above chance (common.convergence, common.near_chance); differences within the seed noise are ties."""
    if bn is None or gn is None:
        return ["The batch axis needs both BN and GN runs; this report has only part of them."]
    sizes = sorted({b for (n, b) in cells if n == bn} & {b for (n, b) in cells if n == gn})
    if len(sizes) < 2:
        return ["BN and GN share fewer than two batch sizes here; no trend to report."]
    small, large = sizes[0], sizes[-1]
    (bn_l, sd_bn_l), (bn_s, sd_bn_s) = cells[(bn, large)].mean_std, cells[(bn, small)].mean_std
    (gn_l, sd_gn_l), (gn_s, sd_gn_s) = cells[(gn, large)].mean_std, cells[(gn, small)].mean_std
    n = min(len(c.records) for c in cells.values())
    bn_rise, gn_change, gap = bn_s - bn_l, gn_s - gn_l, bn_s - gn_s
    lines = [
        f"- BN's error goes from {bn_l:.2f}% at {large} to {bn_s:.2f}% at {_per_device(small)} "
        f"({bn_rise:+.2f} points; {seed_noise_note(bn_rise, math.hypot(sd_bn_l, sd_bn_s), n)}).",
        f"- GN's error goes from {gn_l:.2f}% to {gn_s:.2f}% ({gn_change:+.2f} points; "
        f"{seed_noise_note(gn_change, math.hypot(sd_gn_l, sd_gn_s), n)}).",
        f"- At {_per_device(small)} GN is {'better' if gap > 0 else 'worse'} than BN by "
        f"{abs(gap):.2f} points ({seed_noise_note(gap, math.hypot(sd_bn_s, sd_gn_s), n)}); at {_per_device(large)} "
        f"GN − BN is {gn_l - bn_l:+.2f} points (paper, at 32 per GPU: +0.5).",
    ]
    breaks = [
        b
        for b in sizes
        if cells[(bn, b)].mean_std[0] - bn_l > max(2 * math.hypot(cells[(bn, b)].mean_std[1], sd_bn_l), 0.5)
    ]
    if breaks:
        lines.append(
            f"- BN breaks (more than 0.5 points and twice the seed noise above its {large}/device error) "
            f"at {_per_device(max(breaks))} and below."
        )
    if gn_change < -max(1.0, 2 * math.hypot(sd_gn_l, sd_gn_s)):
        steps_l, steps_s = cells[(gn, large)].steps, cells[(gn, small)].steps
        train_l = statistics.fmean(cells[(gn, large)].train_errors)
        lines.append(
            f"- Caution: GN's error *falls* by {-gn_change:.2f} points as the batch shrinks, though GN computes "
            f"the same at every batch size. At equal epochs the {small}/device runs take "
            f"{steps_s / max(steps_l, 1):.0f}x the steps ({steps_s} against {steps_l}): the {large}/device runs "
            f"are under-trained at this budget (GN's train error {train_l:.1f}%), so their errors, and GN − BN "
            f"at {large}, are not converged values. A longer schedule (`--set epochs=...`, or the full preset) "
            "separates the two effects; the comparison at the small batches, where both norms had the same "
            "steps, stands."
        )
    compared = [cells[(k, b)] for k in (bn, gn) for b in (large, small)]
    failed = set(convergence(compared)["failed"])
    unconverged = sorted({c.norm for c in compared for r in c.records if r.run_dir.name in failed})
    chance = [f"{norm_label(c.norm)} at {c.images_per_device}" for c in compared if near_chance(c.mean_std[0], classes)
              and c.norm == gn]  # fmt: skip
    noise = math.hypot(sd_bn_s, sd_gn_s)
    if tie(gap, noise, n):
        lines.append(f"- At {_per_device(small)} GN and BN tie: {gap:+.2f} points cannot be told from the noise.")
    holds_bn = bn_rise > 0 and not tie(bn_rise, math.hypot(sd_bn_l, sd_bn_s), n)
    holds_gap = gap > 0 and not tie(gap, noise, n)
    gn_flat = abs(gn_change) < abs(bn_rise)
    if unconverged or chance:
        why = []
        if unconverged:
            why.append(
                f"runs of {', '.join(norm_label(u) for u in unconverged)} did not converge (see the check below)"
            )
        if chance:
            why.append(f"{', '.join(chance)} is near chance")
        lines.append(
            f"\n**No verdict on the paper's claims**: {' and '.join(why)}, so these numbers measure the training "
            "budget more than the normalization. Train longer (`--set epochs=...`) or use a larger preset."
        )
        return lines
    if holds_bn and holds_gap and gn_flat:
        summary = (
            "**The paper's direction holds here**: BN degrades as the per-device batch shrinks, "
            "GN stays flatter, and GN wins at the smallest batch."
        )
    elif holds_bn and gn_flat:
        summary = (
            "**The paper's direction holds in part**: BN degrades faster than GN as the batch shrinks, "
            "but GN does not overtake BN at the smallest batch."
        )
    elif holds_bn:
        summary = (
            "**The paper's direction holds weakly**: BN degrades as the batch shrinks, but GN moves as much or more."
        )
    elif not bn_rise > 0 or tie(bn_rise, math.hypot(sd_bn_l, sd_bn_s), n):
        summary = (
            "**The paper's direction does not hold here**: BN's error does not rise beyond the noise at small "
            "per-device batches in this setting."
        )
    else:
        summary = (
            "**The paper's direction does not hold here**: BN does not degrade at small per-device batches "
            "in this setting."
        )
    paper_bn_rise = paper.TABLE2["bn"][2] - paper.TABLE2["bn"][32]
    lines.append(
        f"\n{summary} For scale: on ImageNet the paper's BN rises by {paper_bn_rise:.1f} points from 32 to 2 "
        "images per GPU while GN stays within 0.2."
    )
    return lines


def _section(setting: tuple, recs: list[Record], fig_dir: Path, multi: bool) -> tuple[str, list[dict[str, Any]]]:
    cells = _cells(recs)
    bn, gn = _main_norms(cells)
    sizes = sorted({b for (_, b) in cells}, reverse=True)
    largest = sizes[0]
    n_seeds = max(len(c.records) for c in cells.values())
    slug = _slug(setting) if multi else "main"
    out = [f"## {_setting_title(setting)}\n" if multi else ""]

    out.append("### Verdict\n")
    out += [line + "\n" for line in verdict(cells, bn, gn, _classes(recs))]
    check = convergence(cells.values())
    out.append("\n" + convergence_text(check))

    # Table 1: every norm at the largest batch.
    at_largest = sorted(
        (c for (n, b), c in cells.items() if b == largest),
        key=lambda c: (KIND_ORDER.get(norm_kind(c.norm), 9), c.norm),
    )
    out.append(f"\n### Table 1 — every norm at {largest} images per device\n")
    header = ["", *[norm_label(c.norm) for c in at_largest]]
    rows = [
        ["val error, ours", *[fmt(*c.mean_std, len(c.records)) for c in at_largest]],
        ["train error, ours", *[fmt(*mean_std(c.train_errors), len(c.records)) for c in at_largest]],
        [
            "val error, paper (ImageNet, 32/GPU)",
            *[f"{paper.TABLE1[k]:.1f}" if (k := norm_kind(c.norm)) in paper.TABLE1 else "–" for c in at_largest],
        ],
    ]
    out.append(markdown_table(header, rows))
    out.append(f"\nPaper: {paper.TABLE1_TRAIN_NOTE}\n")

    # Table 2: BN and GN along the batch axis.
    if bn and gn:
        axis = sorted({b for (n, b) in cells if n in (bn, gn)}, reverse=True)
        out.append("\n### Table 2 — error against images per device\n")
        header = ["images per device", *[str(b) for b in axis]]
        rows = []
        for spec in (bn, gn):
            rows.append(
                [
                    f"{norm_label(spec)}, ours",
                    *[
                        fmt(*cells[(spec, b)].mean_std, len(cells[(spec, b)].records)) if (spec, b) in cells else "–"
                        for b in axis
                    ],
                ]
            )
        for kind in ("bn", "gn"):
            rows.append(
                [
                    f"{kind.upper()}, paper (ImageNet)",
                    *[f"{paper.TABLE2[kind][b]:.1f}" if b in paper.TABLE2[kind] else "–" for b in axis],
                ]
            )
        rows.append(
            [
                "GN − BN, ours",
                *[
                    f"{cells[(gn, b)].mean_std[0] - cells[(bn, b)].mean_std[0]:+.2f}"
                    if (gn, b) in cells and (bn, b) in cells
                    else "–"
                    for b in axis
                ],
            ]
        )
        rows.append(
            [
                "GN − BN, paper",
                *[
                    f"{paper.TABLE2['gn'][b] - paper.TABLE2['bn'][b]:+.1f}" if b in paper.TABLE2["bn"] else "–"
                    for b in axis
                ],
            ]
        )
        out.append(markdown_table(header, rows))
        out.append(
            f"\nErrors in %, median val error of the last epochs of each run; mean ± sd over {n_seeds} seed(s).\n"
        )

    out.append(family_section(cells, bn, gn))
    if bn:
        out.append(why_bn_fails_section(cells, bn, gn))

    # Figures.
    out.append("\n### Figures\n")
    for name, title, draw in (
        (f"fig1_{slug}.png", "Figure 1 — error against images per device", lambda: fig1(cells, bn, gn)),
        (
            f"fig4_{slug}.png",
            f"Figure 4 — train and val error per epoch at {largest} images per device",
            lambda: fig4(at_largest),
        ),
        (
            f"fig5_{slug}.png",
            "Figure 5 — val error per epoch of BN and GN at each batch size",
            lambda: fig5(cells, bn, gn),
        ),
        (
            f"curves_{slug}.png",
            "Every setting: train (dashed) and val (solid) error per epoch",
            lambda: fig_runs(cells),
        ),
    ):
        fig = draw()
        if fig is not None:
            save_figure(fig, fig_dir / name)
            out.append(f"**{title}**\n\n![{title}](figures/{name})\n\n")

    summary_rows = []
    for (norm, b), c in sorted(
        cells.items(), key=lambda kv: (KIND_ORDER.get(norm_kind(kv[0][0]), 9), kv[0][0], -kv[0][1])
    ):
        m, s = c.mean_std
        summary_rows.append(
            {
                "norm": norm,
                "images_per_device": b,
                "devices": c.devices,
                "seeds": c.seeds,
                "error_mean": m,
                "error_std": s,
                "train_error_mean": mean_std(c.train_errors)[0],
                **{f"{k}_mean": c.stats(k)[0] for k in BN_DIAGNOSIS if k in c.records[0].result},  # type: ignore[operator]
                **{f"{k}_std": c.stats(k)[1] for k in BN_DIAGNOSIS if k in c.records[0].result},  # type: ignore[operator]
                "unconverged": [r.run_dir.name for r in c.records if r.run_dir.name in check["failed"]],
                **dict(zip(SETTING_KEYS, setting, strict=True)),
            }
        )
    return "".join(out), summary_rows


def _classes(recs: list[Record]) -> int:
    from groupnorm.data.datasets import LOADERS

    name = recs[0].config.get("dataset", "")
    return LOADERS[name][2] if name in LOADERS else 1000


def _header(configs: list[dict[str, Any]]) -> str:
    return (
        "# Batch-size study: Table 1, Table 2, Figures 1, 4 and 5\n\n"
        f"Recipe, the same for every norm and batch size: {recipe(configs)} (weight decay on every weight, gamma "
        "and beta included); gamma = 0 in the last norm of each residual block; BN statistics per (virtual) "
        "device; the error is the median val error of the last epochs. The paper's numbers are ImageNet/ResNet-50: "
        "compare directions and gaps, not levels.\n\n"
    )


def build_report(experiment_dir: Path | str) -> Path:
    """Write report.md, summary.json and figures/ under ``experiment_dir``; return report.md's path."""
    return write_report(experiment_dir, "batch-sizes", _setting_of, _header, _section)
