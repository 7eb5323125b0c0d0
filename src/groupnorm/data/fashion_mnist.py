"""Fashion-MNIST (Xiao et al. 2017): 60k train and 10k test 28x28 grey images of 10 clothing classes.

Looked up, in order, in ``$GROUPNORM_DATA`` (a directory with the four IDX files, or one with
a ``fashion-mnist`` subdirectory), Debian's package ``dataset-fashion-mnist``
(/usr/share/datasets/fashion-mnist), and the cache directory
(``$GROUPNORM_CACHE/data/fashion-mnist``, default ~/.cache/groupnorm), where
``python -m groupnorm.data.fashion_mnist`` downloads them from the official source with a
progress bar, checking each file's checksum.
"""

from __future__ import annotations

import os
import sys
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch

from groupnorm.data.idx import DataFileError, read_idx
from groupnorm.io import atomic_write_bytes, cache_dir

__all__ = [
    "CLASSES",
    "FILES",
    "download_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist",
]

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

# sha256 of each file's decompressed bytes (the same for the official .gz and Debian's).
FILES = {
    ("train", "images"): (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    ("train", "labels"): (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    ("test", "images"): (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    ("test", "labels"): (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


def _file_in(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _complete(directory: Path) -> bool:
    return all(_file_in(directory, stem) is not None for stem, _ in FILES.values())


def _candidates() -> list[Path]:
    dirs = []
    if os.environ.get("GROUPNORM_DATA"):
        root = Path(os.environ["GROUPNORM_DATA"])
        dirs += [root, root / "fashion-mnist"]
    dirs += [DEBIAN_DIR, cache_dir() / "data" / "fashion-mnist"]
    return dirs


def find_fashion_mnist() -> Path:
    """The first directory holding all four files; FileNotFoundError lists where it looked.

    A $GROUPNORM_DATA without the files is said (one warning) before the next place is used.
    """
    env = os.environ.get("GROUPNORM_DATA")
    for d in _candidates():
        if _complete(d):
            if env and Path(env) not in (d, d.parent):
                missing = [stem for stem, _ in FILES.values() if _file_in(Path(env) / "fashion-mnist", stem) is None]
                warnings.warn(
                    f"groupnorm: GROUPNORM_DATA={env} has no Fashion-MNIST (missing {', '.join(missing)} in "
                    f"{env} and {Path(env) / 'fashion-mnist'}); using {d}",
                    UserWarning,
                    stacklevel=2,
                )
            return d
    looked = ", ".join(str(d) for d in _candidates())
    raise FileNotFoundError(
        f"Fashion-MNIST not found (looked in {looked}). Install Debian's package dataset-fashion-mnist, "
        "set GROUPNORM_DATA, or run: python -m groupnorm.data.fashion_mnist"
    )


def load_fashion_mnist(split: str, directory: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` ("train" or "test"), checksums checked."""
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test'; got {split!r}")
    directory = directory or find_fashion_mnist()
    arrays = []
    for kind in ("images", "labels"):
        stem, sha = FILES[(split, kind)]
        path = _file_in(directory, stem)
        if path is None:
            raise DataFileError(f"data file {directory / stem}(.gz) is missing")
        arrays.append(read_idx(path, sha256=sha))
    images, labels = arrays
    if len(images) != len(labels):
        raise DataFileError(f"{directory}: {split} has {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def download_fashion_mnist(
    directory: Path | None = None, base_url: str | None = None, progress: bool | None = None
) -> Path:
    """Download the four files into ``directory`` (default: the cache), verifying checksums.

    Files already present and valid are kept. Each file is written under a temporary name
    and renamed once verified, so an interrupted download never leaves a bad file behind.
    """
    directory = Path(directory or cache_dir() / "data" / "fashion-mnist")
    base_url = base_url or os.environ.get("GROUPNORM_FASHION_MNIST_URL", OFFICIAL_URL)
    progress = sys.stderr.isatty() if progress is None else progress
    directory.mkdir(parents=True, exist_ok=True)
    for stem, sha in FILES.values():
        target = directory / (stem + ".gz")
        if target.is_file():
            try:
                read_idx(target, sha256=sha)
                continue
            except DataFileError:
                pass  # download again
        url = base_url.rstrip("/") + "/" + stem + ".gz"
        data = _fetch(url, progress)
        tmp = directory / (stem + ".gz.download")
        tmp.write_bytes(data)
        try:
            read_idx(tmp, sha256=sha)
        except DataFileError as e:
            tmp.unlink()
            raise DataFileError(f"downloaded {url}: {e}") from None
        atomic_write_bytes(target, data)
        tmp.unlink()
    return directory


def _fetch(url: str, progress: bool) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], file=sys.stderr)
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except OSError as e:
        raise DataFileError(f"cannot download {url}: {e}") from None
    data = b"".join(chunks)
    if total is not None and len(data) != total:
        raise DataFileError(f"download of {url} was cut short: {len(data)} of {total} bytes")
    return data


def main() -> int:
    try:
        print(f"Fashion-MNIST is in {find_fashion_mnist()}")
        return 0
    except FileNotFoundError:
        pass
    directory = download_fashion_mnist()
    print(f"Fashion-MNIST downloaded to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
