"""The batch-size study (paper Sec. 4.1: Table 1, Table 2, Figures 1, 4, 5).

ResNets with BN, LN, IN and GN, trained with one recipe (no per-norm tuning) at 32, 16, 8,
4, 2 and 1 images per device over 8 (virtual) devices, lr = 0.1 x B/32, the same number of
epochs at every B; the reported error is the median val error of the last 5 epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from groupnorm.data.cifar10 import find_cifar10
from groupnorm.train.config import TrainConfig, config_from

__all__ = ["NAME", "PRESETS", "Preset", "configs"]

NAME = "batch-sizes"


@dataclass(frozen=True)
class Preset:
    """A grid of runs. ``norms`` run at every ``images_per_device``; ``norms_at_largest`` at the largest only."""

    datasets: tuple[str, ...] = ("fashion-mnist",)
    model: str = "resnet"
    depths: tuple[int, ...] = (8,)
    width: int = 16
    norms: tuple[str, ...] = ("bn", "gn:8")
    images_per_device: tuple[int, ...] = (32, 2, 1)
    norms_at_largest: tuple[str, ...] = ("ln", "in")
    # the layers users compare GN with (Batch Renorm, FRN, EvoNorm-S0), at these per-device batches only
    family: tuple[str, ...] = ()
    family_images_per_device: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0,)
    devices: int = 8  # at every B, when total_batch is 0 (the paper: 8 GPUs, so B x 8 images per step)
    # > 0: the images of one optimiser step at every B (devices = total_batch / B virtual devices), so every B
    # trains the same number of steps at the same lr and only BN's per-device batch changes
    total_batch: int = 0
    reference_batch: int = 0  # lr = base_lr x images per step / reference_batch (0: the paper's B/32 rule)
    train_images: int = 20000
    val_images: int = 0
    epochs: int = 16
    base_lr: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    median_last: int = 5
    channels_last: bool = True
    torch_compile: str = "auto"  # where it pays: BN, FRN and EvoNorm-S0 (groupnorm.train.engine.COMPILE_PAYS)
    image_size: int = 224
    data_dir: str = ""
    workers: int = 8  # ImageFolder loader processes (--set workers=N); results do not depend on it


PRESETS: dict[str, Preset] = {
    # End to end in well under 2 minutes: what the tests run.
    "smoke": Preset(
        images_per_device=(4, 1), train_images=1024, val_images=512, epochs=2, median_last=1, torch_compile="off"
    ),
    # The default of `make reproduce`: 32 images per optimiser step at every B (1 virtual device at 32, 16 at 2,
    # 32 at 1), so every run trains the same 6000 steps at lr 0.1 and only the per-device batch that BN's
    # statistics see changes; 6000 training images for 32 epochs, where every run passes the convergence check
    # (12000 images for 16 epochs did not: docs/results.md has the measurements and the time).
    "quick": Preset(train_images=6000, val_images=5000, epochs=32, median_last=8, total_batch=32, reference_batch=32),
    # Three seeds over 32, 8, 4, 2 and 1 images per device, and the family beside BN and GN (a few hours on 2
    # cores; its records are in docs/records/batch-sizes). Its seed-0 runs at 32, 2 and 1 are the quick preset's.
    "medium": Preset(
        train_images=6000,
        val_images=5000,
        epochs=32,
        median_last=8,
        total_batch=32,
        reference_batch=32,
        images_per_device=(32, 8, 4, 2, 1),
        family=("brn", "frn", "evonorm-s0:8"),
        family_images_per_device=(32, 2),
        seeds=(0, 1, 2),
    ),
    # The whole grid, 3 seeds, two depths, CIFAR-10 too when present (hours on a CPU).
    "full": Preset(
        datasets=("fashion-mnist", "cifar10"),
        depths=(8, 20),
        images_per_device=(32, 16, 8, 4, 2, 1),
        seeds=(0, 1, 2),
    ),
    # The paper's ImageNet setting for a lab: torchrun over 8 GPUs, data_dir with train/ and val/.
    "paper": Preset(
        datasets=("imagefolder",),
        model="resnet50",
        depths=(50,),
        norms=("bn", "gn"),
        images_per_device=(32, 16, 8, 4, 2),
        train_images=0,
        epochs=100,
        schedule="step",
        warmup_epochs=0.0,
        channels_last=True,
    ),
}


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[TrainConfig]:
    """Every run of the grid; datasets that are not present locally are left out (and said so)."""
    out = []
    largest = max(preset.images_per_device)
    for dataset in preset.datasets:
        if dataset == "cifar10" and find_cifar10(preset.data_dir or None) is None:
            log("batch-sizes: CIFAR-10 not found (set GROUPNORM_DATA to a directory with cifar10/); skipping it")
            continue
        if dataset == "imagefolder" and not preset.data_dir:
            raise ValueError("the imagefolder dataset needs data_dir (a folder with train/ and val/)")
        grid = [(n, b) for n in preset.norms for b in preset.images_per_device]
        grid += [(n, largest) for n in preset.norms_at_largest]
        grid += [(n, b) for n in preset.family for b in preset.family_images_per_device]
        for depth in preset.depths:
            for norm, b in grid:
                for seed in preset.seeds:
                    devices = _devices(preset, b)
                    out.append(
                        config_from(
                            preset,
                            experiment=NAME,
                            dataset=dataset,
                            depth=depth,
                            norm=norm,
                            images_per_device=b,
                            devices=devices,
                            seed=seed,
                        )
                    )
    return out


def _devices(preset: Preset, images_per_device: int) -> int:
    if not preset.total_batch:
        return preset.devices
    if preset.total_batch % images_per_device:
        raise ValueError(
            f"batch-sizes: total_batch={preset.total_batch} must be a multiple of every images_per_device; "
            f"got {images_per_device}"
        )
    return preset.total_batch // images_per_device
