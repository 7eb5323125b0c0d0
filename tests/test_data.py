"""Loaders on generated files; corrupt files give clear errors; the download against a loopback server."""

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from groupnorm.data import (
    Augment,
    DataFileError,
    FolderLoader,
    MemoryLoader,
    augment_batch,
    download_fashion_mnist,
    find_cifar10,
    find_fashion_mnist,
    load_cifar10,
    load_fashion_mnist,
    load_image_data,
    read_idx,
)
from groupnorm.data import fashion_mnist as fm
from groupnorm.data.cifar10 import CLASSES as CIFAR10_CLASSES


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(directory: Path, n_train=12, n_test=6, gz=True) -> dict:
    """Four IDX files in Fashion-MNIST's names; returns their FILES table (with these files' checksums)."""
    rng = np.random.default_rng(0)
    files = {}
    directory.mkdir(parents=True, exist_ok=True)
    for (split, kind), (stem, _) in fm.FILES.items():
        n = n_train if split == "train" else n_test
        arr = rng.integers(0, 256, (n, 28, 28)) if kind == "images" else rng.integers(0, 10, (n,))
        raw = idx_bytes(arr)
        (directory / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)
        files[(split, kind)] = (stem, hashlib.sha256(raw).hexdigest())
    return files


def test_read_idx_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (lambda raw: raw[:-5], ["truncated"]),
        (lambda raw: raw + b"xx", ["trailing data"]),
        (lambda raw: b"\x01\x02" + raw[2:], ["not an IDX file"]),
        (lambda raw: raw[:6], ["truncated"]),
        (lambda raw: gzip.compress(raw)[:-20], ["not a valid gzip file"]),
    ],
)
def test_read_idx_rejects_bad_files_naming_them(tmp_path, data, words):
    raw = idx_bytes(np.zeros((4, 5, 5)))
    path = tmp_path / "bad-file"
    path.write_bytes(data(raw))
    with pytest.raises(DataFileError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_read_idx_checks_sha256(tmp_path):
    raw = idx_bytes(np.zeros((4, 5, 5)))
    (tmp_path / "f").write_bytes(raw)
    read_idx(tmp_path / "f", sha256=hashlib.sha256(raw).hexdigest())
    with pytest.raises(DataFileError, match="corrupt: its sha256 does not match"):
        read_idx(tmp_path / "f", sha256="0" * 64)


def test_real_fashion_mnist_loads_whole():
    """make test installs the real dataset (Debian package or checked download)."""
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [1000] * 10
    assert load_fashion_mnist("train")[0].shape == (60000, 28, 28)


def test_lookup_order_prefers_groupnorm_data(tmp_path, monkeypatch):
    write_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("GROUPNORM_DATA", str(tmp_path))
    assert find_fashion_mnist() == tmp_path / "fashion-mnist"
    # generated files are not the published ones: the checksum says so, naming the file
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz is corrupt"):
        load_fashion_mnist("train")


def test_corrupt_fashion_file_is_an_error_not_a_shorter_dataset(tmp_path, monkeypatch):
    files = write_fashion(tmp_path)
    monkeypatch.setattr(fm, "FILES", files)
    images, _ = load_fashion_mnist("train", tmp_path)
    assert len(images) == 12
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-784]))  # one image short
    with pytest.raises(DataFileError, match=r"train-images-idx3-ubyte.gz has .*truncated"):
        load_fashion_mnist("train", tmp_path)


