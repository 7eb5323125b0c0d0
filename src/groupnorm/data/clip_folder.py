"""A user's folder of clips for the video experiment, held in memory as uint8 (N, C, T, H, W).

``data_dir/{train,val}/<class>/<clip>`` where a clip is a ``.npy`` array (T, H, W) or (T, H, W, C)
(uint8, or float in [0, 1]), or a folder of frame images (png/jpg, in name order). T frames at
``stride`` are taken from the middle of each clip (looping clips that are too short); ``size`` resizes
the short side and centre-crops to a square. Options in an optional ``data_dir/clips.json``:
{"size": 112, "stride": 2}. Converted once into the cache (keyed by the folder's listing, sizes and
mtimes) and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from groupnorm.io import atomic_write_bytes, cache_dir

__all__ = ["FRAME_SUFFIXES", "folder_options", "load_cached", "load_clip_folder", "save_tensors"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_cached(path: Path) -> dict[str, Tensor] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a corrupt cache file (not ours to trust): regenerate
        return None


def _read_frames(directory: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"clip folder {directory} holds no frames ({', '.join(FRAME_SUFFIXES)})")
    frames = []
    for f in files:
        try:
            with Image.open(f) as image:
                image = image if image.mode in ("L", "RGB") else image.convert("RGB")
                frames.append(np.asarray(image))
        except OSError as e:
            raise ValueError(f"frame {f}: not a readable image ({e})") from None
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"clip folder {directory}: frames of different shapes {sorted(shapes)}")
    return np.stack(frames)  # (T, H, W) or (T, H, W, 3)


def _read_clip(path: Path) -> Tensor:
    """A clip as uint8 (C, T, H, W) with C = 1 or 3."""
    if path.is_dir():
        array = _read_frames(path)
    else:
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"clip {path}: not a readable .npy array ({e})") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape) < 1:
        raise ValueError(f"clip {path}: expected an array (T, H, W) or (T, H, W, C); got shape {array.shape}")
    array = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]  # drop alpha
    if array.dtype == np.uint8:
        clip = torch.from_numpy(np.ascontiguousarray(array))
    elif np.issubdtype(array.dtype, np.floating):
        clip = torch.from_numpy(np.clip(np.asarray(array, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    else:
        raise ValueError(f"clip {path}: expected uint8 or float values in [0, 1]; got dtype {array.dtype}")
    return clip.permute(3, 0, 1, 2)


def _sample(clip: Tensor, frames: int, stride: int, size: int | None) -> Tensor:
    """``frames`` frames at ``stride`` from the middle of the clip (looping a short one); resize and crop."""
    length = clip.shape[1]
    start = max(0, (length - frames * stride) // 2)
    clip = clip[:, (start + torch.arange(frames) * stride) % length]
    if size is None:
        return clip
    h, w = clip.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = clip.permute(1, 0, 2, 3).float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return x.round().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3)


def _listing(root: Path) -> list[tuple[str, str, list[Path]]]:
    """(split, class, clip paths) for both splits, sorted."""
    out = []
    for split in ("train", "val"):
        directory = root / split
        if not directory.is_dir():
            raise FileNotFoundError(f"clip folder {root}: no {split}/ directory (expected {split}/<class>/<clip>)")
        for cls in sorted(p for p in directory.iterdir() if p.is_dir()):
            clips = sorted(p for p in cls.iterdir() if p.is_dir() or p.suffix.lower() == ".npy")
            if clips:
                out.append((split, cls.name, clips))
    return out


def _fingerprint(listing: list[tuple[str, str, list[Path]]], options: dict) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for split, cls, clips in listing:
        for p in clips:
            files = sorted(p.iterdir()) if p.is_dir() else [p]
            for f in files:
                st = f.stat()
                h.update(f"{split}/{cls}/{f.relative_to(p.parent)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def folder_options(root: Path) -> dict:
    path = root / "clips.json"
    if not path.is_file():
        return {}
    try:
        options = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    unknown = set(options) - {"size", "stride"}
    if not isinstance(options, dict) or unknown:
        raise ValueError(f"{path}: expected an object with keys size, stride; got {options!r}")
    return options


def load_clip_folder(
    root: str | Path, frames: int, *, size: int | None = None, stride: int = 1, cache: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """(train clips, train labels, val clips, val labels, class names) of a folder of clips.

    Clips come back uint8 (N, C, frames, H, W); C is 3 if any clip has colour (grey clips are
    repeated), else 1. ``size``: resize the short side to it and centre-crop a square; without it
    every clip must have the same H and W. Classes are train/'s subfolders; val/ may hold a subset.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clip folder {root} does not exist (expected train/<class>/<clip> and val/...)")
    for key, value, low in (("frames", frames, 1), ("stride", stride, 1), ("size", size, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"load_clip_folder: {key} must be a positive int; got {value!r}")
    listing = _listing(root)
    classes = tuple(cls for split, cls, _ in listing if split == "train")
    if not classes:
        raise ValueError(f"clip folder {root}: train/ holds no class folders with clips")
    stray = sorted({cls for split, cls, _ in listing if split == "val"} - set(classes))
    if stray:
        raise ValueError(f"clip folder {root}: val/ has classes that train/ lacks: {', '.join(stray)}")
    options = {"frames": frames, "size": size, "stride": stride, "version": 1}
    path = cache_dir() / "clips" / f"folder-{_fingerprint(listing, options)}.pt"
    cached = load_cached(path) if cache else None
    if cached is None:
        splits: dict[str, tuple[list[Tensor], list[int]]] = {"train": ([], []), "val": ([], [])}
        for split, cls, clips in listing:
            for p in clips:
                splits[split][0].append(_sample(_read_clip(p), frames, stride, size))
                splits[split][1].append(classes.index(cls))
        every = splits["train"][0] + splits["val"][0]
        if not splits["val"][0]:
            raise ValueError(f"clip folder {root}: val/ holds no clips")
        shapes = {tuple(c.shape[2:]) for c in every}
        if len(shapes) != 1:
            raise ValueError(
                f"clip folder {root}: clips of different sizes {sorted(shapes)[:4]}; set a common size "
                f'(clips.json {{"size": 112}} or load_clip_folder(size=...))'
            )
        channels = max(c.shape[0] for c in every)
        cached = {}
        for split, (clips, labels) in splits.items():
            cached[split] = torch.stack([c.expand(channels, *c.shape[1:]) for c in clips])
            cached[f"{split}_labels"] = torch.tensor(labels, dtype=torch.int64)
        if cache:
            save_tensors(path, cached)
    return cached["train"], cached["train_labels"], cached["val"], cached["val_labels"], classes


# ---------------------------------------------------------------------------------------
# the engine's datasets
