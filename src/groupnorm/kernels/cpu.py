"""The CPU kernels: cpu.cpp, built at first use with the system C++ compiler, called through ctypes.

The library is compiled for the CPU it runs on (``-O3 -march=native -fopenmp``, about 5 s) into
``groupnorm.io.cache_dir() / "kernels"``, under a name that hashes the source, the compiler, the
flags and this CPU's model and feature flags, so a cache shared by AVX2 and AVX-512 machines holds
one build for each and every machine loads its own: the dispatch on the CPU's features happens when
the library is loaded, not when the package is installed. The build prints one line to stderr. It
includes no torch header, so it needs only a C++ compiler (``$CXX``, else ``c++``/``g++``), and it
links libgomp by soname, so its OpenMP threads are the ones torch already runs.

``GROUPNORM_CPU_ARCH`` (default ``native``) builds for another ``-march``, e.g. ``x86-64-v3`` (AVX2)
on an AVX-512 machine, to test and measure that code path (``GROUPNORM_CPU_ARCH=x86-64-v3
ATEN_CPU_CAPABILITY=avx2 python benchmarks/kernels.py``: torch's own kernels on AVX2 too). Set
``GROUPNORM_CPU_KERNELS=0`` to turn the kernels off (torch's native GroupNorm is then used, as when
the build fails; a failure is reported once, as a warning).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from groupnorm.io import cache_dir
from groupnorm.kernels._common import memory_format_of

__all__ = ["available", "backward", "build_info", "compiler", "forward", "load", "supports"]

ABI_VERSION = 3
SOURCE = Path(__file__).with_name("cpu.cpp")
ACTS = {"identity": 0, "relu": 1, "silu": 2}
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
# Samples are processed in waves of at most this many bytes of input per thread, so that the
# output pass finds them still in the L2 cache (2 MB per core where this was measured).
WAVE_BYTES_PER_THREAD = 1 << 20
MODES = {"auto": 0, "tasks": 1, "split": 2}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_info: dict[str, object] = {}


def compiler() -> str | None:
    """The C++ compiler the kernels (and torch.compile's inductor) build with: ``$CXX``, else c++/g++/clang++."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def target_arch() -> str:
    """The -march the library is built for: this CPU's (``native``), or ``GROUPNORM_CPU_ARCH`` (e.g.
    ``x86-64-v3``, AVX2 without AVX-512), so an AVX-512 machine can build and measure the AVX2 code too."""
    arch = os.environ.get("GROUPNORM_CPU_ARCH", "native").strip() or "native"
    if not all(ch.isalnum() or ch in "-_." for ch in arch):
        raise ValueError(f"GROUPNORM_CPU_ARCH must be a -march name such as native or x86-64-v3; got {arch!r}")
    return arch


def _flags() -> list[str]:
    flags = ["-std=c++17", "-O3", f"-march={target_arch()}", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")  # no effect without AVX-512
    return [*flags, "-fPIC", "-shared"]


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags, where Linux tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))


def _library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), version.encode(), " ".join(_flags()).encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / "kernels" / f"groupnorm_cpu-{platform.machine()}-{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> float:
    """Compile cpu.cpp into target (atomically: concurrent builders are safe); return seconds taken."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [compiler, *_flags(), str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
        return time.perf_counter() - t0
    finally:
        Path(tmp).unlink(missing_ok=True)


def _bind(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.gn_abi_version.restype = i32
    lib.gn_abi_version.argtypes = []
    lib.gn_vector_bits.restype = i32
    lib.gn_vector_bits.argtypes = []
    lib.gn_forward.restype = i32
    lib.gn_forward.argtypes = [i32, i32, i32, p, p, p, i64, i64, i64, i64, f64, p, p, p, i32, i32, i64]
    lib.gn_backward.restype = i32
    lib.gn_backward.argtypes = [i32, i32, i32, p, p, p, p, p, p, i64, i64, i64, i64, p, p, p, i32, i32, i64]


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first call; None (with one warning) where it cannot be had."""
    global _lib, _error
    if _lib is not None or _error is not None:
        return _lib
    with _lock:
        if _lib is not None or _error is not None:
            return _lib
        try:
            _lib = _load()
        except Exception as e:  # any failure means: use torch's kernels instead
            _error = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"groupnorm: the fast CPU GroupNorm kernels are unavailable ({_error}); "
                "falling back to torch's native kernels (said once)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _lib


def _load() -> ctypes.CDLL:
    if os.environ.get("GROUPNORM_CPU_KERNELS", "1") == "0":
        raise RuntimeError("turned off by GROUPNORM_CPU_KERNELS=0")
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    path = _library_path(cxx)
    built = 0.0
    if not path.exists():
        print(f"groupnorm: building the CPU GroupNorm kernels (first use, about 5 s) into {path}", file=sys.stderr)
        built = _build(cxx, path)
    lib = ctypes.CDLL(str(path))
    _bind(lib)
    if lib.gn_abi_version() != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {lib.gn_abi_version()}, expected {ABI_VERSION}")
    _info.update(
        path=str(path), compiler=cxx, build_seconds=built, arch=target_arch(), vector_bits=lib.gn_vector_bits()
    )
    return lib


