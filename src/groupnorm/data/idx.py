"""The IDX file format of (Fashion-)MNIST: a magic number, the dims, then raw bytes."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

__all__ = ["DataFileError", "read_idx", "read_idx_bytes"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataFileError(ValueError):
    """A data file that is missing, truncated, corrupt or not what it claims to be."""


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed bytes of an IDX file (``.gz`` or raw); errors name the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataFileError(f"cannot read data file {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataFileError(f"data file {path} is not a valid gzip file (truncated or corrupt): {e}") from None
    return raw


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read an IDX file into an array of the shape its header declares.

    A header that does not match the file's size (a truncated or padded file), an unknown
    magic number, or a ``sha256`` (of the decompressed bytes) that does not match, each
    raises DataFileError naming the file.
    """
    raw = read_idx_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataFileError(f"data file {path} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"data file {path} is truncated: its header needs {header} bytes, it has {len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFileError(
            f"data file {path} has {len(raw)} bytes after decompression; "
            f"its header ({shape}) needs {expected} "
            f"({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise DataFileError(f"data file {path} is corrupt: its sha256 does not match the published file's")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
