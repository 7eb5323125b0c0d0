"""groupnorm.kernels (CPU), the ops around them, group_norm_act, GroupNormAct and +act specs.

Every kernel result is checked against groupnorm.reference (float64 loops straight from the
paper); gradients against autograd through the reference.
"""

import math
import platform
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

from groupnorm import functional as F
from groupnorm import kernels
from groupnorm import nn as gnn
from groupnorm import reference as R
from groupnorm.kernels import cpu

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
ACTS = ("identity", "relu", "silu")
# (shape, groups): C/G not a power of two, H*W = 1, H*W not a multiple of any block size,
# 1-D and 3-D spatial dims, runs over a chunk, a single group (LayerNorm) and single-channel groups (InstanceNorm)
CASES = [
    ((2, 6, 5, 7), 3),
    ((3, 10, 3, 3), 5),
    ((2, 12, 1, 1), 4),
    ((1, 6, 2, 3, 4), 2),
    ((2, 8, 37), 1),
    ((2, 5, 4, 3), 5),
    ((2, 40, 9, 11), 8),
    ((1, 4, 4100), 2),  # a channel's run longer than one float32 chunk (4096), with a partial vector after it
    ((2, 72, 5, 6), 8),  # channels-last rows wider than 4 vectors (streamed in memory order), a partial vector left
    ((1, 100, 3, 5), 4),  # the same with an odd number of rows (pairs of rows, then one)
]


def reference_act(x, groups, w, b, act):
    y = R.group_norm(x, groups, w, b)
    return {"identity": y, "relu": y.relu(), "silu": TF.silu(y)}[act]


