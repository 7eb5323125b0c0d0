"""convert_norms, set_devices and zero_init_last_gamma on real model families."""

import pytest
import timm
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import groupnorm
from groupnorm import nn as gnn
from groupnorm.convert import is_batch_norm


def no_bn_left(model):
    return not any(is_batch_norm(m) for m in model.modules())


def test_resnet50_to_gn_runs_forward_and_backward():
    model = torchvision.models.resnet50(weights=None)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    changes = groupnorm.convert_norms(model, "gn:32")
    assert len(changes) == n_bn == 53 and no_bn_left(model)
    assert changes[0].name == "bn1" and "GroupNorm(32, 64" in changes[0].new
    zeroed = groupnorm.zero_init_last_gamma(model)
    assert len(zeroed) == 16 and "layer1.0.bn3" in zeroed
    assert model.layer1[0].bn3.weight.abs().sum() == 0
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_maskrcnn_to_ws_gn_trains_a_step():
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128
    )
    changes = groupnorm.convert_norms(model, "ws+gn:32")
    assert no_bn_left(model)
    assert any(isinstance(m, gnn.WSConv2d) for m in model.modules())
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    assert len(changes) > 53
    model.train()
    images = [torch.rand(3, 128, 128)]
    masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
    masks[0, 20:60, 30:70] = 1
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 70.0, 60.0]]), "labels": torch.tensor([1]), "masks": masks}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == 1


def test_frozen_bn_models_convert():
    model = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    changes = groupnorm.convert_norms(model, "gn:32")
    assert len(changes) == 20 and no_bn_left(model)
    model(torch.randn(1, 3, 32, 32))


def test_timm_resnet_converts():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    changes = groupnorm.convert_norms(model, "gn/16")
    assert len(changes) == 20 and no_bn_left(model)
    assert len(groupnorm.zero_init_last_gamma(model)) == 8
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_timm_batchnorm_act_becomes_a_gn_norm_act_with_flat_keys():
    from timm.layers import BatchNormAct2d, GroupNormAct

    model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.GELU), BatchNormAct2d(8))
    with torch.no_grad():
        model[1].weight.normal_()
    old_keys = [k for k in model.state_dict() if "running" not in k and "num_batches" not in k]
    groupnorm.convert_norms(model, "gn:4")
    assert type(model[1]) is gnn.GroupNormAct and isinstance(model[1].act, nn.GELU) and model[1].act_name is None
    assert model[2].act_name == "relu"  # timm's default ReLU: fused
    assert list(model.state_dict()) == old_keys  # checkpoints of the GN model load by the same names
    timm_gn = nn.Sequential(nn.Conv2d(3, 8, 3), GroupNormAct(8, 4, act_layer=nn.GELU), GroupNormAct(8, 4))
    timm_gn.load_state_dict(model.state_dict())  # timm's own GroupNormAct has the same keys
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), timm_gn(x), rtol=1e-5, atol=1e-5)


def test_timm_model_with_batchnorm_act_converts():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10)
    keys = [k for k in model.state_dict() if "running" not in k and "num_batches" not in k]
    groupnorm.convert_norms(model, "gn/8", on_indivisible="nearest")
    assert no_bn_left(model) and list(model.state_dict()) == keys
    model(torch.randn(2, 3, 64, 64)).sum().backward()


def test_activation_specs_are_rejected():
    model = torchvision.models.resnet18(weights=None)
    expected = (
        r"convert_norms: spec must name a norm without an activation "
        r"\(e\.g\. 'ws\+gn:32'\); got 'ws\+gn:32\+silu'"
    )
    with pytest.raises(ValueError, match=expected):
        groupnorm.convert_norms(model, "ws+gn:32+silu")
    assert not any(isinstance(m, gnn.GroupNormAct) for m in model.modules())  # nothing changed


def test_gamma_beta_and_stats_carry_over():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.BatchNorm1d(8))
    with torch.no_grad():
        model[1].weight.normal_()
        model[1].bias.normal_()
        model[1].running_mean.normal_()
    w, b, rm = model[1].weight.clone(), model[1].bias.clone(), model[1].running_mean.clone()
    groupnorm.convert_norms(model, "gn:4")
    torch.testing.assert_close(model[1].weight.data, w)
    torch.testing.assert_close(model[1].bias.data, b)
    model = nn.Sequential(nn.BatchNorm2d(8))
    with torch.no_grad():
        model[0].running_mean.normal_()
        model[0].weight.normal_()
    rm, w = model[0].running_mean.clone(), model[0].weight.clone()
    groupnorm.convert_norms(model, "bn:frozen")
    assert isinstance(model[0], gnn.FrozenBatchNorm)
    torch.testing.assert_close(model[0].running_mean, rm)
    torch.testing.assert_close(model[0].weight, w)


def test_device_dtype_and_eps_are_kept():
    model = nn.Sequential(nn.BatchNorm2d(8, eps=1e-3).to(torch.float64))
    groupnorm.convert_norms(model, "gn:2")
    assert model[0].weight.dtype == torch.float64 and model[0].eps == 1e-3


def test_bn_spec_with_devices_and_set_devices():
    model = torchvision.models.resnet18(weights=None)
    groupnorm.convert_norms(model, "bn", devices=4)
    assert all(m.devices == 4 for m in model.modules() if isinstance(m, gnn.BatchNorm))
    assert groupnorm.set_devices(model, 2) == 20
    model(torch.randn(4, 3, 32, 32))


def test_ws_swaps_convs_keeping_parameters():
    conv = nn.Conv2d(3, 8, 3, padding=1, stride=2, bias=True)
    model = nn.Sequential(conv, nn.BatchNorm2d(8))
    weight = conv.weight
    changes = groupnorm.convert_norms(model, "gn:2", ws=True)
    assert [c.name for c in changes] == ["0", "1"]
    assert isinstance(model[0], gnn.WSConv2d) and model[0].weight is weight
    assert model[0].stride == (2, 2) and model[0].bias is conv.bias


def test_indivisible_layer_is_named_and_nothing_changes():
    model = nn.Sequential(nn.BatchNorm2d(64), nn.Sequential(nn.BatchNorm2d(48)))
    with pytest.raises(ValueError, match=r"layer '1.0' .*'gn:32' does not apply to 48 channels"):
        groupnorm.convert_norms(model, "gn:32")
    assert isinstance(model[0], nn.BatchNorm2d)  # planned before changing anything
    groupnorm.convert_norms(model, "gn:32", on_indivisible="nearest")
    assert model[1][0].num_groups == 24


def test_converting_a_bare_norm_is_a_clear_error():
    with pytest.raises(TypeError, match="model is itself a normalization layer"):
        groupnorm.convert_norms(nn.BatchNorm2d(8), "gn:4")
