"""Any COCO-format instance-segmentation dataset, read through pycocotools, in torchvision's detection format.

    data = CocoDataset(root / "train2017", root / "annotations/instances_train2017.json", train=True)
    image, target = data[0]   # uint8 (3, H, W); {"boxes" xyxy float, "labels" 1..K, "masks" uint8 (n, H, W), ...}
    loader = DetectionLoader(data, batch_size=16, seed=0)
    for images, targets in loader.epoch(epoch, start_step): ...

Labels are contiguous, 1..K in the order of the sorted category ids (0 is the background, as
torchvision's detectors expect); ``cat_id_of_label`` maps them back for COCOeval. Training
drops crowd annotations and degenerate boxes, and images left without annotations, as
torchvision's reference scripts do; evaluation keeps every image.

Every training batch is a pure function of (seed, epoch, step, rank): a resumed run sees the
batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from groupnorm.data.loader import batch_generator

__all__ = ["CocoDataset", "DetectionLoader", "load_coco"]

PRELOAD_LIMIT = 5000  # datasets up to this many images are decoded once and held in memory


def load_coco(annotation_file: Path | str):
    """pycocotools' COCO for ``annotation_file``, without its prints."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


class CocoDataset:
    """Images and instance targets of one COCO-format split.

    Args:
        images_dir: the folder the ``file_name`` of each image is relative to.
        annotation_file: the instances JSON.
        train: keep only images with at least one usable (non-crowd, non-degenerate) annotation.
        preload: decode every image and mask once and hold them (default: when at most
            PRELOAD_LIMIT images).
    """

    def __init__(
        self, images_dir: Path | str, annotation_file: Path | str, *, train: bool, preload: bool | None = None
    ) -> None:
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"COCO images folder not found: {self.images_dir}")
        self.annotation_file = Path(annotation_file)
        self.coco = load_coco(annotation_file)
        self.train = train
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        if not self.cat_ids:
            raise ValueError(f"{annotation_file}: no categories")
        self.label_of_cat_id = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.cat_id_of_label = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if self._annotations(i)]
        if not ids:
            raise ValueError(f"{annotation_file}: no images{' with usable annotations' if train else ''}")
        self.image_ids: list[int] = ids
        self._cache: list[tuple[Tensor, dict[str, Tensor]]] | None = None
        if preload if preload is not None else len(ids) <= PRELOAD_LIMIT:
            self._cache = [self._load(i) for i in range(len(ids))]

    @property
    def num_classes(self) -> int:
        """Categories plus the background."""
        return len(self.cat_ids) + 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        return [a for a in anns if not a.get("iscrowd", 0) and a["bbox"][2] >= 1 and a["bbox"][3] >= 1]

    def image_info(self, index: int) -> dict[str, Any]:
        return self.coco.imgs[self.image_ids[index]]

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.image_info(index)["file_name"]

    def _load(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        info = self.image_info(index)
        with Image.open(self.image_path(index)) as f:
            image = torch.from_numpy(np.asarray(f.convert("RGB")).copy()).permute(2, 0, 1).contiguous()
        h, w = image.shape[-2:]
        anns = self._annotations(info["id"])
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.label_of_cat_id[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": torch.tensor(info["id"]),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if self._cache is not None:
            return self._cache[index]
        return self._load(index)


def _hflip(image: Tensor, target: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


class DetectionLoader:
    """Batches of (list of float images in 0..1, list of targets) for torchvision's detectors.

    Args:
        dataset: a CocoDataset.
        batch_size: images per step in this process (images per device x virtual devices).
        train: shuffle each epoch, flip half the images, drop the last partial batch (every
            virtual device gets the same number of images); otherwise every image once, in order.
        seed: the run's seed; rank, world: this process's shard (each step takes world x
            batch_size images, this process the rank-th block of them).
        hflip: flip horizontally with probability 1/2 in training.
    """

    def __init__(
        self,
        dataset: CocoDataset,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        hflip: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DetectionLoader: batch_size must be a positive int; got {batch_size!r}")
        if train and batch_size * world > len(dataset):
            raise ValueError(
                f"DetectionLoader: a step takes {batch_size * world} images but the training set has {len(dataset)}"
            )
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.rank, self.world, self.hflip = seed, rank, world, hflip
        self._pool = ThreadPoolExecutor(4) if dataset._cache is None else None

    def __len__(self) -> int:
        if self.train:
            return len(self.dataset) // (self.batch_size * self.world)
        return -(-len(self._eval_indices()) // self.batch_size)

    def _eval_indices(self) -> list[int]:
        return list(range(self.rank, len(self.dataset), self.world))

    def _fetch(self, indices: list[int]) -> list[tuple[Tensor, dict[str, Tensor]]]:
        if self._pool is None:
            return [self.dataset[i] for i in indices]
        return list(self._pool.map(self.dataset.__getitem__, indices))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
        """The batches of ``epoch`` from ``start_step`` on."""
        if not self.train:
            indices = self._eval_indices()
            for s in range(start_step, len(self)):
                chunk = indices[s * self.batch_size : (s + 1) * self.batch_size]
                pairs = self._fetch(chunk)
                yield [img.float().div_(255) for img, _ in pairs], [t for _, t in pairs]
            return
        order = torch.randperm(len(self.dataset), generator=batch_generator(self.seed, epoch, -1)).tolist()
        global_batch = self.batch_size * self.world
        for step in range(start_step, len(self)):
            chunk = order[step * global_batch : (step + 1) * global_batch]
            mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            gen = batch_generator(self.seed, epoch, step, self.rank)
            flips = (torch.rand(len(mine), generator=gen) < 0.5).tolist()
            images, targets = [], []
            for (img, tgt), flip in zip(self._fetch(mine), flips, strict=True):
                if self.hflip and flip:
                    img, tgt = _hflip(img, tgt)
                images.append(img.float().div_(255))
                targets.append(tgt)
            yield images, targets
