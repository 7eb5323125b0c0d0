"""One module per paper experiment: a preset dataclass, PRESETS, and ``run(preset, runs_dir) -> records``."""

from types import ModuleType

from groupnorm.experiments import batch_sizes, detection, features, groups, video

__all__ = ["EXPERIMENTS"]

EXPERIMENTS: dict[str, ModuleType] = {
    batch_sizes.NAME: batch_sizes,
    detection.NAME: detection,
    groups.NAME: groups,
    features.NAME: features,
    video.NAME: video,
}
