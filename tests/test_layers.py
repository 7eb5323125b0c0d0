"""groupnorm.nn: the modules and the norm spec."""

import pytest
import torch
from torch import nn

from groupnorm import nn as gnn
from groupnorm import reference as R


def test_group_norm_is_a_drop_in_for_torch():
    ours, theirs = gnn.GroupNorm(4, 16), nn.GroupNorm(4, 16)
    assert isinstance(ours, nn.GroupNorm)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    with torch.no_grad():
        theirs.weight.normal_()
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))
    # positional arguments in torch's order, and torch's keyword-only bias
    m = gnn.GroupNorm(2, 8, 1e-3, False)
    assert (m.num_groups, m.num_channels, m.eps, m.affine) == (2, 8, 1e-3, False)
    assert m.weight is None
    m = gnn.GroupNorm(2, 8, bias=False)
    assert m.bias is None and m.weight is not None
    assert repr(m) == repr(nn.GroupNorm(2, 8, bias=False))


def test_group_size_instead_of_num_groups():
    m = gnn.GroupNorm(num_channels=64, group_size=16)
    assert m.num_groups == 4
    with pytest.raises(ValueError, match="exactly one of num_groups or group_size"):
        gnn.GroupNorm(4, 64, group_size=16)
    with pytest.raises(ValueError, match="group_size must divide num_channels=64; got group_size=5"):
        gnn.GroupNorm(num_channels=64, group_size=5)
    with pytest.raises(ValueError, match="num_groups must divide num_channels=10; got num_groups=4"):
        gnn.GroupNorm(4, 10)
    with pytest.raises(ValueError, match="num_groups must be a positive int; got 0"):
        gnn.GroupNorm(0, 10)


def test_group_norm_checks_channels():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 16, \*\); got \(2, 8, 3, 3\)"):
        gnn.GroupNorm(4, 16)(torch.randn(2, 8, 3, 3))


def test_layer_and_instance_norm_modules():
    x = torch.randn(3, 6, 4, 4)
    ln, inn = gnn.LayerNorm(6), gnn.InstanceNorm(6)
    with torch.no_grad():
        for m in (ln, inn):
            m.weight.normal_()
            m.bias.normal_()
    torch.testing.assert_close(ln(x), R.layer_norm(x, ln.weight, ln.bias).float())
    torch.testing.assert_close(inn(x), R.instance_norm(x, inn.weight, inn.bias).float())
    assert repr(ln) == "LayerNorm(6, eps=1e-05, affine=True, bias=True)"
    assert ln.num_groups == 1 and inn.num_groups == 6


@pytest.mark.parametrize("shape", [(8, 4), (8, 4, 5), (8, 4, 3, 3), (8, 4, 2, 3, 3)])
def test_batch_norm_module_all_ranks(shape):
    bn = gnn.BatchNorm(4, devices=4)
    tbn = nn.BatchNorm2d(4)
    x = torch.randn(shape)
    y = bn(x)
    torch.testing.assert_close(y, R.batch_norm(x, devices=4).float())
    assert bn.num_batches_tracked.item() == 1
    assert list(bn.state_dict()) == list(tbn.state_dict())
    bn.eval()
    rm, rv = (
        bn.running_mean.view(1, 4, *[1] * (len(shape) - 2)),
        bn.running_var.view(1, 4, *[1] * (len(shape) - 2)),
    )
    torch.testing.assert_close(bn(x), (x - rm) / torch.sqrt(rv + 1e-5))


def test_batch_norm_module_matches_torch_with_one_device():
    bn, tbn = gnn.BatchNorm(4), nn.BatchNorm2d(4)
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    for _ in range(3):
        x = torch.randn(6, 4, 5, 5)
        torch.testing.assert_close(bn(x), tbn(x))
    torch.testing.assert_close(bn.running_var, tbn.running_var)
    bn.eval()
    tbn.eval()
    torch.testing.assert_close(bn(x), tbn(x))
    # momentum=None: cumulative average, as in torch
    bn, tbn = gnn.BatchNorm(4, momentum=None), nn.BatchNorm2d(4, momentum=None)
    for _ in range(3):
        x = torch.randn(6, 4, 5, 5)
        bn(x), tbn(x)
    torch.testing.assert_close(bn.running_mean, tbn.running_mean)


