"""groupnorm.functional against torch's kernels and the float64 reference."""

import math

import pytest
import torch
import torch.nn.functional as TF

from groupnorm import functional as F
from groupnorm import reference as R

SHAPES = [(3, 8), (2, 8, 7), (2, 8, 5, 6), (2, 8, 3, 4, 5), (1, 12, 1, 1), (4, 6, 9, 1)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def formats(shape):
    out = [torch.contiguous_format]
    if len(shape) == 4:
        out.append(torch.channels_last)
    if len(shape) == 5:
        out.append(torch.channels_last_3d)
    return out


def rel_err(y, ref):
    return ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def group_choices(shape):
    """G in {1, 2, C/2, C}, leaving out groups of a single value (see test_single_value_groups)."""
    c, per_sample = shape[1], math.prod(shape[1:])
    return sorted(g for g in {1, 2, c // 2, c} - {0} if per_sample // g > 1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", list(TOL))
def test_group_norm_matches_reference(shape, dtype):
    c = shape[1]
    for fmt in formats(shape):
        for groups in group_choices(shape):
            x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
            w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
            y = F.group_norm(x, groups, w, b)
            ref = R.group_norm(x, groups, w, b)
            assert y.dtype == dtype and y.shape == x.shape
            assert y.is_contiguous(memory_format=fmt), (fmt, groups)
            assert rel_err(y, ref) < TOL[dtype], (fmt, groups)


@pytest.mark.parametrize("shape", SHAPES)
def test_group_norm_matches_torch(shape):
    c = shape[1]
    for fmt in formats(shape):
        for groups in group_choices(shape):
            x = torch.randn(shape).contiguous(memory_format=fmt)
            w, b = torch.randn(c), torch.randn(c)
            torch.testing.assert_close(F.group_norm(x, groups, w, b), TF.group_norm(x, groups, w, b))


def test_layer_and_instance_norm_are_gn_at_the_ends():
    x = torch.randn(3, 6, 4, 5)
    w, b = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(F.layer_norm(x, w, b), F.group_norm(x, 1, w, b))
    torch.testing.assert_close(F.instance_norm(x, w, b), F.group_norm(x, 6, w, b))
    assert rel_err(F.layer_norm(x, w, b), R.layer_norm(x, w, b)) < 1e-5
    assert rel_err(F.instance_norm(x, w, b), R.instance_norm(x, w, b)) < 1e-5
    # torch's instance_norm (no running stats) agrees with G = C
    torch.testing.assert_close(F.instance_norm(x, w, b), TF.instance_norm(x, weight=w, bias=b))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_robust_variance_float32(fmt):
    # E[x^2] - E[x]^2 in float32 fails this; torch's own CPU channels-last kernel does (errors ~100).
    x = (1e4 + torch.randn(2, 64, 8, 8)).contiguous(memory_format=fmt)
    w, b = torch.ones(64), torch.zeros(64)
    y = F.group_norm(x, 32, w, b)
    assert rel_err(y, R.group_norm(x, 32, w, b)) < 1e-3
    x5 = (1e4 + torch.randn(2, 8, 3, 4, 4)).contiguous(memory_format=torch.channels_last_3d)
    assert rel_err(F.group_norm(x5, 4), R.group_norm(x5, 4)) < 1e-3


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 4, 1, 2), (2, 6, 3)])
def test_robust_variance_small_groups_contiguous(shape):
    # torch's contiguous CPU kernel also cancels on groups of a few values (found by hypothesis:
    # two values at 16 +- 0.1 came out 0.15% off); the shift check covers it.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 0.125 + 16.0
    for groups in (1, shape[1]):
        assert (F.group_norm(x, groups).double() - R.group_norm(x, groups)).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("shape", "fmt", "ours"),
    [
        ((2, 8, 8, 8), torch.contiguous_format, True),  # 64 positions per channel: our kernel
        ((2, 8, 4, 16, 2), torch.contiguous_format, True),
        ((2, 8, 7, 7), torch.contiguous_format, False),  # 49: torch's kernel, with the conditioning check
        ((2, 8, 7, 7), torch.channels_last, True),  # channels-last: ours at every size
    ],
)
def test_group_norm_dispatch_by_layout_and_map_size(monkeypatch, shape, fmt, ours):
    calls = []
    real = F.kernels.cpu.group_norm_act
    monkeypatch.setattr(F.kernels.cpu, "group_norm_act", lambda *a: calls.append(a[0].shape) or real(*a))
    x = (1e4 + torch.randn(shape)).contiguous(memory_format=fmt).requires_grad_()
    w, b = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    y = F.group_norm(x, 4, w, b)
    assert calls == ([shape] if ours else [])
    assert y.is_contiguous(memory_format=fmt)
    assert rel_err(y, R.group_norm(x.detach(), 4, w.detach(), b.detach())) < 1e-3  # accurate either way
    dy = torch.randn(shape)
    y.backward(dy)
    xd = x.detach().double().requires_grad_()
    TF.group_norm(xd, 4, w.detach().double(), b.detach().double()).backward(dy.double())
    assert rel_err(x.grad, xd.grad) < 1e-3


