"""CIFAR-10 in a local directory: the binary distribution or torchvision's python one.

Binary (cifar-10-binary.tar.gz, unpacked to ``cifar-10-batches-bin``): each of data_batch_1..5.bin
(train) and test_batch.bin (test) holds 10,000 records of one label byte and 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, row-major 32x32). Python (cifar-10-python.tar.gz, unpacked to
``cifar-10-batches-py``, what ``torchvision.datasets.CIFAR10(download=True)`` writes): read by
torchvision, which checks each file's MD5.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from groupnorm.data.idx import DataFileError

__all__ = ["CLASSES", "find_cifar10", "load_cifar10"]

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 3 * 32 * 32
SPLITS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
PY_DIR = "cifar-10-batches-py"
PY_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


def _is_binary(d: Path) -> bool:
    return all((d / f).is_file() for files in SPLITS.values() for f in files)


def _is_python(d: Path) -> bool:
    return d.name == PY_DIR and all((d / f).is_file() for f in PY_FILES)


def find_cifar10(directory: Path | str | None = None) -> Path | None:
    """The directory holding CIFAR-10 (``cifar-10-batches-bin`` or ``-py`` files) or None.

    Looked up in ``directory``, then $GROUPNORM_DATA/cifar10 and $GROUPNORM_DATA, each itself or
    with a cifar-10-batches-bin or cifar-10-batches-py subdirectory. A $GROUPNORM_DATA without
    them is said (one warning) before None is returned.
    """
    candidates = []
    if directory is not None:
        candidates.append(Path(directory))
    env = os.environ.get("GROUPNORM_DATA")
    if env:
        candidates += [Path(env) / "cifar10", Path(env)]
    for c in candidates:
        for d in (c, c / "cifar-10-batches-bin", c / PY_DIR):
            if _is_binary(d) or _is_python(d):
                return d
    if env:
        warnings.warn(
            f"groupnorm: GROUPNORM_DATA={env} has no CIFAR-10 (looked for cifar-10-batches-bin/*.bin or "
            f"{PY_DIR}/ in {Path(env) / 'cifar10'} and {env})",
            UserWarning,
            stacklevel=2,
        )
    return None


def _load_python(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(directory.parent), train=split == "train", download=False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DataFileError(f"CIFAR-10 python files in {directory}: {e} (MD5 checked by torchvision)") from None
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    return images, torch.as_tensor(ds.targets, dtype=torch.int64)


def load_cifar10(directory: Path | str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)); a truncated file or a bad label is an error."""
    if split not in SPLITS:
        raise ValueError(f"load_cifar10: split must be 'train' or 'test'; got {split!r}")
    found = find_cifar10(directory)
    if found is None:
        raise FileNotFoundError(
            f"CIFAR-10 binary files ({', '.join(SPLITS['train'] + SPLITS['test'])}) or torchvision's "
            f"{PY_DIR}/ not in {directory}"
        )
    if _is_python(found):
        return _load_python(found, split)
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
