"""The group-division report's ablation: which of IN's two per-channel statistics makes it differ from GN.

GN takes a sample's mean and spread per group, IN per channel; ``gn-chmean:G`` takes the mean per channel and
the spread per group, ``gn-chstd:G`` the other way round (groupnorm.nn.SplitStatsGroupNorm). Beside GN (G)
and IN of the same recipe, the two halves say how much of the step from GN to IN each statistic makes.
"""

from __future__ import annotations

from pathlib import Path

from groupnorm.report.common import (
    Cell,
    convergence,
    curves_figure,
    diff,
    fmt,
    group_cells,
    markdown_table,
    mean_std,
    save_figure,
    seed_noise_note,
)
from groupnorm.train.records import Record

__all__ = ["HALVES", "reading", "section", "split_cells"]

# spec kind -> what it takes per channel
HALVES = {"gn-chmean": "the mean", "gn-chstd": "the spread"}


def _key(norm: str) -> tuple[str, int] | None:
    """("gn" | "gn-chmean" | "gn-chstd", G) for gn:G and its halves, ("in", 0) for IN; None otherwise."""
    if norm == "in":
        return "in", 0
    kind, _, groups = norm.partition(":")
    if kind in ("gn", *HALVES) and groups.isdigit():
        return kind, int(groups)
    return None


def split_cells(recs: list[Record]) -> dict[int, dict[str, Cell]]:
    """G -> {"gn", "gn-chmean", "gn-chstd", "in"} -> cell, for every G that has at least one half."""
    cells = group_cells(recs, lambda r: _key(r.config["norm"]))
    out: dict[int, dict[str, Cell]] = {}
    for (kind, groups), cell in cells.items():
        if kind in HALVES:
            out.setdefault(groups, {})[kind] = cell
    for groups, row in out.items():
        for kind, key in (("gn", ("gn", groups)), ("in", ("in", 0))):
            if key in cells:
                row[kind] = cells[key]
    return out


def reading(row: dict[str, Cell]) -> str:
    """What the halves say: each half's move from GN, and which statistic carries IN's difference, named only
    beyond seed noise."""
    if "gn" not in row:
        return "GN with the same number of groups did not run with this recipe: nothing to measure the halves from."
    moves = {kind: diff(row[kind], row["gn"]) for kind in HALVES if kind in row}
    parts = [f"taking {HALVES[k]} per channel moves GN's error by {d:+.2f}, {seed_noise_note(d, s, n)}"
             for k, (d, s, n) in moves.items()]  # fmt: skip
    text = "Against GN with the same groups: " + "; ".join(parts) + "."
    if "in" in row:
        d, s, n = diff(row["in"], row["gn"])
        text += f" IN, both per channel: {d:+.2f}, {seed_noise_note(d, s, n)}."
    beyond = [k for k, (d, s, n) in moves.items() if n >= 2 and abs(d) > 2 * s]
    if len(moves) < 2:
        return text + " Only one half ran: no split of IN's difference."
    if min(n for _, _, n in moves.values()) < 2:
        return text + " One seed: the halves cannot be told from seed noise yet."
    if not beyond:
        return text + " **Neither half alone moves GN's error beyond seed noise.**"
    if len(beyond) == 2:
        return text + " **Both statistics matter**: each half alone moves the error beyond seed noise."
    (kind,) = beyond
    other = next(k for k in HALVES if k != kind)
    return text + (
        f" **{HALVES[kind].capitalize()} is the statistic that matters**: per channel it moves GN's error beyond "
        f"seed noise, while {HALVES[other]} per channel does not."
    )


def _table(groups: int, row: dict[str, Cell]) -> str:
    columns = [("gn", f"GN (G = {groups})"), *[(k, f"{HALVES[k]} per channel") for k in HALVES], ("in", "IN")]
    columns = [(k, title) for k, title in columns if k in row]
    n = max(len(row[k].records) for k, _ in columns)
    gn = row.get("gn")
    body = [
        ["val error", *[fmt(*row[k].mean_std, len(row[k].records)) for k, _ in columns]],
        ["− GN", *[f"{diff(row[k], gn)[0]:+.2f}" if gn is not None else "–" for k, _ in columns]],
        ["train error", *[fmt(*mean_std(row[k].train_errors), n) for k, _ in columns]],
    ]
    return markdown_table(["", *[title for _, title in columns]], body)


def section(recs: list[Record], fig_dir: Path, slug: str) -> str:
    """The report's section on the halves, with its curves saved under fig_dir ("" when no half ran)."""
    rows = split_cells(recs)
    if not rows:
        return ""
    out = [
        "\n### Between GN and IN: the mean or the spread per channel\n\n",
        "GN takes each sample's mean and spread per group of channels, IN per channel. `gn-chmean` takes the mean "
        "per channel and the spread per group, `gn-chstd` the spread per channel and the mean per group; same "
        "recipe. Errors in %, mean ± sd over seeds.\n\n",
    ]
    panels = {}
    for groups, row in sorted(rows.items(), reverse=True):
        check = convergence(row.values())
        out += [_table(groups, row), "\n", reading(row)]
        if check["failed"]:
            out.append(
                f" Provisional: {len(check['failed'])} of {len(check['gains'])} runs of this table fail the "
                "convergence check."
            )
        out.append("\n")
        panels[f"G = {groups}: GN, its halves, IN"] = [(_label(k, groups), c) for k, c in row.items()]
    name = f"curves_split_{slug}.png"
    save_figure(curves_figure(panels, width=5.5), fig_dir / name)
    title = "GN, its two halves and IN: train and val error per epoch"
    out.append(f"\n**{title}**\n\n![{title}](figures/{name})\n")
    return "".join(out)


def _label(kind: str, groups: int) -> str:
    return {"gn": f"GN ({groups})", "in": "IN"}.get(kind, f"{HALVES.get(kind, kind)} per channel")
