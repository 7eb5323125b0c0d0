"""Batch Renorm, FRN + TLU and EvoNorm-S0: layers against the float64 formulas, specs, errors."""

import pytest
import torch
from torch import nn

import groupnorm
from groupnorm import functional as F
from groupnorm import nn as gnn
from groupnorm import reference as R

# (shape, memory format): a 1-D signal, images in NCHW and channels-last, a 3-D volume in both
LAYOUTS = [
    ((4, 8, 7), torch.contiguous_format),
    ((4, 8, 5, 6), torch.contiguous_format),
    ((4, 8, 5, 6), torch.channels_last),
    ((4, 8, 3, 4, 5), torch.contiguous_format),
    ((4, 8, 3, 4, 5), torch.channels_last_3d),
]
DTYPES = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.bfloat16: {"atol": 3e-2, "rtol": 2e-2}}


def _randomize(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return m


def _brn() -> gnn.BatchRenorm:
    m = _randomize(gnn.BatchRenorm(8, devices=2, r_max=1.5, d_max=0.5))
    m.running_mean.normal_()
    m.running_var.uniform_(0.5, 2.0)
    return m


def _oracle(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The float64 formula of layer m at input x (in training for BRN)."""
    if isinstance(m, gnn.BatchRenorm):
        return R.batch_renorm(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps, m.r_max, m.d_max, m.devices)
    if isinstance(m, gnn.FilterResponseNorm):
        return R.filter_response_norm(x, m.weight, m.bias, m.tau, m.eps)
    return R.evo_norm_s0(x, m.num_groups, m.weight, m.bias, m.v, m.eps, act=m.act)


LAYERS = {
    "brn": _brn,
    "frn": lambda: _randomize(gnn.FilterResponseNorm(8)),
    "evonorm-s0": lambda: _randomize(gnn.EvoNormS0(8, num_groups=2)),
    "frn without tlu": lambda: _randomize(gnn.FilterResponseNorm(8, tlu=False)),
    "evonorm-s0 without act": lambda: _randomize(gnn.EvoNormS0(8, num_groups=2, act=False)),
}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize(("shape", "fmt"), LAYOUTS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_the_formula(name, shape, fmt, dtype):
    m = LAYERS[name]()
    x = (torch.randn(shape) * 2 + 0.5).to(dtype).contiguous(memory_format=fmt)
    expected = _oracle(m, x)
    y = m(x)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y.double(), expected, **DTYPES[dtype])


@pytest.mark.parametrize("name", ["brn", "evonorm-s0", "evonorm-s0 without act"])
def test_features_without_spatial_dims(name):
    m = LAYERS[name]()
    x = torch.randn(6, 8)
    expected = _oracle(m, x)  # before BRN's running statistics move
    torch.testing.assert_close(m(x).double(), expected, **DTYPES[torch.float32])


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_match_the_formula(name):
    m = LAYERS[name]().double()
    x = (torch.randn(4, 8, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(4, 8, 3, 3, dtype=torch.float64)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    ours = torch.autograd.grad((m(x) * g).sum(), [x, *m.parameters()])
    m.load_state_dict(state)  # BRN: the oracle sees the running statistics before the update
    theirs = torch.autograd.grad((_oracle(m, x) * g).sum(), [x, *m.parameters()])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_batch_renorm_clips_updates_and_evaluates_as_bn():
    m = _brn()
    x = torch.randn(8, 8, 4, 4) * 3 + 1
    r = (x.unflatten(0, (2, 4)).var((1, 3, 4), correction=0) + m.eps).sqrt() / (m.running_var + m.eps).sqrt()
    assert ((r < 1 / 1.5) | (r > 1.5)).any()  # the bounds matter in this test
    new_mean, new_var = R.batch_norm_running_update(x, m.running_mean, m.running_var, 0.1, devices=2)
    m(x)
    torch.testing.assert_close(m.running_mean.double(), new_mean)
    torch.testing.assert_close(m.running_var.double(), new_var)
    m.eval()
    bn = nn.BatchNorm2d(8).eval()
    bn.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), bn(x))


def test_batch_renorm_at_its_start_is_bn():
    brn, bn = gnn.BatchRenorm(8, devices=4), gnn.BatchNorm(8, devices=4)
    assert (brn.r_max, brn.d_max) == (1.0, 0.0)
    x = torch.randn(8, 8, 3, 3)
    torch.testing.assert_close(brn(x), bn(x))
    torch.testing.assert_close(brn.running_var, bn.running_var)
    assert isinstance(brn, nn.modules.batchnorm._BatchNorm)


def test_renorm_ramp_scales_with_the_run():
    assert gnn.renorm_limits(0, 1000) == (1.0, 0.0)
    assert gnn.renorm_limits(31, 1000) == (1.0, 0.0)  # BN alone for the first 5/40 of the ramp
    r, d = gnn.renorm_limits(100, 1000)
    assert 1 < r < 3 and 0 < d < 5
    assert gnn.renorm_limits(157, 1000)[1] == 5.0  # d_max tops out at 25/40 of the ramp
    assert gnn.renorm_limits(250, 1000) == (3.0, 5.0)
    assert gnn.renorm_limits(500, 1000, ramp_end=1.0) < gnn.renorm_limits(500, 1000)
    model = nn.Sequential(gnn.make_norm("brn", 8), nn.ReLU(), gnn.BatchRenorm(8), gnn.make_norm("bn", 8))
    assert groupnorm.set_renorm_limits(model, 999, 1000) == 2
    assert (model[0].r_max, model[2].d_max) == (3.0, 5.0)
    with pytest.raises(ValueError, match="total_steps must be a positive int; got 0"):
        gnn.renorm_limits(0, 0)


def test_evonorm_s0_without_act_divides_by_the_group_std():
    m = _randomize(gnn.EvoNormS0(8, num_groups=2, act=False))
    assert m.v is None and [k for k, _ in m.named_parameters()] == ["weight", "bias"]
    assert repr(m) == "EvoNormS0(8, eps=1e-05, num_groups=2, act=False)"
    x = torch.randn(3, 8, 4, 4) + 1
    std = (x.unflatten(1, (2, 4)).var((2, 3, 4), correction=0, keepdim=True) + m.eps).sqrt()
    expected = (x.unflatten(1, (2, 4)) / std).flatten(1, 2) * m.weight.view(1, 8, 1, 1) + m.bias.view(1, 8, 1, 1)
    torch.testing.assert_close(m(x), expected)
    with pytest.raises(ValueError, match="evo_norm_s0: v is the activation's parameter; pass v=None with act=False"):
        F.evo_norm_s0(x, 2, v=torch.ones(8), act=False)


def test_frn_learned_eps_and_no_tlu():
    m = gnn.FilterResponseNorm(8, learn_eps=True, tlu=False)
    assert m.tau is None and m.eps_l.shape == (8,)
    x = torch.randn(2, 8, 1, 1)  # 1x1 features, where eps matters
    eps = (m.eps + m.eps_l.abs()).detach()
    y = m(x)
    expected = (x.double() / torch.sqrt(x.double() ** 2 + eps.double().view(1, 8, 1, 1))).float()
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert m.eps_l.grad is not None and m.eps_l.grad.abs().sum() > 0


def test_reprs_and_positional_arguments():
    assert repr(gnn.FilterResponseNorm(8)) == "FilterResponseNorm(8, eps=1e-06, learn_eps=False, tlu=True)"
    assert repr(gnn.EvoNormS0(8, 1e-3, group_size=4)) == "EvoNormS0(8, eps=0.001, num_groups=2)"
    assert gnn.EvoNormS0(64).num_groups == 32
    m = gnn.BatchRenorm(8, 1e-3, 0.2, r_max=2, d_max=1)
    assert (m.eps, m.momentum, m.r_max, m.d_max) == (1e-3, 0.2, 2.0, 1.0)
    assert repr(m).endswith("r_max=2.0, d_max=1.0)")
    assert "devices=4" in repr(gnn.BatchRenorm(8, devices=4))


def test_clear_errors():
    with pytest.raises(ValueError, match=r"EvoNormS0 \(evonorm-s0\): num_groups must divide num_channels=24"):
        gnn.EvoNormS0(24, num_groups=5)
    with pytest.raises(ValueError, match=r"FilterResponseNorm \(frn\) with 8 channels.*spatial dim.*got \(2, 8\)"):
        gnn.FilterResponseNorm(8)(torch.randn(2, 8))
    with pytest.raises(ValueError, match="at least 3 dims"):
        F.filter_response_norm(torch.randn(8))
    with pytest.raises(ValueError, match=r"r_max must be a number >= 1; got 0\.5"):
        gnn.BatchRenorm(8, r_max=0.5)
    with pytest.raises(ValueError, match="d_max must be a number >= 0; got -1"):
        gnn.BatchRenorm(8).d_max = -1
    with pytest.raises(ValueError, match="num_features must be a positive int; got 0"):
        gnn.FilterResponseNorm(0)


def test_specs():
    assert type(gnn.make_norm("brn", 8, devices=4)) is gnn.BatchRenorm
    assert gnn.make_norm("brn", 8, devices=4).devices == 4
    assert gnn.make_norm("frn", 8).eps == 1e-6
    assert gnn.make_norm("evonorm-s0", 64).num_groups == 32
    assert gnn.make_norm("evonorm-s0:8", 64).num_groups == 8
    assert gnn.make_norm("evonorm-s0/16", 64).num_groups == 4
    assert gnn.make_norm("evonorm-s0:32", 48, on_indivisible="nearest").num_groups == 24
    for text in ("brn", "frn", "evonorm-s0", "evonorm-s0:8", "evonorm-s0/16"):
        assert str(gnn.parse_norm_spec(text)) == text
    flags = {s: gnn.parse_norm_spec(s).norm_act for s in ("frn", "evonorm-s0/4", "gn:8+relu", "gn", "brn", "bn")}
    assert flags == {"frn": True, "evonorm-s0/4": True, "gn:8+relu": True, "gn": False, "brn": False, "bn": False}
    assert gnn.parse_norm_spec("brn").uses_batch_statistics
    assert not gnn.parse_norm_spec("evonorm-s0").uses_batch_statistics


@pytest.mark.parametrize(
    ("spec", "channels", "words"),
    [
        ("evonorm-s0:5", 24, "norm spec 'evonorm-s0:5' does not apply to 24 channels: 5 groups must divide C"),
        ("evonorm-s0/5", 24, "'evonorm-s0/5' does not apply to 24 channels: the group size 5 must divide C"),
        ("evonorm-s0:sync", 24, "evonorm-s0 takes ':G' (groups) or '/K'"),
        ("frn:4", 8, "frn takes no arguments"),
        ("brn:sync", 8, "brn takes no arguments"),
        ("frn+relu", 8, "frn takes no activation suffix"),
    ],
)
def test_spec_errors(spec, channels, words):
    with pytest.raises(ValueError) as info:
        gnn.make_norm(spec, channels)
    assert words in str(info.value)


def test_convert_to_the_family():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    model[1].running_mean.fill_(0.5)
    groupnorm.convert_norms(model, "brn")
    assert type(model[1]) is gnn.BatchRenorm and model[1].running_mean[0] == 0.5
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    for spec in ("evonorm-s0:4", "frn"):  # norm-act layers: the model builders place them, not surgery
        with pytest.raises(ValueError, match=f"spec '{spec}' is a norm-act layer"):
            groupnorm.convert_norms(model, spec)
    assert type(model[1]) is gnn.BatchRenorm
