"""torchrun with 2 gloo processes on the CPU: DDP gradients against one process on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from groupnorm import set_renorm_limits
from groupnorm.models import build_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
HERE = Path(__file__).resolve().parent
SRC = str(HERE.parent / "src")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}:{HERE}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def one_process_grads(norm: str, devices: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet", norm=norm, depth=8, width=8, num_classes=5, in_channels=1, devices=devices,
                        zero_init_last=False)  # fmt: skip
    set_renorm_limits(model, 1, 2)  # as dist_worker.py
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 10, 10, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def close(a: dict, b: dict) -> bool:
    return all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


@pytest.mark.parametrize("norm", ["gn:4", "bn", "bn:sync", "brn"])
def test_ddp_gradients(tmp_path, norm):
    out = tmp_path / "grads.pt"
    torchrun(str(HERE / "dist_worker.py"), norm, str(out))
    two = torch.load(out, weights_only=True)
    whole = one_process_grads(norm, devices=1)
    if norm in ("bn", "brn"):
        # per-process statistics: not the whole batch's, but exactly 2 virtual devices' on one process
        assert not close(two, whole)
        assert close(two, one_process_grads(norm, devices=2))
    else:  # GN never looks across samples; SyncBN takes the whole batch's statistics
        assert close(two, whole)


def test_torchrun_trains_and_records_on_rank_0(tmp_path):
    settings = ["train_images=128", "val_images=64", "epochs=1", "images_per_device=4", "devices=2", "width=8",
                "norm=bn"]  # fmt: skip
    args = ["-m", "groupnorm", "train", "--runs", str(tmp_path)]
    for s in settings:
        args += ["--set", s]
    torchrun(*args)
    results = list(tmp_path.glob("train/*/result.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert result["processes"] == 2 and result["devices"] == 2 and result["effective_batch"] == 8
