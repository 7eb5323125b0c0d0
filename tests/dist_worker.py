"""Run by tests/test_distributed.py under torchrun: the DDP gradients of one step on a fixed global batch."""

import sys

import torch
import torch.nn.functional as F
from torch import nn

from groupnorm import set_renorm_limits
from groupnorm.models import build_model
from groupnorm.train import distributed


def main(norm: str, out: str) -> None:
    ctx = distributed.setup("cpu")
    torch.manual_seed(0)
    model = build_model("resnet", norm=norm, depth=8, width=8, num_classes=5, in_channels=1, zero_init_last=False)
    set_renorm_limits(model, 1, 2)  # Batch Renorm past its ramp (r_max=3, d_max=5); no-op for other norms
    ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 10, 10, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    shard = slice(ctx.rank * 8 // ctx.world, (ctx.rank + 1) * 8 // ctx.world)
    F.cross_entropy(ddp(x[shard]), y[shard]).backward()
    if ctx.is_main:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
