"""Records -> markdown tables and matplotlib figures, beside the paper's numbers."""

from collections.abc import Callable
from pathlib import Path

from groupnorm.report import batch_sizes, detection, features, groups, video

__all__ = ["REPORTS", "build_report"]

REPORTS: dict[str, Callable[[Path], Path]] = {
    "batch-sizes": batch_sizes.build_report,
    "detection": detection.build_report,
    "groups": groups.build_report,
    "features": features.build_report,
    "video": video.build_report,
}


def build_report(experiment: str, experiment_dir: Path) -> Path:
    """Rebuild ``experiment``'s report (a key of REPORTS) from the records in ``experiment_dir``; return report.md."""
    if experiment not in REPORTS:
        raise ValueError(f"unknown report {experiment!r}; expected one of {', '.join(REPORTS)}")
    return REPORTS[experiment](experiment_dir)
