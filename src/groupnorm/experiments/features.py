"""Feature distributions of a VGG without norm, with BN and with GN (paper Sec. 4.1, Fig. 6).

A VGG-16-style network (groupnorm.models.VGG) with BN or GN right after every conv, or with no
norm, trained with one recipe for the three. Every ``probe_every`` iterations the engine records
the 1, 20, 80 and 99 percentiles of the last conv's responses (conv5_3, before norm and ReLU) on a
fixed batch of validation images (probes.jsonl beside metrics.jsonl).

The paper's VGG-16 has 64 ... 512 channels and GN with G = 32, so 2 ... 16 channels per group;
at ``width`` 16 (16 ... 128 channels) ``gn:8`` keeps those group sizes in every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from groupnorm.train.config import TrainConfig, config_from

__all__ = ["NAME", "PRESETS", "Preset", "configs"]

NAME = "features"


@dataclass(frozen=True)
class Preset:
    """The runs of Fig. 6: each of ``norms`` x ``seeds``, with the percentile probe on."""

    dataset: str = "fashion-mnist"
    model: str = "vgg"
    depth: int = 16
    width: int = 16
    norms: tuple[str, ...] = ("none", "bn", "gn:8")
    seeds: tuple[int, ...] = (0,)
    images_per_device: int = 32
    devices: int = 1
    train_images: int = 20000
    val_images: int = 0
    epochs: int = 8
    base_lr: float = 0.02
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    weight_decay: float = 1e-4
    median_last: int = 1
    probe_every: int = 50
    probe_images: int = 256
    probe_percentiles: tuple[float, ...] = (1.0, 20.0, 80.0, 99.0)
    channels_last: bool = True
    image_size: int = 224
    data_dir: str = ""
    workers: int = 8  # ImageFolder loader processes (--set workers=N); results do not depend on it


PRESETS: dict[str, Preset] = {
    # End to end in well under a minute: what the tests run.
    "smoke": Preset(
        depth=11,
        width=8,
        norms=("none", "bn", "gn:4"),
        train_images=384,
        val_images=256,
        epochs=2,
        probe_every=3,
        probe_images=64,
    ),
    # The default: 16 epochs, where all three runs pass the reports' convergence check (13 min 43 s on 2 cores;
    # docs/results/features.md).
    "quick": Preset(epochs=16),
    # The quick recipe, 3 seeds (about 40 minutes on 2 cores); its seed-0 runs are the quick preset's.
    "medium": Preset(epochs=16, seeds=(0, 1, 2)),
    # 3 seeds on the whole training set, 12 epochs (hours on 2 cores: docs/results/features.md).
    "full": Preset(seeds=(0, 1, 2), train_images=0, epochs=12, median_last=3, probe_every=200),
    # The paper's setting for a lab: VGG-16 on ImageNet, torchrun over 8 GPUs, data_dir with train/ and val/.
    "paper": Preset(
        dataset="imagefolder",
        width=64,
        norms=("none", "bn", "gn:32"),
        devices=8,
        train_images=0,
        epochs=100,
        base_lr=0.01,  # the paper gives no VGG recipe; VGG's own lr at 256 images, at which no norm trains too
        schedule="step",
        warmup_epochs=0.0,
        median_last=5,
        probe_every=500,
    ),
}


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[TrainConfig]:
    """Every run: one per norm and seed."""
    if preset.dataset == "imagefolder" and not preset.data_dir:
        raise ValueError("the imagefolder dataset needs data_dir (a folder with train/ and val/)")
    if preset.probe_every < 1:
        raise ValueError(f"the features study records percentiles: probe_every must be >= 1; got {preset.probe_every}")
    return [
        config_from(
            preset,
            experiment=NAME,
            norm=norm,
            seed=seed,
        )
        for norm in preset.norms
        for seed in preset.seeds
    ]
