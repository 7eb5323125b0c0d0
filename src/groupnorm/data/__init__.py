"""Datasets, held in memory as tensors where they are small."""

from groupnorm.data.fashion_mnist import download_fashion_mnist, find_fashion_mnist, load_fashion_mnist
from groupnorm.data.idx import DataFileError, read_idx

__all__ = ["DataFileError", "download_fashion_mnist", "find_fashion_mnist", "load_fashion_mnist", "read_idx"]
