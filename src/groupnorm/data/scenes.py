"""A COCO-format instance-segmentation dataset built from real Fashion-MNIST items.

Each scene is an RGB image with a varied background (a two-colour gradient, low-frequency
blotches, pixel noise and a few faint distractor shapes) and ``min_items..max_items``
Fashion-MNIST items pasted at random positions and scales, each tinted with its own colour.
An item's instance mask is its pixels (intensity above a threshold after resizing) minus what
items pasted later cover; its box is the tight box of that visible mask; its category is the
item's class. Placements that would hide more than ``max_occlusion`` of an earlier item are
redrawn. Training scenes use items of Fashion-MNIST's training split, validation scenes items
of its test split, so validation items are never seen in training.

Everything is a pure function of the spec: scene i of a split is drawn from its own generator
seeded by (seed, split, i). The dataset is written once, atomically (into a temporary
directory renamed into place), in the layout of COCO 2017, and reused::

    <root>/<spec.id>/annotations/instances_train.json
                     annotations/instances_val.json
                     train/000000000000.png ...
                     val/000000000000.png ...
                     scenes.json          the spec, and per-channel mean and std of the training images

    path = ensure_scenes(SceneSpec(train_images=1000, val_images=200), root)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from groupnorm.data.fashion_mnist import CLASSES, load_fashion_mnist
from groupnorm.io import atomic_write_bytes, atomic_write_json, cache_dir

__all__ = ["SPLITS", "SceneSpec", "default_scenes_root", "ensure_scenes", "render_scene"]

SPLITS = ("train", "val")
ITEM_SIZE = 28  # Fashion-MNIST's side
MASK_THRESHOLD = 0.12  # of an item's intensity (0..1), after resizing
FORMAT_VERSION = 1  # bump when the generator's output changes for the same spec


@dataclass(frozen=True)
class SceneSpec:
    """What a scene dataset is; its ``id`` names the directory it is written to.

    Args:
        seed: of every random choice.
        train_images, val_images: scenes per split.
        image_size: side of the square images, pixels.
        min_items, max_items: items per scene (uniform).
        min_scale, max_scale: an item's side is 28 x scale pixels (log-uniform).
        max_occlusion: at most this fraction of an item may be hidden by later items.
        distractors: faint non-object shapes per scene (0 to this many).
    """

    seed: int = 0
    train_images: int = 1000
    val_images: int = 200
    image_size: int = 96
    min_items: int = 2
    max_items: int = 4
    min_scale: float = 0.9
    max_scale: float = 2.0
    max_occlusion: float = 0.3
    distractors: int = 3

    def __post_init__(self) -> None:
        for key in ("train_images", "val_images", "image_size", "min_items", "max_items"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SceneSpec: {key} must be a positive int; got {value!r}")
        if self.max_items < self.min_items:
            raise ValueError(
                f"SceneSpec: max_items must be >= min_items; got min_items={self.min_items}, max_items={self.max_items}"
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"SceneSpec: need 0 < min_scale <= max_scale; got min_scale={self.min_scale}, "
                f"max_scale={self.max_scale}"
            )
        if round(ITEM_SIZE * self.max_scale) > self.image_size:
            raise ValueError(
                f"SceneSpec: an item of 28 x max_scale = {round(ITEM_SIZE * self.max_scale)} pixels does not fit "
                f"an image of {self.image_size}; lower max_scale or raise image_size"
            )
        if not 0 <= self.max_occlusion < 1:
            raise ValueError(f"SceneSpec: max_occlusion must be in [0, 1); got {self.max_occlusion!r}")
        if self.distractors < 0:
            raise ValueError(f"SceneSpec: distractors must be >= 0; got {self.distractors!r}")

    @property
    def id(self) -> str:
        fields = {**dataclasses.asdict(self), "version": FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
        return f"fmnist-scenes{self.image_size}_n{self.train_images}-{self.val_images}_s{self.seed}_{digest}"

    def count(self, split: str) -> int:
        return {"train": self.train_images, "val": self.val_images}[split]


def default_scenes_root() -> Path:
    """Where generated scene datasets live: ``$GROUPNORM_CACHE/detection`` (default ~/.cache/groupnorm/detection)."""
    return cache_dir() / "detection"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in 0..1: a gradient between two colours, blotches, noise."""
    c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    coarse = torch.from_numpy(rng.normal(0, 0.12, (1, 3, 4, 4)).astype(np.float32))
    blotches = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    img = img + blotches.numpy() + rng.normal(0, 0.025, (size, size, 3))
    return img


def _draw_distractors(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Faint ellipses and bars that are not objects: something for the detector to learn to ignore."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(0, count + 1))):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 24, size / 6, 2)
        if rng.random() < 0.5:
            shape = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            shape = (np.abs(yy - cy) <= ry / 3) & (np.abs(xx - cx) <= rx * 1.5)
        img[shape] = 0.75 * img[shape] + 0.25 * rng.uniform(0, 1, 3)


def _item(source: np.ndarray, scale: float, flip: bool) -> np.ndarray:
    """A Fashion-MNIST item resized to 28 x scale pixels, intensity 0..1."""
    side = max(4, round(ITEM_SIZE * scale))
    x = torch.from_numpy(source.astype(np.float32) / 255.0)[None, None]
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=scale < 1)[0, 0]
    out = x.clamp_(0, 1).numpy()
    return out[:, ::-1] if flip else out


