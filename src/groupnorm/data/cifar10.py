"""CIFAR-10 from its binary distribution (cifar-10-binary.tar.gz, unpacked) in a local directory.

Each of data_batch_1..5.bin (train) and test_batch.bin (test) holds 10,000 records of one
label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32x32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from groupnorm.data.idx import DataFileError

__all__ = ["CLASSES", "find_cifar10", "load_cifar10"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 3 * 32 * 32
SPLITS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


def find_cifar10(directory: Path | str | None = None) -> Path | None:
    """The directory holding the .bin files: ``directory``, $GROUPNORM_DATA/cifar10, or None."""
    candidates = []
    if directory is not None:
        candidates.append(Path(directory))
    if os.environ.get("GROUPNORM_DATA"):
        root = Path(os.environ["GROUPNORM_DATA"])
        candidates += [root / "cifar10", root / "cifar-10-batches-bin", root]
    for c in candidates:
        for d in (c, c / "cifar-10-batches-bin"):
            if all((d / f).is_file() for files in SPLITS.values() for f in files):
                return d
    return None


def load_cifar10(directory: Path | str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)); a truncated file or a bad label is an error."""
    if split not in SPLITS:
        raise ValueError(f"load_cifar10: split must be 'train' or 'test'; got {split!r}")
    found = find_cifar10(directory)
    if found is None:
        raise FileNotFoundError(
            f"CIFAR-10 binary files ({', '.join(SPLITS['train'] + SPLITS['test'])}) not in {directory}"
        )
    images, labels = [], []
    for name in SPLITS[split]:
        path = found / name
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD:
            raise DataFileError(
                f"data file {path} has {raw.size} bytes, not a whole number of {RECORD}-byte records (truncated?)"
            )
        records = raw.reshape(-1, RECORD)
        if records[:, 0].max() > 9:
            raise DataFileError(f"data file {path} has a label {records[:, 0].max()} outside 0..9 (corrupt?)")
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