def test_robust_variance_gradient_channels_last():
    x = (1e3 + torch.randn(2, 16, 6, 6)).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, requires_grad=True)
    dy = torch.randn(2, 16, 6, 6)
    F.group_norm(x, 4, w).backward(dy)
    xd = x.detach().double().requires_grad_()
    TF.group_norm(xd, 4, w.detach().double()).backward(dy.double())
    assert rel_err(x.grad, xd.grad) < 1e-3


def test_single_value_groups_give_beta():
    # var = 0, so x_hat = 0 up to rounding amplified by 1/sqrt(eps) (torch's kernel computes
    # x * scale - mean * scale); beta within that rounding.
    x = torch.randn(3, 8)
    b = torch.randn(8)
    torch.testing.assert_close(F.group_norm(x, 8, torch.ones(8), b), b.expand(3, 8), atol=1e-4, rtol=0)


def test_constant_group_gives_beta():
    x = torch.full((2, 4, 3, 3), 7.0).contiguous(memory_format=torch.channels_last)
    b = torch.arange(4.0)
    y = F.group_norm(x, 2, torch.ones(4), b)
    torch.testing.assert_close(y, b.view(1, 4, 1, 1).expand_as(y))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_float16_squares_overflow(fmt):
    x = (300 + 30 * torch.randn(2, 8, 6, 6)).half().contiguous(memory_format=fmt)  # x^2 > 65504
    y = F.group_norm(x, 4, torch.ones(8, dtype=torch.half), torch.zeros(8, dtype=torch.half))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert rel_err(y, R.group_norm(x, 4)) < 4e-3


def test_half_input_float32_params_keep_input_dtype():
    x = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16)
    y = F.group_norm(x, 4, torch.randn(8), torch.randn(8))
    assert y.dtype == torch.bfloat16


def test_float64_params_with_float32_input():
    x = torch.randn(2, 8, 4, 4)
    w = torch.randn(8, dtype=torch.float64)
    assert F.group_norm(x, 4, w).dtype == torch.float32


def test_gradcheck_group_norm():
    for shape in [(2, 6), (2, 6, 5), (2, 6, 3, 4), (1, 6, 2, 2, 3)]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        for g in (1, 2, 6):
            assert torch.autograd.gradcheck(lambda x, w, b, g=g: F.group_norm(x, g, w, b), (x, w, b))


def test_gradcheck_channels_last_shifted_path():
    x = (50 + torch.randn(2, 4, 3, 3, dtype=torch.float64)).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: F.group_norm(x, 2, w), (x, w))


def test_gradcheck_weight_standardize():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.weight_standardize, (w,))
    torch.testing.assert_close(F.weight_standardize(w.detach()), R.weight_standardize(w.detach()))


@pytest.mark.parametrize("fn", ["group_norm", "layer_norm", "instance_norm"])
def test_batch_independence(fn):
    """Changing the other samples never changes sample i (GN, LN, IN)."""
    x = torch.randn(4, 8, 5, 5)
    args = (4,) if fn == "group_norm" else ()
    y = getattr(F, fn)(x, *args)
    x2 = x.clone()
    x2[1:] = 100 * torch.randn(3, 8, 5, 5) + 7
    y2 = getattr(F, fn)(x2, *args)
    torch.testing.assert_close(y[0], y2[0], rtol=0, atol=0)
    torch.testing.assert_close(getattr(F, fn)(x[:1], *args), y[:1], rtol=0, atol=0)


def test_empty_batch_returns_empty():
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(0, 8, 4, 4).contiguous(memory_format=fmt)
        y = F.group_norm(x, 4)
        assert y.shape == x.shape and y.is_contiguous(memory_format=fmt)
    assert F.batch_norm(torch.randn(0, 8, 4, 4), None, None, training=True, devices=2).shape == (0, 8, 4, 4)


