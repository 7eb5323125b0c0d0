"""The video report's figures: top-1 per column beside Table 8's, and train and val error per epoch."""

from __future__ import annotations

from groupnorm.report.common import curves_figure, norm_label, pyplot
from groupnorm.report.paper import TABLE8, TABLE8_COLUMNS

__all__ = ["fig_bars", "fig_curves"]

PAPER_COLUMNS = TABLE8_COLUMNS


def fig_bars(cells, norms, cols):
    plt = pyplot()
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(norms), 1)
    for i, norm in enumerate(norms):
        xs = [j for j, c in enumerate(cols) if (norm, *c) in cells]
        stats = [cells[(norm, *cols[j])].stats("top1") for j in xs]
        ax.bar(
            [x + (i - (len(norms) - 1) / 2) * width for x in xs],
            [m for m, _ in stats],
            width,
            yerr=[sd for _, sd in stats],
            capsize=3,
            label=norm_label(norm),
        )
    ax.set_xticks(range(len(cols)), [f"{t} fr / {b} per dev" for t, b in cols])
    ax.set_title("ours")
    for i, kind in enumerate(("bn", "gn")):
        ax_p.bar(
            [j + (i - 0.5) * 0.4 for j in range(len(PAPER_COLUMNS))],
            [TABLE8[p][kind][0] for p in PAPER_COLUMNS],
            0.4,
            label=kind.upper(),
        )
    ax_p.set_xticks(range(len(PAPER_COLUMNS)), [f"{t} fr / {b} per GPU" for t, b in PAPER_COLUMNS])
    ax_p.set_ylim(70, 76)
    ax_p.set_title("paper (Kinetics-400, ResNet-50 I3D)")
    for a in (ax, ax_p):
        a.set_ylabel("top-1 accuracy (%)")
        a.grid(alpha=0.3, axis="y")
        a.legend()
    tops = [cells[k].stats("top1")[0] for k in cells]
    lo = min(tops) if tops else 0
    ax.set_ylim(max(0.0, lo - 10), min(100.0, max(tops, default=100) + 5))
    return fig


def fig_curves(cells, norms, cols):
    """Train (dashed) and val (solid) top-1 error per epoch: a panel per (clip length, clips per device)."""
    panels = {
        f"{c[0]} frames, {c[1]} clips/device": [(norm_label(n), cells[(n, *c)]) for n in norms if (n, *c) in cells]
        for c in cols
    }
    panels = {title: lines for title, lines in panels.items() if lines}
    return curves_figure(panels) if panels else None
