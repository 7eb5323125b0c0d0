"""The CPU kernels: cpu.cpp, built at first use with the system C++ compiler, called as torch operators.

cpu_op.cpp wraps the kernels of cpu.cpp as operators registered with torch (``forward``,
``backward``): one call through torch's dispatcher, the outputs allocated in C++. The library is
compiled for the CPU it runs on (``-O3 -march=native -fopenmp``, with torch's headers: about 20-40 s)
into ``groupnorm.io.cache_dir() / "kernels"``, under a name that hashes the sources, the compiler,
the flags, torch's version and this CPU's model and feature flags, so a cache shared by AVX2 and
AVX-512 machines holds one build for each and every machine loads its own: the dispatch on the CPU's
features happens when the library is loaded, not when the package is installed. The build prints
one line to stderr. It needs a C++ compiler (``$CXX``, else ``c++``/``g++``) and the headers that
come with torch, and it links libgomp by soname, so its OpenMP threads are the ones torch already
runs.

``GROUPNORM_CPU_ARCH`` (default ``native``) builds for another ``-march``, e.g. ``x86-64-v3`` (AVX2)
on an AVX-512 machine, to test and measure that code path (``GROUPNORM_CPU_ARCH=x86-64-v3
ATEN_CPU_CAPABILITY=avx2 python benchmarks/kernels.py``: torch's own kernels on AVX2 too). Set
``GROUPNORM_CPU_KERNELS=0`` to turn the kernels off (torch's native GroupNorm is then used, as when
the build fails; a failure is reported once, as a warning).
"""

from __future__ import annotations

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
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from groupnorm.io import cache_dir

__all__ = ["available", "backward", "build_info", "compiler", "forward", "group_norm_act", "load", "supports"]

ABI_VERSION = 5
SOURCE = Path(__file__).with_name("cpu_op.cpp")  # the operators; they include the kernels:
KERNELS = Path(__file__).with_name("cpu.cpp")
ACTS = {"identity": 0, "relu": 1, "silu": 2}
DTYPES = {torch.float32: 0, torch.bfloat16: 1}
# Samples are processed in waves of at most this many bytes of input per thread, so that the
# output pass finds them still in the L2 cache (2 MB per core where this was measured).
WAVE_BYTES_PER_THREAD = 1 << 20
MODES = {"auto": 0, "tasks": 1, "split": 2}

_lock = threading.Lock()
_lib: _Ops | None = None
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
    """The compiler flags that decide the machine code (hashed into the library's name)."""
    flags = ["-std=c++20", "-O3", f"-march={target_arch()}", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")  # no effect without AVX-512
    return [*flags, "-fPIC", "-shared"]


def _torch_flags() -> list[str]:
    """Where torch's headers and libraries are, and its C++ ABI."""
    root = Path(torch.__file__).parent  # torch.utils.cpp_extension says the same, with a warning on a CPU-only machine
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return [abi, f"-isystem{root / 'include'}", f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu"]


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags, where Linux tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))


def _build_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256()
    parts = (SOURCE.read_bytes(), KERNELS.read_bytes(), version, " ".join(_flags()), torch.__version__)
    for part in (*parts, _cpu_signature()):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return key.hexdigest()[:16]


def _library_path(key: str) -> Path:
    return cache_dir() / "kernels" / f"groupnorm_cpu-{platform.machine()}-{key}.so"


def _namespace(key: str) -> str:
    """The operators' namespace: one per build, so that two builds can be loaded in one process."""
    return f"groupnorm_cpu_{key}"


def _build(compiler: str, target: Path, namespace: str) -> float:
    """Compile cpu_op.cpp into target (atomically: concurrent builders are safe); return seconds taken."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        t0 = time.perf_counter()
        command = [compiler, *_flags(), f"-DGN_NAMESPACE={namespace}", str(SOURCE), "-o", tmp, *_torch_flags()]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
        return time.perf_counter() - t0
    finally:
        Path(tmp).unlink(missing_ok=True)


def _has_ops(ops: object) -> bool:
    try:
        ops.info  # noqa: B018 (looks the operator up)
    except (AttributeError, RuntimeError):
        return False
    return True


class _Ops(NamedTuple):
    """The loaded operators (their default overloads: the shortest path through the dispatcher)."""

    forward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., tuple[Tensor, Tensor, Tensor]]
    group_norm_act: Callable[..., tuple[Tensor, Tensor, Tensor]]  # forward + autograd formula


def load() -> _Ops | None:
    """The kernels' operators, built on first call; None (with one warning) where they cannot be had."""
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


def _load() -> _Ops:
    if os.environ.get("GROUPNORM_CPU_KERNELS", "1") == "0":
        raise RuntimeError("turned off by GROUPNORM_CPU_KERNELS=0")
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    key = _build_key(cxx)
    path, namespace = _library_path(key), _namespace(key)
    built = 0.0
    if not path.exists():
        print(f"groupnorm: building the CPU GroupNorm kernels (first use, about 30 s) into {path}", file=sys.stderr)
        built = _build(cxx, path, namespace)
    ops = getattr(torch.ops, namespace)
    if not _has_ops(ops):  # the same build may be loaded already (from another cache: the same code)
        torch.ops.load_library(str(path))
    abi, bits = ops.info()
    if abi != ABI_VERSION:
        raise RuntimeError(f"{path} has ABI {abi}, expected {ABI_VERSION}")
    _info.update(path=str(path), compiler=cxx, build_seconds=built, arch=target_arch(), vector_bits=bits)
    return _Ops(ops.forward.default, ops.backward.default, ops.group_norm_act.default)


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


def _mode(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"groupnorm CPU kernels: mode must be one of {sorted(MODES)}; got {mode!r}")
    return MODES[mode]


def _ops() -> _Ops:
    ops = _lib or load()
    if ops is None:
        raise RuntimeError(f"groupnorm CPU kernels unavailable: {_error}")
    return ops


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

    x: (N, C, *) float32 or bfloat16 on the CPU, checked by the caller; y keeps its memory format
    (contiguous, channels-last or channels-last-3d; any other layout is made contiguous).
    ``mode`` (NCHW; channels-last inputs have one plan): ``"tasks"`` (a thread per group),
    ``"split"`` (groups split over threads) or ``"auto"`` (tasks when there are at least two per
    thread); for tests and tuning. Threads: torch's (``torch.get_num_threads()``).
    """
    code = _mode(mode)
    return _ops().forward(x, weight, bias, num_groups, float(eps), ACTS[act], code, WAVE_BYTES_PER_THREAD)


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

    dx has x's memory format; dweight and dbias are float32 of shape (C,), computed whether or not
    there is a weight.
    """
    code = _mode(mode)
    ops = _ops()
    return ops.backward(dy, x, weight, bias, mean, rstd, num_groups, ACTS[act], code, WAVE_BYTES_PER_THREAD)


def group_norm_act(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`forward` with its autograd formula in C++ (the backward of :func:`backward`; with
    ``create_graph=True``, torch's differentiable operators): what eager calls run. It records the same
    graph node as groupnorm.kernels.ops's autograd.Function, for 20-50 us less per call on small maps."""
    ops = _lib or _ops()
    return ops.group_norm_act(x, weight, bias, num_groups, float(eps), ACTS[act], 0, WAVE_BYTES_PER_THREAD)