def test_nan_and_inf_propagate():
    x = torch.randn(2, 8, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    y = F.group_norm(x, 4)
    assert torch.isnan(y[0, :2]).all()  # the group holding the NaN
    assert torch.isfinite(y[1]).all() and torch.isfinite(y[0, 2:]).all()
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    x[1, 5, 1, 1] = float("inf")
    y = F.group_norm(x, 4)
    assert not torch.isfinite(y[1, 4:6]).any()
    assert torch.isfinite(y[0]).all()


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: F.group_norm(torch.arange(16).view(2, 8), 4), TypeError, ["x", "floating", "int64"]),
        (lambda: F.group_norm(torch.randn(2, 8, 3), 3), ValueError, ["num_groups", "C=8", "3"]),
        (lambda: F.group_norm(torch.randn(2, 8, 3), 0), ValueError, ["num_groups", "positive", "0"]),
        (lambda: F.group_norm(torch.randn(2, 8, 3), -2), ValueError, ["num_groups", "-2"]),
        (lambda: F.group_norm(torch.randn(2, 8, 3), 2.0), TypeError, ["num_groups", "int", "2.0"]),
        (lambda: F.group_norm(torch.randn(8), 2), ValueError, ["x", "at least 2 dims", "(8,)"]),
        (lambda: F.group_norm(torch.randn(2, 8), 2, torch.ones(4)), ValueError, ["weight", "(8,)", "(4,)"]),
        (lambda: F.group_norm(torch.randn(2, 8), 2, None, torch.ones(8, 1)), ValueError,
         ["bias", "(8,)", "(8, 1)"]),
        (lambda: F.group_norm([1.0, 2.0], 2), TypeError, ["x", "Tensor", "list"]),
        (lambda: F.group_norm(torch.randn(2, 8), 2, eps=-1.0), ValueError, ["eps", "-1.0"]),
        (lambda: F.batch_norm(torch.randn(6, 4, 3), None, None, training=True, devices=4), ValueError,
         ["N=6", "devices=4"]),
        (lambda: F.batch_norm(torch.randn(4, 4), None, None, training=True, devices=4), ValueError,
         ["more than 1 value per channel", "devices=4"]),
        (lambda: F.batch_norm(torch.randn(4, 4, 2), None, None, training=True, devices=0), ValueError,
         ["devices", "0"]),
        (lambda: F.batch_norm(torch.randn(4, 4, 2), torch.zeros(3), torch.ones(3), training=True), ValueError,
         ["running_mean", "(4,)", "(3,)"]),
        (lambda: F.weight_standardize(torch.randn(4)), ValueError, ["weight", ">= 2 dims", "(4,)"]),
    ],
)  # fmt: skip
def test_bad_input_names_argument_expected_and_given(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --- batch norm with per-device statistics -------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 5), (8, 5, 7), (8, 5, 4, 3), (8, 5, 2, 3, 2)])
@pytest.mark.parametrize("devices", [1, 2, 4, 8])
def test_batch_norm_devices_matches_reference(shape, devices):
    if shape == (8, 5) and devices == 8:  # one value per channel per device: undefined variance
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            F.batch_norm(torch.randn(shape), None, None, training=True, devices=devices)
        return
    for fmt in formats(shape):
        x = torch.randn(shape).contiguous(memory_format=fmt)
        w, b = torch.randn(5), torch.randn(5)
        y = F.batch_norm(x, None, None, w, b, training=True, devices=devices)
        assert y.is_contiguous(memory_format=fmt)
        assert rel_err(y, R.batch_norm(x, w, b, devices=devices)) < 1e-5


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_batch_norm_devices_equals_separate_calls(fmt):
    devices, c = 4, 6
    x = torch.randn(8, c, 5, 5).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(c, requires_grad=True)
    b = torch.randn(c, requires_grad=True)
    rm, rv = torch.randn(c), torch.rand(c) + 0.5
    dy = torch.randn(8, c, 5, 5)

    ours_rm, ours_rv = rm.clone(), rv.clone()
    y = F.batch_norm(x, ours_rm, ours_rv, w, b, training=True, momentum=0.3, devices=devices)
    y.backward(dy)
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None

    outs, rms, rvs = [], [], []
    for xb in x.chunk(devices):
        r1, r2 = rm.clone(), rv.clone()
        outs.append(TF.batch_norm(xb, r1, r2, w, b, training=True, momentum=0.3))
        rms.append(r1)
        rvs.append(r2)
    torch.cat(outs).backward(dy)
    torch.testing.assert_close(y, torch.cat(outs))
    for g, t in zip(grads, (x, w, b), strict=True):
        torch.testing.assert_close(g, t.grad)
    torch.testing.assert_close(ours_rm, torch.stack(rms).mean(0))
    torch.testing.assert_close(ours_rv, torch.stack(rvs).mean(0))