def render_scene(
    spec: SceneSpec, split: str, index: int, items: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Scene ``index`` of ``split``: (uint8 image (H, W, 3), [(class index 0..9, visible bool mask (H, W))]).

    ``items`` and ``labels`` are the Fashion-MNIST split the items come from (uint8 (N, 28, 28), (N,)).
    """
    if split not in SPLITS:
        raise ValueError(f"render_scene: split must be one of {', '.join(SPLITS)}; got {split!r}")
    rng = np.random.default_rng([spec.seed, SPLITS.index(split), index, FORMAT_VERSION])
    size = spec.image_size
    img = _background(rng, size)
    _draw_distractors(rng, img, spec.distractors)
    placed: list[tuple[int, np.ndarray, int]] = []  # (class, full mask, full area)
    n_items = int(rng.integers(spec.min_items, spec.max_items + 1))
    for _ in range(n_items):
        k = int(rng.integers(len(items)))
        for _attempt in range(30):
            scale = float(np.exp(rng.uniform(np.log(spec.min_scale), np.log(spec.max_scale))))
            intensity = _item(items[k], scale, bool(rng.random() < 0.5))
            shape = intensity > MASK_THRESHOLD
            if shape.sum() < 8:
                continue
            ys, xs = np.nonzero(shape)
            h, w = intensity.shape
            # the item's pixels (not its 28-pixel frame) must lie inside the image
            y0 = int(rng.integers(-ys.min(), size - ys.max()))
            x0 = int(rng.integers(-xs.min(), size - xs.max()))
            full = np.zeros((size, size), dtype=bool)
            ty0, tx0, ty1, tx1 = max(y0, 0), max(x0, 0), min(y0 + h, size), min(x0 + w, size)
            crop = shape[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            full[ty0:ty1, tx0:tx1] = crop
            if any(
                (m & (_covered_after(placed, j) | full)).sum() > spec.max_occlusion * area
                for j, (_, m, area) in enumerate(placed)
            ):
                continue
            tint = rng.uniform(0.15, 1.0, 3)
            if np.abs(tint - img[full].mean(0)).max() < 0.25:  # keep items visible against the background
                tint = 1.0 - tint
            values = intensity[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
            region = img[ty0:ty1, tx0:tx1]
            region[crop] = tint * (0.35 + 0.65 * values[crop, None])
            placed.append((int(labels[k]), full, int(full.sum())))
            break
    instances = []
    for j, (label, full, _area) in enumerate(placed):
        visible = full & ~_covered_after(placed, j)
        if visible.sum() >= 4:
            instances.append((label, visible))
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return image, instances


def _covered_after(placed: list[tuple[int, np.ndarray, int]], j: int) -> np.ndarray:
    """Pixels covered by the items placed after item j."""
    out = np.zeros_like(placed[j][1])
    for _, m, _ in placed[j + 1 :]:
        out |= m
    return out


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(spec: SceneSpec, split: str, out: Path, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Render and write one split; return the per-channel pixel sum and squared sum (for mean and std)."""
    from pycocotools import mask as mask_utils

    items, labels = load_fashion_mnist("train" if split == "train" else "test", data_dir)
    items, labels = items.numpy(), labels.numpy()
    (out / split).mkdir(parents=True)
    images, annotations = [], []
    total, total_sq = np.zeros(3), np.zeros(3)
    for i in range(spec.count(split)):
        image, instances = render_scene(spec, split, i, items, labels)
        name = f"{i:012d}.png"
        (out / split / name).write_bytes(_encode_png(image))
        pixels = image.reshape(-1, 3).astype(np.float64) / 255.0
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        images.append({"id": i + 1, "file_name": name, "height": spec.image_size, "width": spec.image_size})
        for label, visible in instances:
            rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"Fashion-MNIST scenes ({split}), groupnorm.data.scenes", "spec": spec.id},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": name, "supercategory": "clothing"} for c, name in enumerate(CLASSES)],
    }
    (out / "annotations").mkdir(exist_ok=True)
    atomic_write_json(out / "annotations" / f"instances_{split}.json", coco)
    return total, total_sq


def ensure_scenes(spec: SceneSpec, root: Path | str | None = None, *, data_dir: Path | str | None = None) -> Path:
    """The directory of ``spec``'s dataset under ``root`` (default: default_scenes_root()), generated if missing.

    Written once: into a temporary directory next to it, renamed into place when complete, so
    an interrupted or concurrent generation never leaves a partial dataset behind (a second
    process that finishes later discards its copy). ``data_dir``: where Fashion-MNIST is (see
    groupnorm.data.load_fashion_mnist).
    """
    root = Path(root) if root is not None else default_scenes_root()
    target = root / spec.id
    if (target / "scenes.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.id}.", suffix=".tmp", dir=root))
    try:
        total, total_sq, n = np.zeros(3), np.zeros(3), 0
        for split in SPLITS:
            s, sq = _write_split(spec, split, tmp, Path(data_dir) if data_dir else None)
            if split == "train":
                total, total_sq, n = s, sq, spec.train_images * spec.image_size**2
        mean = total / n
        std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
        meta: dict[str, Any] = {
            "id": spec.id,
            "spec": dataclasses.asdict(spec),
            "format_version": FORMAT_VERSION,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "classes": list(CLASSES),
        }
        atomic_write_bytes(tmp / "scenes.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "scenes.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote it first: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