def rel_err(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def layouts(shape):
    out = [torch.contiguous_format]
    if len(shape) == 4:
        out.append(torch.channels_last)
    if len(shape) == 5:
        out.append(torch.channels_last_3d)
    return out


def test_cpu_kernels_build_into_the_cache():
    # CI has a C++ compiler: a failed build here is a failure, not a skip
    assert cpu.available(), cpu.build_info()
    info = cpu.build_info()
    assert "groupnorm" in info["path"] and info["path"].endswith(".so")


@pytest.mark.parametrize("mode", ["tasks", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "groups"), CASES)
def test_cpu_kernels_match_reference(shape, groups, dtype, mode):
    c = shape[1]
    for fmt in layouts(shape):
        for act in ACTS:
            x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
            w, b = torch.randn(c), torch.randn(c)
            y, mean, rstd = cpu.forward(x, w, b, groups, 1e-5, act, mode=mode)
            assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
            assert mean.shape == rstd.shape == (shape[0], groups)
            assert rel_err(y, reference_act(x, groups, w, b, act)) < TOL[dtype], (fmt, act)
            xs = x.double().reshape(shape[0], groups, -1)
            torch.testing.assert_close(mean.double(), xs.mean(-1), rtol=1e-5, atol=1e-5)
            ref_rstd = torch.rsqrt(xs.var(-1, correction=0) + 1e-5)
            torch.testing.assert_close(rstd.double(), ref_rstd, rtol=1e-5, atol=0)


@pytest.mark.parametrize("mode", ["tasks", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("shape", "groups"), CASES)
def test_cpu_kernel_gradients_match_reference(shape, groups, dtype, mode):
    c = shape[1]
    for fmt in layouts(shape):
        for act in ACTS:
            x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
            w, b = torch.randn(c), torch.randn(c)
            dy = torch.randn(shape).to(dtype)
            _, mean, rstd = cpu.forward(x, w, b, groups, 1e-5, act, mode=mode)
            dx, dw, db = cpu.backward(dy, x, w, b, mean, rstd, groups, act, mode=mode)
            assert dx.stride() == x.stride() and dx.dtype == dtype and dw.shape == db.shape == (c,)
            xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
            reference_act(xd, groups, wd, bd, act).backward(dy.double())
            for got, want in ((dx, xd.grad), (dw, wd.grad), (db, bd.grad)):
                assert rel_err(got, want) < 5 * TOL[dtype], (fmt, act)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_kernels_large_mean_small_spread(fmt):
    # E[x^2] - E[x]^2 in float32 gives errors of order 100 here; torch's channels-last CPU kernel does
    x = (1e4 + torch.randn(2, 64, 8, 8)).contiguous(memory_format=fmt)
    w, b = torch.randn(64), torch.randn(64)
    for mode in ("tasks", "split"):
        y, mean, rstd = cpu.forward(x, w, b, 32, 1e-5, "silu", mode=mode)
        assert rel_err(y, reference_act(x, 32, w, b, "silu")) < 1e-5
        dy = torch.randn_like(x)
        dx, _, _ = cpu.backward(dy, x, w, b, mean, rstd, 32, "silu", mode=mode)
        xd = x.double().requires_grad_()
        reference_act(xd, 32, w.double(), b.double(), "silu").backward(dy.double())
        assert rel_err(dx, xd.grad) < 1e-3  # the float32 mean saved for backward limits this


def _adversarial(kind: str, dtype: torch.dtype, fmt) -> torch.Tensor:
    """Inputs that break naive float32 statistics; 40 x 40 positions: several pieces of rows per sample."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 40, 40, generator=g, dtype=torch.float64)
    if kind == "offset":  # offset 1e4, scale 300 (the case)
        x = 1e4 + 300 * x
    elif kind == "outlier-first":  # tiny spread around 1e4 and an outlier where the shift is taken
        x = 1e4 + x
        x[:, :, 0, 0] += 1000
    elif kind == "channel-means":  # the channels of a group far apart, each with a small spread
        x = x + 1e4 * torch.arange(32, dtype=torch.float64).view(1, 32, 1, 1)
    return x.to(dtype).contiguous(memory_format=fmt)


@pytest.mark.parametrize("kind", ["offset", "outlier-first", "channel-means"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_kernels_adversarial_inputs_within_1e3_of_float64(kind, dtype, fmt):
    x = _adversarial(kind, dtype, fmt)
    w, b = torch.randn(32), torch.randn(32)
    for mode in ("tasks", "split"):
        y, _, rstd = cpu.forward(x, w, b, 8, 1e-5, "silu", mode=mode)
        ref = reference_act(x.double(), 8, w.double(), b.double(), "silu")
        # bfloat16 output rounds to 8 bits; float32 to within 1e-3 of float64
        assert rel_err(y, ref) < (1e-2 if dtype == torch.bfloat16 else 1e-3), (kind, mode)
        # the statistics to float32 precision: where a one-pass shifted sum would lose bits to cancellation
        # (the outlier is the shift), the kernels sum again around the mean (1e-4 here without that)
        xs = x.double().reshape(2, 8, -1)
        torch.testing.assert_close(rstd.double(), torch.rsqrt(xs.var(-1, correction=0) + 1e-5), rtol=1e-5, atol=0)


def same_bits_for_every_thread_count(run, repeats: int = 1) -> tuple:
    """run() under 1, 2 and 3 threads (``repeats`` times each): the outputs must be bitwise equal; the first."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results += [run() for _ in range(repeats)]
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b_ in zip(results[0], other, strict=True):
            assert torch.equal(a, b_)
    return results[0]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cpu_kernels_are_deterministic_across_thread_counts(fmt):
    # in the tasks mode (enough groups for every thread count here) results are bitwise equal
    x = torch.randn(3, 48, 20, 20).contiguous(memory_format=fmt)
    w, b, dy = torch.randn(48), torch.randn(48), torch.randn_like(x)

    def run():
        y, mean, rstd = cpu.forward(x, w, b, 6, 1e-5, "silu", mode="tasks")
        return (y, *cpu.backward(dy, x, w, b, mean, rstd, 6, "silu", mode="tasks"))

    same_bits_for_every_thread_count(run, repeats=2)


def test_channels_last_wide_rows_split_into_pieces_alike_for_every_thread_count():
    """A sample of 1280-channel rows (SD-UNet's 16x16 stage) is cut into pieces by its shape alone, so two
    threads share a one-sample wave and every thread count gives the same bits; the result stays accurate."""
    x = (torch.randn(2, 1280, 16, 16) * 3 + 50).contiguous(memory_format=torch.channels_last)
    w, b, dy = torch.randn(1280), torch.randn(1280), torch.randn_like(x)

    def run():
        y, mean, rstd = cpu.forward(x, w, b, 32, 1e-5, "silu")
        return (y, mean, rstd, *cpu.backward(dy, x, w, b, mean, rstd, 32, "silu"))

    y = same_bits_for_every_thread_count(run)[0]
    assert rel_err(y, reference_act(x.double(), 32, w.double(), b.double(), "silu")) < 1e-4


def test_cpu_kernels_tiny_groups_no_worse_than_torch():
    # groups of 2 values: dx is tiny and ill-conditioned; ask for torch's own float32 accuracy
    x, w, b, dy = torch.randn(3, 8) * 2, torch.randn(8), torch.randn(8), torch.randn(3, 8)
    xd = x.double().requires_grad_()
    reference_act(xd, 4, w.double(), b.double(), "relu").backward(dy.double())
    xt = x.clone().requires_grad_()
    torch.relu(TF.group_norm(xt, 4, w, b)).backward(dy)
    _, mean, rstd = cpu.forward(x, w, b, 4, 1e-5, "relu")
    dx, _, _ = cpu.backward(dy, x, w, b, mean, rstd, 4, "relu")
    assert rel_err(dx, xd.grad) <= 2 * rel_err(xt.grad, xd.grad) + 1e-6


@pytest.mark.parametrize("mode", ["tasks", "split"])
@pytest.mark.parametrize(("shape", "groups"), [*CASES, ((4, 8, 28, 28), 2), ((3, 16, 7, 7), 4), ((2, 24, 6, 6), 3)])
def test_fused_relu_is_relu_of_the_identity_kernel_to_the_bit(shape, groups, mode):
    # The engine fuses GN with its ReLU and promises the unfused model's bits; the compiler's FMA contraction
    # once made the two instantiations round differently (an AVX2 build, 8 channels-last channels).
    torch.manual_seed(0)
    c = shape[1]
    w, b = torch.randn(c) * 0.5 + 1, torch.randn(c) * 0.1
    for fmt in layouts(shape):
        x = torch.randn(shape).contiguous(memory_format=fmt)
        g = torch.randn(shape).contiguous(memory_format=fmt)
        y, mean, rstd = cpu.forward(x, w, b, groups, 1e-5, "relu", mode=mode)
        z, mean_z, rstd_z = cpu.forward(x, w, b, groups, 1e-5, "identity", mode=mode)
        assert torch.equal(y, z.clamp_min(0)) and torch.equal(mean, mean_z) and torch.equal(rstd, rstd_z)
        fused = cpu.backward(g, x, w, b, mean, rstd, groups, "relu", mode=mode)
        plain = cpu.backward(g * (z > 0), x, w, b, mean, rstd, groups, "identity", mode=mode)
        for got, want in zip(fused, plain, strict=True):
            assert torch.equal(got, want), (fmt, (got - want).abs().max().item())


def test_nan_stays_in_its_group():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    x[0, 0, 1, 1] = float("nan")
    y = F.group_norm_act(x, 4, act="silu")
    assert torch.isnan(y[0, :2]).all()
    assert torch.isfinite(y[0, 2:]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_float64_default_dtype_without_affine(fmt):
    # The kernels read their parameters and statistics as float32: the defaults (no weight, no bias) and
    # the buffers must be float32 whatever torch's default dtype (it used to give errors of order 1).
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=fmt).requires_grad_()
    dy = torch.randn(2, 8, 9, 9)
    xd = x.detach().double().requires_grad_()
    ref = TF.silu(TF.group_norm(xd, 4))
    ref.backward(dy.double())
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        y = F.group_norm_act(x, 4, act="silu")
        y.backward(dy)
        plain = F.group_norm(x.detach(), 4)
    finally:
        torch.set_default_dtype(old)
    assert (y.double() - ref).abs().max() < 1e-5
    assert (x.grad.double() - xd.grad).abs().max() < 1e-4
    assert (plain.double() - TF.group_norm(xd.detach(), 4)).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------
# the ops


def test_opcheck_forward_and_backward_ops():
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 6, 3, 5).contiguous(memory_format=fmt).requires_grad_()
        w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
        torch.library.opcheck(torch.ops.groupnorm.group_norm_act.default, (x, w, b, 3, 1e-5, "silu"))
        torch.library.opcheck(torch.ops.groupnorm.group_norm_act.default, (x, None, None, 2, 1e-3, "relu"))
        y, mean, rstd = kernels.group_norm_act(x.detach(), w.detach(), b.detach(), 3, 1e-5, "silu")
        args = (torch.randn_like(y), x.detach(), w.detach(), b.detach(), mean, rstd, 3, "silu")
        torch.library.opcheck(torch.ops.groupnorm.group_norm_act_backward.default, args)


def test_backward_keeps_half_the_activation_memory():
    """Bytes saved for backward by a GN+SiLU block: ours keeps x, eager keeps x and GN(x)."""

    def saved_bytes(fn, x):
        storages = {}

        def pack(t):
            if t.numel() > 64:  # activations, not the (C,) parameters or (N, G) statistics
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(storages.values())

    ours, eager = gnn.GroupNormAct(8, 64), nn.Sequential(nn.GroupNorm(8, 64), nn.SiLU())
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 64, 16, 16).contiguous(memory_format=fmt).requires_grad_()
        ratio = saved_bytes(ours, x) / saved_bytes(eager, x)
        assert ratio <= 0.55, ratio