class _Server:
    """A loopback HTTP server over a directory, counting requests; can cut responses short."""

    def __init__(self, root: Path, truncate: bool = False):
        self.requests = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests += 1
                if not truncate:
                    return super().do_GET()
                data = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_download_checks_checksums_and_is_idempotent(tmp_path, monkeypatch):
    served = tmp_path / "served"
    monkeypatch.setattr(fm, "FILES", write_fashion(served))
    server = _Server(served)
    try:
        dest = download_fashion_mnist(tmp_path / "cache", base_url=server.url, progress=True)
        assert server.requests == 4
        assert load_fashion_mnist("test", dest)[0].shape == (6, 28, 28)
        download_fashion_mnist(tmp_path / "cache", base_url=server.url)
        assert server.requests == 4  # nothing fetched again
        # a file whose content differs from the published checksum is refused and not kept
        monkeypatch.setattr(fm, "FILES", {**fm.FILES, ("test", "labels"): ("t10k-labels-idx1-ubyte", "0" * 64)})
        with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte.gz.* corrupt"):
            download_fashion_mnist(tmp_path / "other", base_url=server.url)
        assert not list((tmp_path / "other").glob("t10k-labels*"))
    finally:
        server.close()


def test_download_cut_short_is_an_error(tmp_path, monkeypatch):
    served = tmp_path / "served"
    monkeypatch.setattr(fm, "FILES", write_fashion(served))
    server = _Server(served, truncate=True)
    try:
        with pytest.raises(DataFileError, match=r"cut short|cannot download"):
            download_fashion_mnist(tmp_path / "cache", base_url=server.url)
        assert not list((tmp_path / "cache").glob("*.gz"))
    finally:
        server.close()


def write_cifar(directory: Path, n=3) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (n, 3073)).astype(np.uint8)
        records[:, 0] = rng.integers(0, 10, n)
        records.tofile(directory / name)