def test_batch_norm_module_errors():
    with pytest.raises(ValueError, match="devices must be a positive int; got 0"):
        gnn.BatchNorm(4, devices=0)
    with pytest.raises(ValueError, match=r"sync=True .* devices must be 1, got 8"):
        gnn.BatchNorm(4, devices=8, sync=True)
    with pytest.raises(ValueError, match=r"2-D to 5-D input .* got shape \(2, 4, 1, 1, 1, 1\)"):
        gnn.BatchNorm(4)(torch.randn(2, 4, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"N=6 .* devices=4"):
        gnn.BatchNorm(4, devices=4)(torch.randn(6, 4, 3, 3))


def test_batch_norm_without_running_stats_uses_batch_stats_in_eval():
    bn = gnn.BatchNorm(3, devices=2, track_running_stats=False).eval()
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(bn(x), R.batch_norm(x, devices=2).float())


def test_frozen_batch_norm_is_bn_in_eval_and_loads_torchvision():
    from torchvision.ops import FrozenBatchNorm2d

    bn = nn.BatchNorm2d(5)
    bn(torch.randn(8, 5, 4, 4) * 3 + 1)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    frozen = gnn.FrozenBatchNorm(5)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    tv = FrozenBatchNorm2d(5)
    tv.load_state_dict(frozen.state_dict())
    torch.testing.assert_close(tv(x), frozen(x))
    assert not list(frozen.parameters())
    x3 = torch.randn(2, 5, 3)  # any rank
    assert frozen(x3).shape == x3.shape


def test_ws_conv_standardizes_weights():
    conv = gnn.WSConv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    w_hat = R.weight_standardize(conv.weight.detach()).float()
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, w_hat, padding=1), rtol=1e-4, atol=1e-5)
    conv3 = gnn.WSConv3d(2, 4, (3, 1, 1), bias=True)
    y = conv3(torch.randn(1, 2, 5, 4, 4))
    assert y.shape == (1, 4, 3, 4, 4)
    y.sum().backward()
    assert conv3.weight.grad is not None
    # a plain conv's state_dict loads
    plain = nn.Conv2d(3, 4, 3)
    gnn.WSConv2d(3, 4, 3).load_state_dict(plain.state_dict())
    # shifting a filter does not change the output
    conv2 = gnn.WSConv2d(3, 4, 3, padding=1, bias=False)
    conv2.load_state_dict({"weight": conv.weight.detach() + 3.0})
    torch.testing.assert_close(conv2(x), conv(x), rtol=1e-4, atol=1e-4)


SPECS = {
    "bn": (gnn.BatchNorm, {}),
    "bn:sync": (gnn.BatchNorm, {"sync": True}),
    "bn:frozen": (gnn.FrozenBatchNorm, {}),
    "gn": (gnn.GroupNorm, {"num_groups": 32}),
    "gn:8": (gnn.GroupNorm, {"num_groups": 8}),
    "gn/16": (gnn.GroupNorm, {"num_groups": 4}),
    "ln": (gnn.LayerNorm, {"num_groups": 1}),
    "in": (gnn.InstanceNorm, {"num_groups": 64}),
    "none": (nn.Identity, {}),
    "ws+gn:32": (gnn.GroupNorm, {"num_groups": 32}),
    " GN:4 ": (gnn.GroupNorm, {"num_groups": 4}),
}


@pytest.mark.parametrize("spec", list(SPECS))
def test_make_norm_specs(spec):
    cls, attrs = SPECS[spec]
    m = gnn.make_norm(spec, 64)
    assert type(m) is cls
    for k, v in attrs.items():
        assert getattr(m, k) == v
    y = m(torch.randn(2, 64, 3, 3))
    assert y.shape == (2, 64, 3, 3)


def test_norm_spec_round_trip_and_flags():
    for text in (
        "bn",
        "bn:sync",
        "bn:frozen",
        "gn",
        "gn:8",
        "gn/16",
        "ln",
        "in",
        "none",
        "ws+gn:32",
        "ws+bn",
    ):
        assert str(gnn.parse_norm_spec(text)) == text
    assert gnn.parse_norm_spec("ws+gn:32").ws
    assert gnn.parse_norm_spec("bn").uses_batch_statistics
    assert not gnn.parse_norm_spec("bn:frozen").uses_batch_statistics
    assert not gnn.parse_norm_spec("gn").uses_batch_statistics