def test_double_backward_matches_torch():
    x = torch.randn(2, 6, 4, 4, dtype=torch.float32).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, requires_grad=True)
    (gx,) = torch.autograd.grad(F.group_norm_act(x, 3, w, act="silu").pow(2).sum(), x, create_graph=True)
    gx.sum().backward()
    x2, w2 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    (gx2,) = torch.autograd.grad(TF.silu(TF.group_norm(x2, 3, w2)).pow(2).sum(), x2, create_graph=True)
    gx2.sum().backward()
    torch.testing.assert_close(gx, gx2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("act", ACTS)
def test_the_cpp_autograd_formula_is_the_python_ones_to_the_bit(fmt, act):
    """Eager CPU calls record the library's C++ autograd node; its gradients are those of ops._GroupNormAct."""
    from groupnorm.kernels.ops import _GroupNormAct

    for dtype, pdtype, wanted in [
        (torch.float32, torch.float32, (True, True, True)),
        (torch.float32, torch.float32, (True, False, False)),
        (torch.float32, torch.float32, (False, True, True)),
        (torch.bfloat16, torch.float32, (True, True, False)),
        (torch.bfloat16, torch.bfloat16, (True, True, True)),
    ]:
        x = torch.randn(2, 12, 5, 6).to(dtype).contiguous(memory_format=fmt)
        w, b = torch.randn(12, dtype=pdtype), torch.randn(12, dtype=pdtype)
        for params in ((w, b), (w, None), (None, None)):
            pairs = zip((x, *params), wanted, strict=True)
            inputs = [None if t is None else t.clone().requires_grad_(need) for t, need in pairs]
            if not any(t is not None and t.requires_grad for t in inputs):
                continue
            twins = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
            y = kernels.group_norm_act(*inputs, 4, 1e-5, act)[0]
            assert y.grad_fn.name().startswith("torch::autograd::CppNode")  # the C++ node, not the Python one
            y2 = _GroupNormAct.apply(*twins, 4, 1e-5, act)[0]
            dy = torch.randn_like(y)
            y.backward(dy)
            y2.backward(dy)
            assert torch.equal(y, y2) and y.is_contiguous(memory_format=fmt)
            for t, t2 in zip(inputs, twins, strict=True):
                if t is not None and t.requires_grad:
                    assert t.grad.dtype == t.dtype and torch.equal(t.grad, t2.grad)
                elif t is not None:
                    assert t.grad is None


def test_double_backward_through_every_input_matches_torch():
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    twins = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    grads = torch.autograd.grad(F.group_norm_act(x, 3, w, b, act="relu").pow(2).sum(), (x, w, b), create_graph=True)
    sum(g.sum() for g in grads).backward()
    x2, w2, b2 = twins
    grads2 = torch.autograd.grad(TF.relu(TF.group_norm(x2, 3, w2, b2)).pow(2).sum(), twins, create_graph=True)
    sum(g.sum() for g in grads2).backward()
    for g, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-5)
    for t, t2 in zip((x, w, b), twins, strict=True):
        torch.testing.assert_close(t.grad, t2.grad, rtol=1e-3, atol=1e-4)


