"""Video clips for the video experiment (paper Sec. 6.3, Table 8): generated from real Fashion-MNIST items, or a
user's folder of clips. Both are held in memory as uint8 (N, C, T, H, W) for groupnorm.data.MemoryLoader.

Moving Fashion-MNIST (datasets ``moving-fashion-t{T}``, T in :data:`CLIP_LENGTHS`)
    Each clip shows one real Fashion-MNIST garment (train items for the training split, test
    items for validation, at half resolution) gliding over a toroidal canvas with a little
    camera shake. Its class is the motion: one of 16 compass directions x 2 speeds (32
    classes). By construction no single frame says anything about the label: the start
    position is uniform over the torus and independent of everything else, so the garment's
    position in any frame is uniform whatever the class, and the garment is drawn
    independently of the class. :func:`same_frame_other_class` makes this concrete: any frame
    of any clip is, bit for bit, the same frame of a clip of every other class. Telling the
    classes apart needs the motion across frames, and longer clips average out more of the
    shake (the reason the paper's 64-frame clips beat its 32-frame ones). The T-frame clips
    are the first T frames of the same underlying videos for every T. Generated once per
    (recipe, T), written atomically under ``groupnorm.io.cache_dir()/clips``, reused.

A folder of clips (datasets ``clips-t{T}``, with ``data_dir``): see groupnorm.data.clip_folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from groupnorm.data.clip_folder import folder_options, load_cached, load_clip_folder, save_tensors
from groupnorm.data.datasets import register_dataset
from groupnorm.data.fashion_mnist import load_fashion_mnist
from groupnorm.data.loader import Augment
from groupnorm.io import cache_dir

__all__ = [
    "CLIP_FAMILIES",
    "CLIP_LENGTHS",
    "ClipParams",
    "MovingFashion",
    "clip_dataset_name",
    "clip_parameters",
    "dataset_frames",
    "generate_clips",
    "load_clip_folder",
    "load_moving_fashion",
    "render_clips",
    "same_frame_other_class",
    "split_dataset_name",
]

CLIP_LENGTHS = (2, 4, 8, 12, 16, 24, 32, 48, 64)
CLIP_FAMILIES = ("moving-fashion", "clips")  # generated moving Fashion-MNIST, or a folder of clips
_COMPASS = {
    8: ("E", "NE", "N", "NW", "W", "SW", "S", "SE"),
    16: ("E", "ENE", "NE", "NNE", "N", "NNW", "NW", "WNW", "W", "WSW", "SW", "SSW", "S", "SSE", "SE", "ESE"),
}


@dataclass(frozen=True)
class MovingFashion:
    """The recipe of the Moving Fashion-MNIST clips; every field changes the data (and its cache key).

    Positions are integers in 1/``subpixel`` pixels on a torus of ``size`` pixels, so every clip
    is an exact function of its parameters (rendering is integer bilinear interpolation).
    """

    size: int = 24  # canvas side (pixels); the canvas wraps around (a torus)
    item_size: int = 14  # garments are Fashion-MNIST's 28x28 items, area-downscaled to this
    directions: int = 16  # compass directions, 360/directions degrees apart
    speeds: tuple[int, ...] = (4, 8)  # in 1/subpixel px per frame: 0.5 and 1 px per frame
    jitter: int = 8  # camera shake: each frame moves by up to +-jitter/subpixel px per axis (here 1 px)
    subpixel: int = 8
    max_frames: int = 64  # the underlying videos; a T-frame clip is their first T frames
    train_clips: int = 12000
    val_clips: int = 2000
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        for key in ("size", "item_size", "directions", "subpixel", "max_frames", "train_clips", "val_clips"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MovingFashion: {key} must be a positive int; got {value!r}")
        if self.item_size >= self.size:
            raise ValueError(
                f"MovingFashion: item_size must be below the canvas size {self.size}; got {self.item_size}"
            )
        if not self.speeds or len(set(self.speeds)) != len(self.speeds) or min(self.speeds) < 1:
            raise ValueError(f"MovingFashion: speeds must be distinct positive ints; got {self.speeds!r}")
        if self.jitter < 0:
            raise ValueError(f"MovingFashion: jitter must be >= 0; got {self.jitter!r}")

    @property
    def num_classes(self) -> int:
        return self.directions * len(self.speeds)

    @property
    def classes(self) -> tuple[str, ...]:
        """'E 0.5px', 'E 1px', 'ENE 0.5px', ...: direction (compass, north up) and speed in px per frame."""
        names = []
        for d in range(self.directions):
            where = _COMPASS[self.directions][d] if self.directions in _COMPASS else f"{360 * d / self.directions:g}deg"
            names += [f"{where} {s / self.subpixel:g}px" for s in self.speeds]
        return tuple(names)

    def velocities(self) -> Tensor:
        """(num_classes, 2) int64: (dy, dx) per frame in 1/subpixel px of each class (y points down)."""
        out = []
        for d in range(self.directions):
            angle = 2 * math.pi * d / self.directions
            for s in self.speeds:
                out.append((round(-s * math.sin(angle)), round(s * math.cos(angle))))
        return torch.tensor(out, dtype=torch.int64)

    def key(self, frames: int) -> str:
        text = json.dumps({**asdict(self), "frames": frames}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ClipParams:
    """Everything a clip is made of: which garment, which class, where it starts, how the camera shakes.

    ``items``: (N,) index into the split's garments; ``labels``: (N,); ``start``: (N, 2) position of
    frame 0 before shake, in 1/subpixel px; ``shake``: (N, max_frames, 2) per-frame offsets.
    """

    items: Tensor
    labels: Tensor
    start: Tensor
    shake: Tensor

    def positions(self, recipe: MovingFashion, frames: int) -> Tensor:
        """(N, frames, 2) positions on the torus: start + velocity x t + shake, modulo the canvas."""
        t = torch.arange(frames, dtype=torch.int64)
        v = recipe.velocities()[self.labels]
        pos = self.start[:, None, :] + v[:, None, :] * t[None, :, None] + self.shake[:, :frames]
        return pos.remainder(recipe.size * recipe.subpixel)


def clip_parameters(recipe: MovingFashion, n: int, num_items: int, seed: int) -> ClipParams:
    """Draw the parameters of ``n`` clips: balanced classes; garment, start and shake independent of the class."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % recipe.num_classes)[torch.randperm(n, generator=g)]
    reps = -(-n // num_items)
    items = torch.cat([torch.randperm(num_items, generator=g) for _ in range(reps)])[:n]
    start = torch.randint(0, recipe.size * recipe.subpixel, (n, 2), generator=g)
    shake = torch.randint(-recipe.jitter, recipe.jitter + 1, (n, recipe.max_frames, 2), generator=g)
    return ClipParams(items, labels, start, shake)


def _items(images: Tensor, recipe: MovingFashion) -> Tensor:
    """Garments (M, 28, 28) uint8 -> area-downscaled to item_size, int32."""
    if recipe.item_size != images.shape[-1]:
        images = F.interpolate(images[:, None].float(), size=recipe.item_size, mode="area")[:, 0].round()
    return images.to(torch.int32)


def render_clips(items: Tensor, positions: Tensor, recipe: MovingFashion) -> Tensor:
    """Frames (N, T, size, size) uint8: garment n (N, k, k) at each of positions (N, T, 2) on the torus.

    The garment's top-left corner sits at the position, in 1/subpixel px; integer bilinear
    interpolation, so each pixel is a pure function of the garment and the position: equal inputs
    give bit-equal frames whatever else is in the batch.
    """
    n, t = positions.shape[:2]
    s, sub, k = recipe.size, recipe.subpixel, items.shape[-1]
    if k >= s:
        raise ValueError(f"render_clips: garments of {k} px need a canvas larger than {k}; got size {s}")
    whole, frac = positions.div(sub, rounding_mode="floor"), positions.remainder(sub)
    fy, fx = frac[..., 0, None, None].to(torch.int32), frac[..., 1, None, None].to(torch.int32)
    padded = F.pad(items, (1, 1, 1, 1))[:, None]  # (N, 1, k+2, k+2); patch pixel (r, c) mixes item[r-a, c-b]
    here, up, left, diag = (
        padded[..., 1 - a : k + 2 - a, 1 - b : k + 2 - b] for a, b in ((0, 0), (1, 0), (0, 1), (1, 1))
    )
    patch = (sub - fy) * (sub - fx) * here + fy * (sub - fx) * up + (sub - fy) * fx * left + fy * fx * diag
    patch = (patch + sub * sub // 2) // (sub * sub)  # (N, T, k+1, k+1)
    offsets = torch.arange(k + 1)
    rows = (whole[..., 0, None] + offsets).remainder(s)  # (N, T, k+1)
    cols = (whole[..., 1, None] + offsets).remainder(s)
    index = (rows[..., :, None] * s + cols[..., None, :]).reshape(n, t, -1)
    frames = torch.zeros(n, t, s * s, dtype=torch.uint8)
    frames.scatter_(2, index, patch.reshape(n, t, -1).to(torch.uint8))
    return frames.view(n, t, s, s)


def generate_clips(recipe: MovingFashion, images: Tensor, params: ClipParams, frames: int, chunk: int = 1024) -> Tensor:
    """Clips (N, 1, frames, size, size) uint8 of ``params`` over the garments ``images`` (M, 28, 28)."""
    if not 1 <= frames <= recipe.max_frames:
        raise ValueError(f"frames must be in 1..{recipe.max_frames} (the recipe's max_frames); got {frames!r}")
    out = torch.empty(len(params.labels), 1, frames, recipe.size, recipe.size, dtype=torch.uint8)
    positions = params.positions(recipe, frames)
    for i in range(0, len(out), chunk):
        items = _items(images[params.items[i : i + chunk]], recipe)
        out[i : i + chunk, 0] = render_clips(items, positions[i : i + chunk], recipe)
    return out


def same_frame_other_class(params: ClipParams, index: int, frame: int, label: int, recipe: MovingFashion) -> ClipParams:
    """The parameters of a clip of class ``label``, same garment and shake, whose frame ``frame`` is exactly
    frame ``frame`` of clip ``index``: the witness that no single frame decides the label."""
    v = recipe.velocities()
    start = params.start[index] + (v[params.labels[index]] - v[label]) * frame
    return ClipParams(
        params.items[index : index + 1],
        torch.tensor([label]),
        start.remainder(recipe.size * recipe.subpixel)[None],
        params.shake[index : index + 1],
    )


def load_moving_fashion(
    frames: int, recipe: MovingFashion = MovingFashion(), data_dir: str | Path | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train clips, train labels, val clips, val labels) of ``recipe`` at ``frames`` frames, from the cache
    or generated (from Fashion-MNIST train items for training, test items for validation) and cached."""
    path = cache_dir() / "clips" / f"moving-fashion-t{frames}-{recipe.key(frames)}.pt"
    cached = load_cached(path)
    if cached is None:
        directory = Path(data_dir) if data_dir else None
        out = {}
        for split, n, offset in (("train", recipe.train_clips, 0), ("test", recipe.val_clips, 1)):
            images, _ = load_fashion_mnist(split, directory)
            params = clip_parameters(recipe, n, len(images), recipe.seed * 2 + offset)
            out[split] = (generate_clips(recipe, images, params, frames), params.labels)
        cached = {"train": out["train"][0], "train_labels": out["train"][1]}
        cached |= {"val": out["test"][0], "val_labels": out["test"][1]}
        save_tensors(path, cached)
    return cached["train"], cached["train_labels"], cached["val"], cached["val_labels"]


# ---------------------------------------------------------------------------------------
# a folder of clips


def _moving_fashion_loader(frames: int):
    def load(data_dir: str | None):
        recipe = MovingFashion()
        tr, trl, va, val = load_moving_fashion(frames, recipe, data_dir)
        # A random crop shifts every frame of a clip alike (the motion, hence the label, is kept); a
        # horizontal flip would turn east into west, so there is none.
        return tr, trl, va, val, recipe.classes, Augment(pad=2, flip=False)

    return load


def _clip_folder_loader(frames: int):
    def load(data_dir: str | None):
        if not data_dir:
            raise ValueError(
                f"dataset clips-t{frames} needs data_dir: a folder with train/<class>/<clip> and val/<class>/<clip>"
            )
        options = folder_options(Path(data_dir))
        tr, trl, va, val, classes = load_clip_folder(data_dir, frames, **options)
        return tr, trl, va, val, classes, Augment(pad=0, flip=False)

    return load


def _register() -> None:
    recipe = MovingFashion()
    for t in CLIP_LENGTHS:
        register_dataset(f"moving-fashion-t{t}", _moving_fashion_loader(t), 1, recipe.num_classes, clips=True)
        # in_channels and num_classes of a folder are known once it is read: these two are placeholders
        # for the engine's build check (the model trained is built from the data as loaded).
        register_dataset(f"clips-t{t}", _clip_folder_loader(t), 3, 1000, clips=True)


_register()


@functools.cache
def dataset_frames(name: str) -> int | None:
    """T of a clip dataset ``moving-fashion-t{T}`` or ``clips-t{T}``; None for other datasets."""
    for prefix in ("moving-fashion-t", "clips-t"):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return int(name[len(prefix) :])
    return None


def split_dataset_name(name: str) -> tuple[str, int]:
    """('moving-fashion', 8) from 'moving-fashion-t8'; ValueError for a name that is not a clip dataset."""
    frames = dataset_frames(name)
    if frames is None:
        raise ValueError(f"not a clip dataset: {name!r} (expected moving-fashion-t<T> or clips-t<T>)")
    return name[: name.rindex("-t")], frames


def clip_dataset_name(family: str, frames: int) -> str:
    """'moving-fashion-t8' from ('moving-fashion', 8); ValueError naming the registered lengths."""
    if family not in CLIP_FAMILIES:
        raise ValueError(f"clip dataset family must be 'moving-fashion' or 'clips'; got {family!r}")
    if frames not in CLIP_LENGTHS:
        raise ValueError(f"clip length must be one of {', '.join(map(str, CLIP_LENGTHS))}; got {frames!r}")
    return f"{family}-t{frames}"
