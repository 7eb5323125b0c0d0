"""BatchNorm(sync=True) over 2 gloo processes equals BN over the whole batch in one process."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from groupnorm import nn as gnn

pytestmark = pytest.mark.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x, dy, sync, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = gnn.BatchNorm(x.shape[1], sync=sync)
    xr = x.chunk(world)[rank].clone().requires_grad_()
    y = bn(xr)
    y.backward(dy.chunk(world)[rank])
    out[rank] = {
        "y": y.detach(), "gx": xr.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
        "rm": bn.running_mean.clone(), "rv": bn.running_var.clone(),
    }  # fmt: skip
    dist.destroy_process_group()


def run(world, x, dy, sync):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(world, _free_port(), x, dy, sync, out), nprocs=world, join=True)
    return [out[r] for r in range(world)]


def test_sync_bn_equals_whole_batch_bn():
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    dy = torch.randn(8, 3, 4, 4)
    parts = run(2, x, dy, sync=True)
    ref = gnn.BatchNorm(3)
    xr = x.clone().requires_grad_()
    y = ref(xr)
    y.backward(dy)
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach())
    torch.testing.assert_close(torch.cat([p["gx"] for p in parts]), xr.grad)
    # weight/bias grads are local (DDP sums them across processes)
    torch.testing.assert_close(parts[0]["gw"] + parts[1]["gw"], ref.weight.grad)
    torch.testing.assert_close(parts[0]["gb"] + parts[1]["gb"], ref.bias.grad)
    for p in parts:
        torch.testing.assert_close(p["rm"], ref.running_mean)
        torch.testing.assert_close(p["rv"], ref.running_var)

    unsynced = run(2, x, dy, sync=False)
    assert not torch.allclose(torch.cat([p["y"] for p in unsynced]), y.detach(), atol=1e-3)