class _Block(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.norm1 = gnn.GroupNormAct(4, c, act="silu")
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.norm2 = gnn.GroupNormAct(4, c, act="relu")

    def forward(self, x):
        return x + self.norm2(self.conv2(self.norm1(self.conv1(x))))


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = _Block()
    compiled = torch.compile(model)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 8, 8).contiguous(memory_format=fmt)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = model(xe), compiled(xc)
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-5)
        ye.square().sum().backward()
        yc.square().sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)


def test_torch_export_writes_standard_ops_only():
    # exported programs must run where groupnorm's Python op does not exist (ONNX, AOTInductor, ExecuTorch)
    model = _Block().eval()
    x = torch.randn(2, 16, 8, 8)
    ep = torch.export.export(model, (x,))
    assert "groupnorm" not in str(ep.graph) and "group_norm" in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_keeps_the_fused_op():
    from torch._dynamo.testing import CompileCounterWithBackend

    backend = CompileCounterWithBackend("aot_eager")
    model = _Block()
    torch.compile(model, backend=backend, fullgraph=True)(torch.randn(2, 16, 8, 8)).sum().backward()
    assert backend.frame_count == 1
    assert any("groupnorm.group_norm_act" in str(g.graph) for g in backend.graphs)


# ---------------------------------------------------------------------------------------
# functional, fallbacks


