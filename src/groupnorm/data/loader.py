"""Batches for training and evaluation.

``MemoryLoader`` serves a small dataset held in memory as a uint8 tensor: shuffling,
sharding across processes, random crop with padding and horizontal flip all run batched
on tensors, so data never bottlenecks a CPU run. Every batch is a pure function of
(seed, epoch, step, rank): a run resumed in the middle of an epoch sees exactly the
batches an uninterrupted one would.

``FolderLoader`` streams an ImageNet-style folder through torchvision for paper-scale runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Augment", "FolderLoader", "MemoryLoader", "augment_batch", "batch_generator"]


@dataclass(frozen=True)
class Augment:
    """Random crop after zero-padding by ``pad`` pixels, and a horizontal flip with probability 1/2."""

    pad: int = 0
    flip: bool = False


def batch_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of one batch's randomness, from where the batch is, not from history."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_003 + step) * 257 + rank)


def augment_batch(images: Tensor, augment: Augment, generator: torch.Generator) -> Tensor:
    """Random-crop (with zero padding) and flip a uint8 batch (B, C, *, H, W), each sample on its own.

    For clips (B, C, T, H, W) every frame of a clip gets the same crop and flip.
    """
    b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
    if augment.pad:
        p = augment.pad
        flat = images.reshape(b, -1, h, w)
        padded = F.pad(flat, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        planes = torch.arange(flat.shape[1])[None, :, None, None]
        images = padded[torch.arange(b)[:, None, None, None], planes, rows, cols].reshape(images.shape)
    if augment.flip:
        flip = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flip.view(b, *[1] * (images.dim() - 1)), images.flip(-1), images)
    return images


class MemoryLoader:
    """Shuffled, sharded, augmented batches of an in-memory dataset.

    Args:
        images: uint8 (N, C, H, W), or clips (N, C, T, H, W). labels: int64 (N,).
        batch_size: images per step in this process (images per device x virtual devices).
        mean, std: per-channel, on the 0..1 scale; batches come out normalised, float32.
        train: shuffle, augment and drop the last partial batch (so every virtual device
            gets the same number of images); otherwise every image once, in order.
        seed: the run's seed; rank, world: this process's shard (torch.distributed).
        channels_last: hand out batches in channels_last (channels_last_3d for clips) memory format.
        per_image: then standardise each image (or clip) on its own, to mean 0 and std 1 over its channels
            and positions: what an IN-style first layer would remove (brightness and contrast per image).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: Augment = Augment(),
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
        per_image: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() not in (4, 5):
            raise ValueError(
                "MemoryLoader: images must be uint8 (N, C, H, W) or clips (N, C, T, H, W); "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"MemoryLoader: {len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"MemoryLoader: batch_size must be >= 1; got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.augment = batch_size, train, augment
        self.seed, self.rank, self.world = seed, rank, world
        self.channels_last, self.per_image = channels_last, per_image
        shape = (1, images.shape[1]) + (1,) * (images.dim() - 2)
        std_t = torch.tensor(std, dtype=torch.float32).view(shape)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(shape) / std_t
        self._format = torch.channels_last if images.dim() == 4 else torch.channels_last_3d
        self._shard = len(images) // world if train else len(range(rank, len(images), world))
        if train and self._shard < batch_size:
            raise ValueError(
                f"MemoryLoader: {len(images)} training images over {world} process(es) leave {self._shard} per "
                f"process, fewer than one batch of {batch_size}"
            )

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.train:
            return self._shard // self.batch_size
        return -(-self._shard // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        return len(self) * self.batch_size if self.train else self._shard

    def _indices(self, epoch: int) -> Tensor:
        if not self.train:
            return torch.arange(self.rank, len(self.images), self.world)
        order = torch.randperm(len(self.images), generator=batch_generator(self.seed, epoch, -1))
        return order[self.rank :: self.world][: self._shard]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``epoch`` from step ``start`` on, as (float images, labels)."""
        order = self._indices(epoch)
        for step in range(start, len(self)):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = self.images[idx]
            if self.train and (self.augment.pad or self.augment.flip):
                x = augment_batch(x, self.augment, batch_generator(self.seed, epoch, step, self.rank))
            x = torch.addcmul(self._shift, x.float(), self._scale)
            if self.per_image:
                std, mean = torch.std_mean(x, dim=tuple(range(1, x.dim())), correction=0, keepdim=True)
                x = (x - mean) / std.clamp_min(1e-6)
            if self.channels_last:
                x = x.contiguous(memory_format=self._format)
            yield x, self.labels[idx]


class FolderLoader:
    """An ImageNet-style folder (class subfolders of images) streamed through torchvision.

    Training: RandomResizedCrop(size) and flip (the GoogLeNet-style augmentation of the
    paper's recipe); evaluation: resize to size * 8/7 and a centre crop. Shards across
    processes with DistributedSampler semantics; ``epoch(e, start)`` skips ``start`` batches.
    """

    def __init__(
        self,
        root: Path | str,
        batch_size: int,
        *,
        train: bool,
        size: int = 224,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 8,
        channels_last: bool = False,
    ) -> None:
        from torchvision import datasets, transforms

        normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        if train:
            tf = transforms.Compose(
                [
                    transforms.RandomResizedCrop(size),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    normalize,
                ]
            )
        else:
            tf = transforms.Compose(
                [
                    transforms.Resize(size * 8 // 7),
                    transforms.CenterCrop(size),
                    transforms.ToTensor(),
                    normalize,
                ]
            )
        if not Path(root).is_dir():
            raise FileNotFoundError(f"FolderLoader: image folder {root} does not exist")
        self.dataset = datasets.ImageFolder(str(root), transform=tf)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world, self.workers = rank, world, workers
        self.channels_last = channels_last
        self.classes = self.dataset.classes

    def __len__(self) -> int:
        shard = len(self.dataset) // self.world if self.train else -(-len(self.dataset) // self.world)
        return shard // self.batch_size if self.train else -(-shard // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        return len(self) * self.batch_size

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(
            self.dataset, self.world, self.rank, shuffle=self.train, seed=self.seed, drop_last=self.train
        )
        sampler.set_epoch(epoch)
        indices = list(sampler)[start * self.batch_size :]
        loader = DataLoader(
            torch.utils.data.Subset(self.dataset, indices),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.workers,
            drop_last=self.train,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        torch.manual_seed(self.seed * 1_000_003 + epoch * 257 + start)  # worker seeds for augmentation
        for x, y in loader:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