def available() -> bool:
    """True when the kernels are built (or can be) and loaded."""
    return load() is not None


def build_info() -> dict[str, object]:
    """Where the library is, which compiler built it for which -march (``arch``) and widest vectors
    (``vector_bits``: 512 with AVX-512, 256 with AVX2, 128 otherwise), and this process's build seconds."""
    load()
    return dict(_info) if _lib is not None else {"error": _error}


def supports(x: Tensor) -> bool:
    """Whether the CPU kernels take x (dtype and device); the library itself may still be missing."""
    return x.device.type == "cpu" and x.dtype in DTYPES and x.dim() >= 2


def _sizes(x: Tensor) -> tuple[int, int, int]:
    """(N, C, S) of a non-empty x of shape (N, C, *), S the product of the trailing dims."""
    shape = x.shape
    n, c = shape[0], shape[1]
    return n, c, x.numel() // (n * c)


def _layout(x: Tensor) -> tuple[Tensor, int, torch.memory_format]:
    """x in the layout the kernels read, with its code (0: N,C,S; 1: N,S,C) and memory format."""
    fmt = memory_format_of(x)
    code = 0 if fmt is torch.contiguous_format else 1
    return (x if x.is_contiguous(memory_format=fmt) else x.contiguous(memory_format=fmt)), code, fmt


def _float32(t: Tensor) -> Tensor:
    """t as a contiguous float32 tensor whose data the kernels read (t itself when it is one already: a call
    on small maps is mostly this kind of overhead)."""
    if t.dtype is torch.float32 and t.is_contiguous():
        return t
    return t.detach().to(torch.float32).contiguous()


def _params(weight: Tensor | None, bias: Tensor | None, c: int) -> tuple[Tensor, Tensor]:
    # float32 whatever torch's default dtype: the kernels read these as float32
    w = torch.ones(c, dtype=torch.float32) if weight is None else _float32(weight)
    b = torch.zeros(c, dtype=torch.float32) if bias is None else _float32(bias)
    return w, b


def _tuning(mode: str) -> tuple[int, int, int]:
    """(threads, mode code, wave bytes) for a call, with torch's number of threads."""
    if mode not in MODES:
        raise ValueError(f"groupnorm CPU kernels: mode must be one of {sorted(MODES)}; got {mode!r}")
    threads = max(1, torch.get_num_threads())
    return threads, MODES[mode], threads * WAVE_BYTES_PER_THREAD


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float,
    act: str,
    mode: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """y = act(GN(x)), and the per-(sample, group) mean and 1/std, (N, G) float32.

    x: (N, C, *) float32 or bfloat16 on the CPU, checked by the caller; y keeps its memory format.
    ``mode`` (NCHW; channels-last inputs have one plan): ``"tasks"`` (a thread per group),
    ``"split"`` (groups split over threads) or ``"auto"`` (tasks when there are at least two per
    thread); for tests and tuning.
    """
    lib = _lib or load()
    if lib is None:
        raise RuntimeError(f"groupnorm CPU kernels unavailable: {_error}")
    n, c, s = _sizes(x)
    xc, layout, fmt = _layout(x)
    y = torch.empty_like(xc, memory_format=fmt)
    mean = torch.empty((n, num_groups), dtype=torch.float32)
    rstd = torch.empty((n, num_groups), dtype=torch.float32)
    w, b = _params(weight, bias, c)
    threads, code, wave = _tuning(mode)
    rc = lib.gn_forward(
        DTYPES[x.dtype], layout, ACTS[act], xc.data_ptr(), w.data_ptr(), b.data_ptr(), n, c, s, num_groups,
        float(eps), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), threads, code, wave,
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"groupnorm CPU forward kernel failed with code {rc} for x of shape {tuple(x.shape)}")
    return y, mean, rstd


def backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    act: str,
    mode: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dx, dweight, dbias) of act(GN(x)) from x and the saved mean and rstd alone.

    dweight and dbias are float32 of shape (C,), computed whether or not there is a weight.
    """
    lib = _lib or load()
    if lib is None:
        raise RuntimeError(f"groupnorm CPU kernels unavailable: {_error}")
    n, c, s = _sizes(x)
    xc, layout, fmt = _layout(x)
    dyc = (
        dy
        if dy.dtype is x.dtype and dy.is_contiguous(memory_format=fmt)
        else dy.to(x.dtype).contiguous(memory_format=fmt)
    )
    dx = torch.empty_like(xc, memory_format=fmt)
    dw = torch.empty(c, dtype=torch.float32)
    db = torch.empty(c, dtype=torch.float32)
    w, b = _params(weight, bias, c)
    mean, rstd = _float32(mean), _float32(rstd)
    threads, code, wave = _tuning(mode)
    rc = lib.gn_backward(
        DTYPES[x.dtype], layout, ACTS[act], dyc.data_ptr(), xc.data_ptr(), w.data_ptr(), b.data_ptr(),
        mean.data_ptr(), rstd.data_ptr(), n, c, s, num_groups, dx.data_ptr(), dw.data_ptr(), db.data_ptr(),
        threads, code, wave,
    )  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"groupnorm CPU backward kernel failed with code {rc} for x of shape {tuple(x.shape)}")
    return dx, dw, db