def test_make_norm_devices_and_callables():
    assert gnn.make_norm("bn", 8, devices=4).devices == 4
    from functools import partial

    assert isinstance(gnn.make_norm(nn.BatchNorm2d, 8), nn.BatchNorm2d)
    assert gnn.make_norm(partial(gnn.GroupNorm, 2), 8).num_groups == 2
    assert gnn.make_norm(lambda c: gnn.GroupNorm(num_channels=c, group_size=4), 8).num_groups == 2


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("gx", ["cannot parse 'gx'", "gn:G", "gn/K"]),
        ("bn:8", ["bn takes ':sync' or ':frozen'"]),
        ("gn:0", ["positive"]),
        ("gn:sync", ["gn takes ':G'"]),
        ("ln/4", ["ln takes no arguments"]),
        ("", ["cannot parse ''"]),
        ("ws+", ["cannot parse 'ws+'"]),
    ],
)
def test_unparsable_specs(spec, words):
    with pytest.raises(ValueError) as info:
        gnn.make_norm(spec, 64)
    for w in words:
        assert w in str(info.value)


def test_indivisible_groups_error_or_nearest():
    with pytest.raises(ValueError, match=r"'gn:32' does not apply to 48 channels.*'nearest' to use 24"):
        gnn.make_norm("gn:32", 48)
    assert gnn.make_norm("gn:32", 48, on_indivisible="nearest").num_groups == 24
    assert gnn.make_norm("gn:32", 16, on_indivisible="nearest").num_groups == 16
    with pytest.raises(ValueError, match="group size 16 must divide C"):
        gnn.make_norm("gn/16", 40)
    assert gnn.make_norm("gn/16", 40, on_indivisible="nearest").num_groups == 40 // 20
    with pytest.raises(ValueError, match="on_indivisible must be 'error' or 'nearest'"):
        gnn.make_norm("gn", 64, on_indivisible="round")
    assert gnn.nearest_divisor(12, 5) == 4  # 4 and 6 tie: the smaller


def test_conv_layer_follows_ws_prefix():
    assert gnn.conv_layer("ws+gn") is gnn.WSConv2d
    assert gnn.conv_layer("gn") is nn.Conv2d
    assert gnn.conv_layer("ws+bn", dims=3) is gnn.WSConv3d


def test_register_norm_extends_the_spec():
    gnn.register_norm("rms_test", lambda spec, c, o: nn.Identity())
    assert isinstance(gnn.make_norm("rms_test", 4), nn.Identity)
    with pytest.raises(ValueError, match="takes no arguments"):
        gnn.make_norm("rms_test:3", 4)


def test_positional_arguments_follow_torch():
    bn = gnn.BatchNorm(64, 1e-3, 0.01, False, False)
    ref = nn.BatchNorm2d(64, 1e-3, 0.01, False, False)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.devices) == (1e-3, 0.01, False, False, 1)
    assert (ref.eps, ref.momentum, ref.affine, ref.track_running_stats) == (1e-3, 0.01, False, False)
    with pytest.raises(TypeError):
        gnn.BatchNorm(64, 1e-5, 0.1, True, True, None, None, 8)  # devices is keyword only
    gna = gnn.GroupNormAct(8, 64, 1e-3, False)
    assert (gna.num_groups, gna.num_channels, gna.eps, gna.affine, gna.act_name) == (8, 64, 1e-3, False, "silu")
    with pytest.raises(TypeError):
        gnn.GroupNormAct(8, 64, 1e-5, True, None, None, "relu")  # act is keyword only


@pytest.mark.parametrize("act", ["gelu", nn.GELU, nn.GELU(approximate="tanh"), "leaky_relu", "hard_swish", "mish"])
def test_group_norm_act_takes_any_activation(act):
    m = gnn.GroupNormAct(4, 16, act=act)
    x = torch.randn(2, 16, 5, 5)
    want = m.act(torch.nn.functional.group_norm(x, 4, m.weight, m.bias))
    assert m.act_name is None and not isinstance(m.act, (nn.ReLU, nn.SiLU, nn.Identity))
    torch.testing.assert_close(m(x), want)
    assert list(m.state_dict()) == ["weight", "bias"]


def test_group_norm_act_takes_timm_activation_names():
    m = gnn.GroupNormAct(4, 16, act="gelu_tanh")  # not a torch.nn class name: found through timm
    assert m.act_name is None and m(torch.randn(2, 16, 3, 3)).shape == (2, 16, 3, 3)
