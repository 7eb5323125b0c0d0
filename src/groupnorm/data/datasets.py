"""Small image datasets by name, held in memory: what the classification experiments train on."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from groupnorm.data.cifar10 import CLASSES as CIFAR10_CLASSES
from groupnorm.data.cifar10 import find_cifar10, load_cifar10
from groupnorm.data.fashion_mnist import CLASSES as FASHION_CLASSES
from groupnorm.data.fashion_mnist import load_fashion_mnist
from groupnorm.data.loader import Augment

__all__ = ["LOADERS", "ImageData", "dataset_shape", "image_datasets", "load_image_data", "register_dataset"]


@dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images (N, C, H, W) or clips (N, C, T, H, W), int64 labels, how to augment."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _subset(images: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The first n of a fixed shuffle (the same for every run, so runs compare on the same data)."""
    if n <= 0 or n >= len(images):
        return images, labels
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


def _fashion_mnist(data_dir: str | None):
    directory = Path(data_dir) if data_dir else None
    tr, trl = load_fashion_mnist("train", directory)
    va, val = load_fashion_mnist("test", directory)
    return tr.unsqueeze(1), trl, va.unsqueeze(1), val, FASHION_CLASSES, Augment(pad=2, flip=True)


def _cifar10(data_dir: str | None):
    directory = find_cifar10(data_dir)
    if directory is None:
        raise FileNotFoundError(
            "CIFAR-10 not found: pass data_dir=... (the unpacked cifar-10-batches-bin, or torchvision's "
            "cifar-10-batches-py) or set GROUPNORM_DATA to a directory holding cifar10/"
        )
    tr, trl = load_cifar10(directory, "train")
    va, val = load_cifar10(directory, "test")
    return tr, trl, va, val, CIFAR10_CLASSES, Augment(pad=4, flip=True)


# name -> (loader(data_dir) -> (train images, labels, val images, labels, classes, augment), in_channels, classes)
LOADERS: dict[str, tuple[Callable[[str | None], tuple], int, int]] = {
    "fashion-mnist": (_fashion_mnist, 1, 10),
    "cifar10": (_cifar10, 3, 10),
}


CLIP_DATASETS: set[str] = set()  # registered datasets of clips (N, C, T, H, W)


def register_dataset(
    name: str, loader: Callable[[str | None], tuple], in_channels: int, num_classes: int, *, clips: bool = False
) -> None:
    """Make ``name`` a dataset of the engine. ``loader(data_dir)`` returns (train uint8 (N, C, *, H, W),
    train labels, val images, val labels, class names, Augment); ``clips``: its items are clips."""
    LOADERS[name] = (loader, in_channels, num_classes)
    if clips:
        CLIP_DATASETS.add(name)


def image_datasets() -> tuple[str, ...]:
    """The registered datasets of images (not clips)."""
    return tuple(name for name in LOADERS if name not in CLIP_DATASETS)


def dataset_shape(name: str) -> tuple[int, int]:
    """(in_channels, num_classes) of a registered dataset, without loading it."""
    return LOADERS[name][1], LOADERS[name][2]


@functools.lru_cache(maxsize=4)
def load_image_data(
    name: str, train_images: int = 0, val_images: int = 0, data_dir: str | None = None, subset_seed: int = 0
) -> ImageData:
    """Load dataset ``name``, optionally a fixed random subset of each split.

    ``train_images`` / ``val_images``: how many to keep (0: all). Validation is the official
    test split. Mean and std are the training subset's, per channel.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(LOADERS)}")
    tr, trl, va, val, classes, augment = LOADERS[name][0](data_dir)
    tr, trl = _subset(tr, trl, train_images, subset_seed)
    va, val = _subset(va, val, val_images, subset_seed + 1)
    pixels = tr.float().div_(255).transpose(0, 1).reshape(tr.shape[1], -1)
    mean = tuple(pixels.mean(1).tolist())
    std = tuple(pixels.std(1).tolist())
    return ImageData(name, tr, trl, va, val, tuple(classes), mean, std, augment)