def test_group_norm_act_equals_act_of_group_norm():
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 12, 5, 6).contiguous(memory_format=fmt)
        w, b = torch.randn(12), torch.randn(12)
        for act, fn in (("identity", lambda t: t), ("relu", torch.relu), ("silu", TF.silu)):
            y = F.group_norm_act(x, 4, w, b, act=act)
            assert y.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(y, fn(TF.group_norm(x, 4, w, b)), rtol=1e-5, atol=1e-5)


def test_group_norm_act_checks_arguments():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(ValueError, match=r"group_norm_act: act must be one of 'identity', 'relu', 'silu'; got 'gelu'"):
        F.group_norm_act(x, 4, act="gelu")
    with pytest.raises(ValueError, match=r"group_norm_act: num_groups must divide .* \(C=8\); got num_groups=3"):
        F.group_norm_act(x, 3)
    with pytest.raises(ValueError, match=r"group_norm_act: weight must have shape \(8,\)"):
        F.group_norm_act(x, 4, torch.ones(4))
    with pytest.raises(TypeError, match=r"group_norm_act: x must be a torch\.Tensor"):
        F.group_norm_act([1.0], 1)
    with pytest.raises(ValueError, match="group_norm_act: eps must be a float >= 0; got -1"):
        F.group_norm_act(x, 4, eps=-1)


