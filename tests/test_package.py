"""The package: a wheel with the library, its C++ source and the console script; imports without extras."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_the_library_and_the_console_script(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    tree = tmp_path / "tree"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(tree)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("groupnorm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"groupnorm/kernels/cpu.cpp", "groupnorm/kernels/cpu_op.cpp", "groupnorm/nn/act.py"} <= set(names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [ln for ln in zipfile.ZipFile(wheel).read(meta).decode().splitlines() if ln.startswith("Requires-Dist")]
    base = [r for r in requires if "extra ==" not in r]
    assert any("torch<2.15,>=2.14" in r for r in base), base
    assert not any(pkg in r for r in base for pkg in ("matplotlib", "tqdm", "numba")), base
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "groupnorm = groupnorm.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

    # pip install of the wheel (dependencies from this environment): the library and the command
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    cli = subprocess.run(
        [sys.executable, str(target / "bin" / "groupnorm"), "--help"], capture_output=True, text=True, env=env
    )
    assert cli.returncode == 0 and "reproduce" in cli.stdout, cli.stderr[-2000:]


def test_library_imports_without_the_reproduction_extras():
    code = (
        "import sys\n"
        "for m in ('matplotlib', 'tqdm', 'numba', 'onnx', 'diffusers', 'timm'): sys.modules[m] = None\n"
        "import torch, groupnorm, groupnorm.cli, groupnorm.experiments, groupnorm.report, groupnorm.data\n"
        "m = groupnorm.nn.GroupNormAct(2, 4, act='gelu')\n"
        "assert m(torch.randn(1, 4, 3, 3)).shape == (1, 4, 3, 3)\n"
        "print('ok')\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
