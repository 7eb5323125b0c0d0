"""Datasets: Fashion-MNIST (IDX), CIFAR-10 (binary), ImageFolder, video clips; small ones held in memory."""

from groupnorm.data import clips  # registers the clip datasets (moving-fashion-t*, clips-t*)
from groupnorm.data.cifar10 import find_cifar10, load_cifar10
from groupnorm.data.datasets import LOADERS, ImageData, dataset_shape, load_image_data, register_dataset
from groupnorm.data.fashion_mnist import download_fashion_mnist, find_fashion_mnist, load_fashion_mnist
from groupnorm.data.idx import DataFileError, read_idx
from groupnorm.data.loader import Augment, FolderLoader, MemoryLoader, augment_batch

__all__ = [
    "LOADERS",
    "Augment",
    "DataFileError",
    "FolderLoader",
    "ImageData",
    "MemoryLoader",
    "augment_batch",
    "clips",
    "dataset_shape",
    "download_fashion_mnist",
    "find_cifar10",
    "find_fashion_mnist",
    "load_cifar10",
    "load_fashion_mnist",
    "load_image_data",
    "read_idx",
    "register_dataset",
]