def test_cifar10_binary(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-bin")
    images, labels = load_cifar10(tmp_path, "train")
    assert images.shape == (15, 3, 32, 32) and labels.max() <= 9
    raw = np.fromfile(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", dtype=np.uint8).reshape(3, 3073)
    test_images, test_labels = load_cifar10(tmp_path, "test")
    assert test_labels.tolist() == raw[:, 0].tolist()
    np.testing.assert_array_equal(test_images[1, 2].numpy(), raw[1, 1 + 2048 :].reshape(32, 32))  # blue plane
    bad = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataFileError, match=r"data_batch_3.bin has .* not a whole number"):
        load_cifar10(tmp_path, "train")


def test_cifar10_through_load_image_data(tmp_path, monkeypatch):
    write_cifar(tmp_path / "cifar10")
    monkeypatch.setenv("GROUPNORM_DATA", str(tmp_path))
    data = load_image_data.__wrapped__("cifar10")
    assert data.in_channels == 3 and data.num_classes == 10 and data.augment == Augment(4, True)


def test_image_folder_loader(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    train = FolderLoader(tmp_path / "train", 2, train=True, size=32, workers=0)
    batches = list(train.epoch(0))
    assert len(batches) == len(train) == 3 and batches[0][0].shape == (2, 3, 32, 32)
    assert len(list(train.epoch(0, start=2))) == 1
    val = FolderLoader(tmp_path / "val", 4, train=False, size=32, workers=0)
    assert sum(len(y) for _, y in val.epoch(0)) == 6
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderLoader(tmp_path / "nope", 2, train=True)


def small_loader(**kw):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.arange(40)
    args = {"mean": [0.5], "std": [0.25], "train": True, "augment": Augment(2, True), "seed": 3} | kw
    return MemoryLoader(images, labels, args.pop("batch_size", 8), **args)


def test_memory_loader_is_a_pure_function_of_seed_epoch_and_step():
    loader = small_loader()
    full = list(loader.epoch(1))
    again = list(small_loader().epoch(1))
    tail = list(small_loader().epoch(1, start=3))
    assert len(full) == 5
    for (x1, y1), (x2, y2) in zip(full, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(full[3:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(full[0][1], next(loader.epoch(2))[1])  # a new order each epoch
    seen = torch.cat([y for _, y in full])
    assert len(set(seen.tolist())) == 40  # every image once per epoch


def test_memory_loader_shards_and_drops_partial_batches():
    shards = [torch.cat([y for _, y in small_loader(rank=r, world=3, batch_size=4).epoch(0)]) for r in range(3)]
    assert all(len(s) == 12 for s in shards)  # 40 // 3 = 13 per rank, 3 whole batches of 4
    assert len(set(torch.cat(shards).tolist())) == 36
    val = [torch.cat([y for _, y in small_loader(rank=r, world=3, train=False).epoch(0)]) for r in range(3)]
    assert sorted(torch.cat(val).tolist()) == list(range(40))  # evaluation sees every image once


def test_memory_loader_normalises_and_keeps_channels_last():
    loader = small_loader(train=False, channels_last=True)
    x, _ = next(loader.epoch(0))
    expected = (loader.images[:8].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    x4 = next(MemoryLoader(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.zeros(8), 4, mean=[0] * 3,
                           std=[1] * 3, train=False, channels_last=True).epoch(0))[0]  # fmt: skip
    assert x4.is_contiguous(memory_format=torch.channels_last)


def test_memory_loader_standardises_each_image_on_its_own():
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    images[0] = 7  # a constant image: zeros, not NaN
    loader = MemoryLoader(images, torch.zeros(6), 6, mean=[0.5] * 3, std=[0.25] * 3, train=False, per_image=True)
    x = next(loader.epoch(0))[0].double()
    assert torch.equal(x[0], torch.zeros_like(x[0]))
    flat = x[1:].flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(5, dtype=torch.float64), atol=1e-5, rtol=0)


def test_input_norm_is_checked_and_in_the_run_id_only_when_set():
    from groupnorm.train import TrainConfig

    with pytest.raises(ValueError, match="input_norm must be 'dataset' or 'per-image'; got 'image'"):
        TrainConfig(input_norm="image")
    assert TrainConfig(input_norm="dataset").id == TrainConfig().id != TrainConfig(input_norm="per-image").id


def test_augment_crops_and_flips_each_image_on_its_own():
    images = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    out = augment_batch(images, Augment(pad=1, flip=False), torch.Generator().manual_seed(0))
    for i in range(2):
        padded = torch.nn.functional.pad(images[i], (1, 1, 1, 1))
        crops = [padded[:, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], c) for c in crops)
    flips = augment_batch(images.repeat(16, 1, 1, 1), Augment(flip=True), torch.Generator().manual_seed(1))
    flipped = [torch.equal(f, images[i % 2].flip(-1)) for i, f in enumerate(flips)]
    same = [torch.equal(f, images[i % 2]) for i, f in enumerate(flips)]
    assert all(a or b for a, b in zip(flipped, same, strict=True)) and any(flipped) and any(same)


def test_cifar10_torchvision_python_layout(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks each file's MD5 against the real release; these are made-up files
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8), "labels": [1, 7]}
        (directory / name).write_bytes(pickle.dumps(batches[name]))
    (directory / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    monkeypatch.setenv("GROUPNORM_DATA", str(tmp_path))
    assert find_cifar10() == directory
    images, labels = load_cifar10(tmp_path, "test")
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == [1, 7]
    np.testing.assert_array_equal(images.reshape(2, -1).numpy(), batches["test_batch"]["data"])
    assert load_cifar10(directory, "train")[0].shape == (10, 3, 32, 32)


def test_groupnorm_data_without_the_files_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("GROUPNORM_DATA", str(empty))
    with pytest.warns(UserWarning, match=r"GROUPNORM_DATA=.*empty has no CIFAR-10"):
        assert find_cifar10() is None
    write_fashion(tmp_path / "cache" / "data" / "fashion-mnist")
    monkeypatch.setenv("GROUPNORM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.warns(UserWarning, match=r"GROUPNORM_DATA=.*empty has no Fashion-MNIST \(missing train-images"):
        assert find_fashion_mnist() == tmp_path / "cache" / "data" / "fashion-mnist"