def test_group_norm_act_gradients_through_the_module_and_params():
    m = gnn.GroupNormAct(3, 9, act="silu").to(torch.bfloat16)
    x = torch.randn(2, 9, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    m(x).float().sum().backward()
    assert m.weight.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    ref = gnn.GroupNorm(3, 9).to(torch.float64)
    xd = x.detach().double().requires_grad_()
    TF.silu(ref(xd)).sum().backward()
    assert rel_err(x.grad, xd.grad) < 5e-2
    assert rel_err(m.weight.grad, ref.weight.grad) < 5e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_dtypes_fall_back_to_torch_correctly(dtype):
    x = torch.randn(2, 6, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, dtype=dtype, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert kernels.backend_for(x) == "native"
        y = F.group_norm_act(x, 3, w, act="silu")
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones_like(y))
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    reference_act(xd, 3, wd, None, "silu").backward(torch.ones_like(xd))
    tol = 1e-10 if dtype == torch.float64 else 1e-2
    assert rel_err(y, reference_act(x.detach(), 3, w.detach(), None, "silu")) < tol
    assert rel_err(x.grad, xd.grad) < tol and rel_err(w.grad, wd.grad) < tol


def test_gradcheck_float64_fallback():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for act in ACTS:
            assert torch.autograd.gradcheck(lambda x, w, b, act=act: F.group_norm_act(x, 2, w, b, act=act), (x, w, b))


def _reset_cpu_library(monkeypatch):
    monkeypatch.setattr(cpu, "_lib", None)
    monkeypatch.setattr(cpu, "_error", None)
    monkeypatch.setattr(cpu, "_info", {})


def test_failed_build_falls_back_with_one_warning(monkeypatch, tmp_path):
    _reset_cpu_library(monkeypatch)
    monkeypatch.setenv("GROUPNORM_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setattr(cpu, "compiler", lambda: "/bin/false")
    with pytest.warns(RuntimeWarning, match="unavailable .*falling back to torch's native kernels"):
        assert not cpu.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: no second warning
        assert not cpu.available()
        x = torch.randn(2, 8, 5, 5)
        assert kernels.backend_for(x) == "native"
        y = F.group_norm_act(x, 4, act="relu")
        torch.testing.assert_close(y, torch.relu(TF.group_norm(x, 4)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(F.group_norm(x, 4), TF.group_norm(x, 4))
    assert "failed" in cpu.build_info()["error"]


def test_kernels_can_be_turned_off(monkeypatch):
    _reset_cpu_library(monkeypatch)
    monkeypatch.setenv("GROUPNORM_CPU_KERNELS", "0")
    with pytest.warns(RuntimeWarning, match="GROUPNORM_CPU_KERNELS=0"):
        assert kernels.backend_for(torch.randn(2, 4)) == "native"


def test_build_is_cached_and_reused(monkeypatch, tmp_path, capfd):
    _reset_cpu_library(monkeypatch)
    monkeypatch.setenv("GROUPNORM_CACHE", str(tmp_path))
    assert cpu.available()
    first = cpu.build_info()
    assert first["path"].startswith(str(tmp_path)) and first["build_seconds"] > 0
    said = capfd.readouterr().err.splitlines()
    assert said == [f"groupnorm: building the CPU GroupNorm kernels (first use, about 30 s) into {first['path']}"]
    _reset_cpu_library(monkeypatch)
    assert cpu.available()
    assert capfd.readouterr().err == ""  # nothing on later loads
    assert cpu.build_info()["path"] == first["path"] and cpu.build_info()["build_seconds"] == 0


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 -march levels")
def test_avx2_build_is_its_own_library_and_agrees(monkeypatch):
    # AVX-512 and AVX2 machines share a cache: each -march is a library of its own; the AVX2 code
    # (what an AMD EPYC runs) is checked here on any x86-64 CPU that can run it
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU cannot run AVX2 code")
    x = (torch.randn(2, 48, 9, 11) * 3 + 1).contiguous(memory_format=torch.channels_last)
    w, b, dy = torch.randn(48), torch.randn(48), torch.randn(2, 48, 9, 11)
    monkeypatch.delenv("GROUPNORM_CPU_ARCH", raising=False)  # the suite may run under the AVX2 build
    _reset_cpu_library(monkeypatch)
    native = cpu.forward(x, w, b, 6, 1e-5, "silu")
    native_path = cpu.build_info()["path"]
    _reset_cpu_library(monkeypatch)
    monkeypatch.setenv("GROUPNORM_CPU_ARCH", "x86-64-v3")
    assert cpu.available(), cpu.build_info()
    info = cpu.build_info()
    assert info["arch"] == "x86-64-v3" and info["vector_bits"] == 256 and info["path"] != native_path
    y, mean, rstd = cpu.forward(x, w, b, 6, 1e-5, "silu")
    for got, want in zip((y, mean, rstd), native, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    dx, _, _ = cpu.backward(dy, x, w, b, mean, rstd, 6, "silu")
    xd = x.double().requires_grad_()
    reference_act(xd, 6, w.double(), b.double(), "silu").backward(dy.double())
    assert rel_err(dx, xd.grad) < 5 * TOL[torch.float32]


def test_cpu_arch_is_checked(monkeypatch):
    monkeypatch.setenv("GROUPNORM_CPU_ARCH", "native; rm -rf /")
    with pytest.raises(ValueError, match="GROUPNORM_CPU_ARCH"):
        cpu.target_arch()


def test_empty_inputs():
    x = torch.randn(0, 8, 3, 3, requires_grad=True)
    y = F.group_norm_act(x, 4)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


# ---------------------------------------------------------------------------------------
# the layer and the spec


def test_group_norm_act_module():
    m = gnn.GroupNormAct(4, 16, act="relu")
    assert isinstance(m, nn.GroupNorm) and isinstance(m, gnn.GroupNorm)
    assert repr(m).startswith("GroupNormAct(\n  4, 16, eps=1e-05, affine=True, bias=True") and m.act_name == "relu"
    assert list(m.state_dict()) == list(nn.GroupNorm(4, 16).state_dict())
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(m(x), torch.relu(TF.group_norm(x, 4, m.weight, m.bias)), rtol=1e-5, atol=1e-5)
    assert gnn.GroupNormAct(num_channels=16, group_size=8).num_groups == 2
    assert gnn.GroupNormAct(2, 8, affine=False).weight is None
    with pytest.raises(ValueError, match=r"GroupNormAct: act: unknown activation 'tahn'; expected a torch.nn"):
        gnn.GroupNormAct(4, 16, act="tahn")
    with pytest.raises(ValueError, match=r"GroupNormAct: expected input of shape \(N, 16, \*\); got \(2, 8, 3\)"):
        m(torch.randn(2, 8, 3))


@pytest.mark.parametrize(
    ("text", "groups", "act"),
    [("gn:32+silu", 32, "silu"), ("gn/16+relu", 4, "relu"), ("ln+silu", 1, "silu"), ("in+relu", 64, "relu")],
)
def test_spec_with_activation_builds_group_norm_act(text, groups, act):
    spec = gnn.parse_norm_spec(text)
    assert spec.act == act and str(spec) == text
    m = gnn.make_norm(text, 64)
    assert type(m) is gnn.GroupNormAct and m.num_groups == groups and m.act_name == act
    assert gnn.parse_norm_spec("ws+" + text).ws and str(gnn.parse_norm_spec("WS+" + text.upper())) == "ws+" + text
    assert gnn.make_norm("gn:32+silu", 48, on_indivisible="nearest").num_groups == 24


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bn+relu", ["'bn+relu'", "bn takes no activation suffix", "gn, in, ln"]),
        ("none+silu", ["none takes no activation suffix"]),
        ("gn:32+gelu", ["activation must be one of relu, silu; got 'gelu'"]),
        ("gn+", ["cannot parse 'gn+'", "+relu or +silu"]),
    ],
)
def test_spec_activation_errors(text, words):
    with pytest.raises(ValueError) as info:
        gnn.make_norm(text, 64)
    for w in words:
        assert w in str(info.value)


def test_specs_without_activation_are_unchanged():
    for text in ("gn", "gn:8", "gn/16", "ln", "in", "bn", "ws+gn:32"):
        spec = gnn.parse_norm_spec(text)
        assert spec.act == "" and str(spec) == text
    assert type(gnn.make_norm("gn:8", 64)) is gnn.GroupNorm
    assert math.isclose(gnn.make_norm("gn+silu", 64, eps=1e-3).eps, 1e-3)
