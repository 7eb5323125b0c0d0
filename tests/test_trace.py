"""torch.compile (fullgraph), torch.export (dynamic batch) and torch.func on models from every norm spec."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from groupnorm import functional as F
from groupnorm import nn as gnn
from groupnorm.models import build_model

SPECS = ["bn", "bn:frozen", "gn:4", "gn/4", "ln", "in", "none", "ws+gn:4", "gn:4+silu", "in+relu"]
CASES = [(s, torch.contiguous_format) for s in SPECS] + [
    (s, torch.channels_last) for s in ("bn", "gn:4", "ws+gn:4", "gn:4+silu")
]

IDS = [f"{s}-{'nchw' if f is torch.contiguous_format else 'cl'}" for s, f in CASES]


def _model(spec: str, fmt: torch.memory_format) -> torch.nn.Module:
    torch.manual_seed(0)
    # devices=2: BN takes the per-device path; zero_init_last off so every norm matters
    model = build_model("resnet", norm=spec, num_classes=10, depth=8, width=8, devices=2, zero_init_last=False)
    return model.to(memory_format=fmt)


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "fmt"), CASES, ids=IDS)
def test_compile_export_and_func_have_no_graph_break(spec, fmt):
    torch._dynamo.reset()
    model = _model(spec, fmt)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=fmt)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    # torch.compile, fullgraph (a graph break raises): training forward + backward, then eval
    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y_compiled = compiled(x)
    y_compiled.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.load_state_dict(state)
    model.zero_grad()
    y_eager = model(x)
    y_eager.square().mean().backward()
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-4, atol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    model.eval()
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert backend.frame_count <= 2  # at most one graph for training, one for eval (fullgraph: no breaks)

    # torch.export with a dynamic batch, run at another batch size
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    x3 = torch.randn(3, 3, 16, 16).contiguous(memory_format=fmt)
    torch.testing.assert_close(ep.module()(x3), model(x3), rtol=1e-4, atol=1e-4)

    # torch.func: grad (training mode, except BN, whose running-statistics update torch.func
    # rejects in training for torch's own BN as well) and per-sample vmap
    if not spec.startswith("bn"):
        model.train()
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())

    def loss(p, inp):
        return torch.func.functional_call(model, (p, buffers), (inp,)).square().mean()

    g = torch.func.grad(loss)(params, x)
    model.zero_grad()
    loss(params, x).backward()
    for n, p in params.items():
        torch.testing.assert_close(g[n], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
    model.eval()
    per_sample = torch.func.vmap(lambda xi: torch.func.functional_call(model, (params, buffers), (xi[None],))[0])(x)
    torch.testing.assert_close(per_sample, model(x), rtol=1e-4, atol=1e-4)


def test_compile_in_a_fresh_process_loads_the_kernels_outside_the_graph(tmp_path):
    # No eager forward first: the CPU kernels must not be loaded (built, locked) inside traced code.
    code = textwrap.dedent(
        """
        import torch
        from groupnorm import nn as gnn
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), gnn.GroupNorm(4, 8), gnn.GroupNormAct(2, 8))
        m = m.to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
        y = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
        y.sum().backward()
        torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-5)
        print("ok")
        """
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------
# empty batches and half precision


@pytest.mark.parametrize("make", [lambda: gnn.GroupNorm(2, 4), lambda: gnn.GroupNormAct(2, 4, act="gelu")])
def test_empty_batch_keeps_autograd_like_torch(make):
    for fmt in (torch.contiguous_format, torch.channels_last):
        ours, theirs = make(), torch.nn.GroupNorm(2, 4)
        x = torch.randn(0, 4, 3, 3).contiguous(memory_format=fmt).requires_grad_()
        y = ours(x)
        assert y.shape == x.shape and y.requires_grad
        y.sum().backward()
        theirs(x.detach().requires_grad_()).sum().backward()
        assert x.grad.shape == x.shape
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad)  # zeros, as torch
        torch.testing.assert_close(ours.bias.grad, torch.zeros(4))


def test_empty_batch_in_batch_norm_keeps_autograd():
    bn = gnn.BatchNorm(4, devices=2)
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    bn(x).sum().backward()
    assert x.grad.shape == x.shape and torch.equal(bn.weight.grad, torch.zeros(4))
    assert torch.equal(bn.running_mean, torch.zeros(4))  # no statistics from no values


def test_half_precision_fused_layer_falls_back_silently_and_correctly(recwarn):
    m = gnn.GroupNormAct(4, 16, act="silu").half()
    with torch.no_grad():
        m.weight.normal_()
    x = torch.randn(2, 16, 5, 5).half().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = m(x)
    y.float().square().sum().backward()
    ref = torch.nn.Sequential(torch.nn.GroupNorm(4, 16), torch.nn.SiLU()).double()
    ref[0].load_state_dict(m.state_dict())
    xd = x.detach().double().requires_grad_()
    yd = ref(xd)
    yd.square().sum().backward()
    assert y.dtype == torch.float16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), yd, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=2e-2, atol=2e-2)
    assert not [w for w in recwarn if "groupnorm" in str(w.message)]


def test_traced_group_norm_is_accurate_for_large_means():
    # the traced path must keep the eager path's accuracy where E[x^2] - E[x]^2 would cancel
    x = (1e4 + torch.randn(2, 8, 6, 6, dtype=torch.float64)).float()
    want = torch.nn.functional.group_norm(x.double(), 4).float()
    got = torch.compile(lambda t: F.group_norm(t, 4), backend="aot_eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
