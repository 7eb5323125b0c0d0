"""The batch-size report's figures: Figures 1, 4 and 5 of the paper, and every run's train and val curves."""

from __future__ import annotations

from groupnorm.report import paper
from groupnorm.report.common import Cell, curves_figure, norm_kind, norm_label, pyplot

__all__ = ["fig1", "fig4", "fig5", "fig_runs"]

KIND_ORDER = {"bn": 0, "brn": 1, "ln": 2, "in": 3, "gn": 4, "frn": 5, "evonorm-s0": 6}  # plotting order


def fig_runs(cells: dict[tuple[str, int], Cell]):
    """Train and val error per epoch of every (norm, B), one panel per norm (means over seeds)."""
    norms = sorted({n for n, _ in cells}, key=lambda n: (KIND_ORDER.get(norm_kind(n), 9), n))
    panels = {
        norm_label(norm): [
            (f"B={b}", cells[(norm, b)]) for b in sorted((b for n, b in cells if n == norm), reverse=True)
        ]
        for norm in norms
    }
    return curves_figure(panels)


def fig1(cells, bn, gn):
    if not (bn and gn):
        return None
    plt = pyplot()
    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(10, 3.8))
    for spec, color in ((bn, "tab:blue"), (gn, "tab:orange")):
        sizes = sorted(b for (n, b) in cells if n == spec)
        stats = [cells[(spec, b)].mean_std for b in sizes]
        ax.errorbar(
            sizes,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            color=color,
            label=norm_label(spec),
        )
    for kind, color in (("bn", "tab:blue"), ("gn", "tab:orange")):
        sizes = sorted(paper.TABLE2[kind])
        ax_p.plot(sizes, [paper.TABLE2[kind][b] for b in sizes], marker="o", color=color, label=kind.upper())
    for a, title in ((ax, "ours"), (ax_p, "paper (ImageNet, ResNet-50)")):
        a.set_xscale("log", base=2)
        a.invert_xaxis()
        a.set_xlabel("images per device")
        a.set_ylabel("val error (%)")
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend()
    return fig


def fig4(at_largest):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for c in at_largest:
        for ax, key in zip(axes, ("train_error", "val_error"), strict=True):
            curve = c.curve(key)
            ax.plot(range(1, len(curve) + 1), curve, label=norm_label(c.norm))
    for ax, title in zip(axes, ("train error", "val error"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def fig5(cells, bn, gn):
    if not (bn and gn):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, spec in zip(axes, (bn, gn), strict=True):
        for b in sorted((b for (n, b) in cells if n == spec), reverse=True):
            curve = cells[(spec, b)].curve("val_error")
            ax.plot(range(1, len(curve) + 1), curve, label=f"{b} / device")
        ax.set_title(f"{norm_label(spec)}: val error")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig
