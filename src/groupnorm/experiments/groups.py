"""The group-division study (paper Sec. 4.1, Table 3).

GN with a fixed number of groups G = 64, 32, 16, 8, 4, 2, 1 and with a fixed number of channels
per group 64, 32, 16, 8, 4, 2, 1, at 32 images per device, everything else as in the batch-size
study. The two ends are run as what they are: G = 1 as LN (``ln``), one channel per group as IN
(``in``). The ResNet is 64 channels wide in its first stage (64, 128, 256), so that, as in the
paper's ResNet-50 whose narrowest layers have 64 channels, every setting divides every layer; its
stem has stride 2 (``resnet-s2``: stages at 14, 7 and 4 pixels on 28x28 images), a quarter of the
cost of the stride-1 net, so that 14 runs of a net this wide fit the quick preset;
a setting that does not (a narrower ``width`` given with ``--set``) is rejected before anything trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from groupnorm.nn import parse_norm_spec
from groupnorm.train.config import TrainConfig, config_from

__all__ = ["NAME", "PRESETS", "Preset", "configs", "group_spec"]

NAME = "groups"


@dataclass(frozen=True)
class Preset:
    """The two rows of Table 3: ``groups`` (G) and ``channels_per_group`` (C/G), each a tuple of settings."""

    dataset: str = "fashion-mnist"
    model: str = "resnet-s2"
    depth: int = 8
    width: int = 64
    groups: tuple[int, ...] = (64, 32, 16, 8, 4, 2, 1)
    channels_per_group: tuple[int, ...] = (64, 32, 16, 8, 4, 2, 1)
    # Further norm specs run with the same recipe, e.g. the halves between GN and IN (--set
    # extra_norms=gn-chmean:32,gn-chstd:32); the report gives them their own table.
    extra_norms: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    images_per_device: int = 32
    devices: int = 1
    train_images: int = 6000
    val_images: int = 2000
    epochs: int = 18
    base_lr: float = 0.1
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    median_last: int = 4
    channels_last: bool = True
    input_norm: str = "dataset"  # or "per-image": every image standardised on its own (why IN wins here)
    data_dir: str = ""
    workers: int = 8  # ImageFolder loader processes (--set workers=N); results do not depend on it


PRESETS: dict[str, Preset] = {
    # End to end in a few minutes: what the tests run (a narrow net: the ends of each row plus one middle).
    "smoke": Preset(
        width=8,
        groups=(8, 2, 1),
        channels_per_group=(8, 2, 1),
        train_images=256,
        val_images=256,
        epochs=1,
        warmup_epochs=0.5,
        median_last=1,
    ),
    # The default: each row's ends and middle (G = 32, 8 and LN; 16, 4 and 1 (=IN) channels per group), one
    # seed, the batch-size study's recipe (32 images per step, 1 epoch of warm-up, cosine decay) for 32 epochs
    # of 6000 images, where the runs pass the reports' convergence check (18 epochs did not: most runs gained
    # more than 2 points in their last quarter); 6 runs of about 8 minutes each (485-510 s on an undisturbed
    # core): about 25 minutes on 2 cores.
    "quick": Preset(groups=(32, 8, 1), channels_per_group=(16, 4, 1), epochs=32, median_last=8),
    # Both rows whole, the same recipe, 3 seeds (42 runs, about 3 h on 2 cores); its seed-0 runs at the quick
    # preset's settings are the quick preset's runs.
    "medium": Preset(seeds=(0, 1, 2), epochs=32, median_last=8),
    # Both rows, 3 seeds, 20000 training images, 12 epochs (hours on 2 cores: docs/results/groups.md).
    "full": Preset(seeds=(0, 1, 2), train_images=20000, val_images=0, epochs=12, warmup_epochs=0.5, median_last=3),
    # The paper's setting for a lab: ResNet-50 on ImageNet, torchrun over 8 GPUs, data_dir with train/ and val/.
    "paper": Preset(
        dataset="imagefolder",
        model="resnet50",
        depth=50,
        devices=8,
        train_images=0,
        val_images=0,
        epochs=100,
        schedule="step",
        warmup_epochs=0.0,
        median_last=5,
    ),
}


def group_spec(axis: str, value: int) -> str:
    """The norm spec of one cell of Table 3: ``groups`` G (G=1 is LN) or ``channels_per_group`` K (K=1 is IN)."""
    if value < 1:
        raise ValueError(f"groups study: {axis} must be >= 1; got {value}")
    if axis == "groups":
        return "ln" if value == 1 else f"gn:{value}"
    if axis == "channels_per_group":
        return "in" if value == 1 else f"gn/{value}"
    raise ValueError(f"groups study: axis must be 'groups' or 'channels_per_group'; got {axis!r}")


def configs(preset: Preset, log: Callable[[str], None] = print) -> list[TrainConfig]:
    """Every run of both rows; a spec shared by the rows (none in the paper's grid) runs once."""
    if preset.dataset == "imagefolder" and not preset.data_dir:
        raise ValueError("the imagefolder dataset needs data_dir (a folder with train/ and val/)")
    specs = [group_spec("groups", g) for g in preset.groups]
    specs += [group_spec("channels_per_group", k) for k in preset.channels_per_group]
    try:
        specs += [str(parse_norm_spec(spec)) for spec in preset.extra_norms]
    except (TypeError, ValueError) as e:
        raise ValueError(f"groups study: extra_norms: {e}") from None
    specs = list(dict.fromkeys(specs))
    return [
        config_from(
            preset,
            experiment=NAME,
            norm=norm,
            seed=seed,
        )
        for norm in specs
        for seed in preset.seeds
    ]
