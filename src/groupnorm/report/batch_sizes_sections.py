"""Two sections of the batch-size report beyond the paper: the family beside BN and GN, and why BN fails."""

from __future__ import annotations

from groupnorm.nn.renorm import RENORM_RAMP
from groupnorm.report import paper
from groupnorm.report.batch_sizes_figures import KIND_ORDER
from groupnorm.report.common import Cell, fmt, markdown_table, norm_kind, norm_label

__all__ = ["BN_DIAGNOSIS", "FAMILY", "family_section", "why_bn_fails_section"]

BN_DIAGNOSIS = ("val_error_precise_bn", "val_error_batch_stats")  # groupnorm.train.bn_eval, in BN runs' results


FAMILY = ("brn", "frn", "evonorm-s0")  # the layers users compare GN with


def family_section(cells: dict[tuple[str, int], Cell], bn: str | None, gn: str | None) -> str:
    """Batch Renorm, FRN and EvoNorm-S0 beside BN and GN at the batches they ran at, with the paper's BR figure."""
    family = sorted({n for n, _ in cells if norm_kind(n) in FAMILY}, key=lambda n: (KIND_ORDER.get(norm_kind(n), 9), n))
    if not family:
        return ""
    axis = sorted({b for n, b in cells if n in family}, reverse=True)
    rows = []
    for norm in [n for n in (bn, gn) if n] + family:
        c = [cells.get((norm, b)) for b in axis]
        rows.append([norm_label(norm), *[fmt(*x.mean_std, len(x.records)) if x else "–" for x in c]])
        diverged = sum(x.diverged for x in c if x)
        if diverged:
            rows[-1][0] += f" ({diverged} run(s) diverged)"
    ramp = RENORM_RAMP
    return (
        "\n### The family at small batches (beyond the paper's Table 2)\n\n"
        + markdown_table(["val error, %", *[f"{b} per device" for b in axis]], rows)
        + f"\nPaper (ImageNet, 4 images per GPU): Batch Renorm {paper.BATCH_RENORM_AT_4['brn']}, BN "
        f"{paper.BATCH_RENORM_AT_4['bn']}, GN {paper.BATCH_RENORM_AT_4['gn']}. Batch Renorm's limits follow the "
        f"paper's ramp scaled to each run: BN alone for the first {ramp['start'] / ramp['r_end'] / 4:.1%} of the "
        f"steps, then d_max rises to {ramp['d_max']:g} by {ramp['d_end'] / ramp['r_end'] / 4:.1%} and r_max to "
        f"{ramp['r_max']:g} by 25% of the run. FRN (with TLU) and EvoNorm-S0 replace each norm and the ReLU after "
        "it; the norms before residual adds are their plain forms (groupnorm.models.norm_act). A row whose runs "
        "diverged says so; mean ± sd over seeds.\n"
    )


def why_bn_fails_section(cells: dict[tuple[str, int], Cell], bn: str, gn: str | None) -> str:
    """BN evaluated three ways beside GN, and BN's loss split into the train/test statistics mismatch and the
    noise of training with small-batch statistics (groupnorm.train.bn_eval)."""
    axis = sorted((b for (n, b), c in cells.items() if n == bn and BN_DIAGNOSIS[0] in c.records[0].result),
                  reverse=True)  # fmt: skip
    if not axis:
        return ""
    large = axis[0]
    run = {b: cells[(bn, b)].mean_std[0] for b in axis}
    precise = {b: cells[(bn, b)].stats(BN_DIAGNOSIS[0])[0] for b in axis}
    batch = {b: cells[(bn, b)].stats(BN_DIAGNOSIS[1])[0] for b in axis}
    rows = [
        ["BN, running averages (as trained)", *[f"{run[b]:.2f}" for b in axis]],
        ["BN, PreciseBN (statistics re-estimated, final weights)", *[f"{precise[b]:.2f}" for b in axis]],
        ["BN, batch statistics at test (batches of B)", *[f"{batch[b]:.2f}" for b in axis]],
    ]
    if gn:
        rows.append([norm_label(gn), *[f"{cells[(gn, b)].mean_std[0]:.2f}" if (gn, b) in cells else "–" for b in axis]])
    mismatch = {b: (run[b] - batch[b]) - (run[large] - batch[large]) for b in axis}
    noise = {b: batch[b] - batch[large] for b in axis}
    rows.append([f"BN's loss against {large}/device", *[f"{run[b] - run[large]:+.2f}" for b in axis]])
    rows.append(["... train/test statistics mismatch", *[f"{mismatch[b]:+.2f}" for b in axis]])
    rows.append(["... training with small-batch statistics", *[f"{noise[b]:+.2f}" for b in axis]])
    small = axis[-1]
    return (
        "\n### Why BN fails at small batches (beyond the paper)\n\n"
        + markdown_table(["val error, %", *[str(b) for b in axis]], rows)
        + f"\nBN's loss at B against {large}/device splits into the mismatch (what evaluating with the statistics "
        "of test batches of B, as in training, recovers: running averages minus batch statistics, relative to "
        f"{large}) and the noise of training with B-image statistics (batch statistics at B minus at {large}). "
        f"At {small}/device: {run[small] - run[large]:+.2f} = {mismatch[small]:+.2f} mismatch "
        f"{noise[small]:+.2f} training noise. PreciseBN shows how much of the mismatch better population "
        "statistics fix without changing the weights. Means over seeds.\n"
    )