def test_batch_norm_running_stats_match_reference():
    x = torch.randn(12, 3, 4, 4, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=0.1, devices=3)
    em, ev = R.batch_norm_running_update(x, torch.zeros(3), torch.ones(3), 0.1, devices=3)
    torch.testing.assert_close(rm, em)
    torch.testing.assert_close(rv, ev)


def test_batch_norm_eval_uses_running_stats_whatever_devices():
    x = torch.randn(8, 3, 4, 4)
    rm, rv = torch.randn(3), torch.rand(3) + 0.5
    ref = (x - rm.view(1, 3, 1, 1)) / torch.sqrt(rv.view(1, 3, 1, 1) + 1e-5)
    for devices in (1, 4, 3):
        torch.testing.assert_close(F.batch_norm(x, rm, rv, training=False, devices=devices), ref)


def test_batch_norm_depends_on_the_batch_within_a_device_only():
    x = torch.randn(8, 4, 3, 3)
    y = F.batch_norm(x, None, None, training=True, devices=4)
    x2 = x.clone()
    x2[1] = 5 * torch.randn(4, 3, 3)  # same device as sample 0 (blocks of 2)
    x2[4:] = torch.randn(4, 4, 3, 3)  # other devices
    y2 = F.batch_norm(x2, None, None, training=True, devices=4)
    assert not torch.allclose(y[0], y2[0])
    torch.testing.assert_close(y[2:4], y2[2:4], rtol=0, atol=0)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batch_norm_devices_half_precision(dtype, fmt):
    x = torch.randn(8, 6, 5, 5).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    rm, rv = torch.zeros(6), torch.ones(6)
    y = F.batch_norm(x, rm, rv, w, b, training=True, devices=4)
    assert y.dtype == dtype
    assert rel_err(y, R.batch_norm(x, w, b, devices=4)) < TOL[dtype]
    y.float().sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("shape", "fmt", "devices"),
    [((8, 6, 5, 5), torch.channels_last, 4), ((4, 6, 3, 4, 5), torch.channels_last_3d, 2), ((4, 6, 5, 5), None, 4)],
)
def test_per_device_batch_norm_is_one_kernel_call(monkeypatch, shape, fmt, devices):
    """Channels-last per-device BN (and one sample per device) is GroupNorm with one channel per group
    over a view of x: one call of the CPU kernel, not a loop over devices."""
    calls = []
    real = F.kernels.group_norm_act
    monkeypatch.setattr(F.kernels, "group_norm_act", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(shape)
    x = x.contiguous(memory_format=fmt) if fmt is not None else x
    x.requires_grad_()
    w, b = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    rm, rv = torch.zeros(6), torch.ones(6)
    y = F.batch_norm(x, rm, rv, w, b, training=True, devices=devices)
    assert calls == [(devices, 6, x.numel() // (6 * devices), 1)]
    assert y.is_contiguous(memory_format=fmt or torch.contiguous_format)
    assert rel_err(y, R.batch_norm(x.detach(), w.detach(), b.detach(), devices=devices)) < 1e-5
    em, ev = R.batch_norm_running_update(x.detach(), torch.zeros(6), torch.ones(6), 0.1, devices=devices)
    torch.testing.assert_close(rm, em.float())
    torch.testing.assert_close(rv, ev.float())


def test_gradcheck_batch_norm_devices():
    x = torch.randn(8, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    for devices in (1, 2, 4):
        assert torch.autograd.gradcheck(
            lambda x, w, b, d=devices: F.batch_norm(x, None, None, w, b, training=True, devices=d), (x, w, b)
        )
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: F.batch_norm(x, None, None, training=True, devices=4), (xc,))


def test_memory_format_of():
    assert F.memory_format_of(torch.randn(2, 3, 4, 5)) is torch.contiguous_format
    assert F.memory_format_of(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)) is torch.channels_last
    x5 = torch.randn(2, 3, 4, 5, 6).to(memory_format=torch.channels_last_3d)
    assert F.memory_format_of(x5) is torch.channels_last_3d
    assert F.memory_format_of(torch.randn(2, 3, 4, 5).transpose(2, 3)) is torch.contiguous_format


def test_reference_is_the_papers_formula():
    # One set, by hand: mu = 2.5, sigma^2 = 1.25.
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    expected = (torch.tensor([1.0, 2, 3, 4]) - 2.5) / math.sqrt(1.25 + 1e-5)
    torch.testing.assert_close(R.group_norm(x, 1)[0, 0], expected.double())
