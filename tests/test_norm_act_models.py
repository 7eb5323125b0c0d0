"""Norm-act layers in the models: frn, evonorm-s0 and gn+relu replace each (norm, ReLU) pair; norms no
activation follows (before a residual add, in a shortcut) stay plain."""

import pytest
import torch
from torch import nn

from groupnorm import nn as gnn
from groupnorm.models import TorchvisionStyleResNet, as_norm_act, build_model, norm_act_factory
from groupnorm.models.resnet3d import I3DResNet
from groupnorm.nn.norm import GroupNorm

NORM_ACT_SPECS = ("frn", "evonorm-s0:4", "gn:4+relu")
NORMS = (nn.GroupNorm, nn.modules.batchnorm._NormBase, gnn.FilterResponseNorm, gnn.EvoNormS0)

# name -> (spec -> model, input shape, (norm-act slots, plain norms)), counted by hand from each architecture
MODELS = {
    "resnet": (lambda s: build_model("resnet", norm=s, num_classes=3, in_channels=1, depth=8, width=8),
               (2, 1, 12, 12), (1 + 3, 3 + 2)),  # stem + norm1 of 3 blocks; norm2 of 3 + 2 shortcuts
    "tvresnet": (lambda s: build_model("tvresnet", norm=s, num_classes=3, in_channels=1, depth=10, width=8),
                 (2, 1, 32, 32), (1 + 4, 4 + 3)),  # stem + bn1 of 4 blocks; bn2 of 4 + 3 downsamples
    "tvresnet-26": (lambda s: build_model("tvresnet", norm=s, num_classes=3, in_channels=1, depth=26, width=4),
                    (2, 1, 32, 32), (1 + 2 * 8, 8 + 4)),  # bn1, bn2 of 8 bottlenecks; bn3 of 8 + 4 downsamples
    "vgg": (lambda s: build_model("vgg", norm=s, num_classes=3, in_channels=1, depth=11, width=8),
            (2, 1, 16, 16), (8, 0)),  # every norm is followed by a ReLU
    "resnet3d": (lambda s: build_model("resnet3d", norm=s, num_classes=3, in_channels=1, depth=8, width=8),
                 (2, 1, 4, 12, 12), (1 + 3, 3 + 2)),
    "i3d": (lambda s: I3DResNet((1, 1, 1, 1), 3, 1, norm_act_factory(s), width=8),
            (2, 1, 4, 32, 32), (1 + 2 * 4, 4 + 4)),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _is_norm_act(m: nn.Module) -> bool:
    if isinstance(m, gnn.GroupNormAct):
        return m.act != "identity"
    return (isinstance(m, gnn.FilterResponseNorm) and m.tlu) or (isinstance(m, gnn.EvoNormS0) and m.act)


def _is_plain(m: nn.Module, spec: str) -> bool:
    kind = {"frn": gnn.FilterResponseNorm, "evonorm-s0:4": gnn.EvoNormS0, "gn:4+relu": GroupNorm}[spec]
    return type(m) is kind and not _is_norm_act(m)


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[set[str], set[str], int]:
    """Run model(x): (norms whose output goes straight into a ReLU, the other norms, the ReLU calls).

    Tensors are matched by identity (an nn.Identity passes its input on), so a residual add between a
    norm and a ReLU breaks the match, as it should.
    """
    outputs: dict[str, torch.Tensor] = {}
    relu_inputs: list[torch.Tensor] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, NORMS):
            hooks.append(m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out)))
        elif isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_pre_hook(lambda _m, inp: relu_inputs.append(inp[0])))
    model(x)
    for h in hooks:
        h.remove()
    followed = {name for name, out in outputs.items() if any(out is r for r in relu_inputs)}
    return followed, set(outputs) - followed, len(relu_inputs)


@pytest.mark.parametrize("spec", NORM_ACT_SPECS)
@pytest.mark.parametrize("name", list(MODELS))
def test_norm_act_layers_replace_each_norm_relu_pair(name, spec):
    build, shape, (slots, plain) = MODELS[name]
    x = torch.randn(shape)
    followed, others, relus = _trace(build("gn:4"), x)  # where a plain norm is followed by a ReLU
    assert (len(followed), len(others)) == (slots, plain)
    model = build(spec)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, NORMS)}
    assert set(norms) == followed | others
    assert {n for n, m in norms.items() if _is_norm_act(m)} == followed
    assert all(_is_plain(norms[n], spec) for n in others), f"{name}: a norm before a residual add is not plain"
    followed_fused, _, relus_fused = _trace(model, x)
    assert not followed_fused, f"{name} with {spec}: a ReLU follows a norm-act layer: {sorted(followed_fused)}"
    assert relus_fused == relus - slots  # only the ReLUs after the residual adds are left


@pytest.mark.parametrize("spec", NORM_ACT_SPECS)
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_in_both_memory_formats(name, spec):
    build, shape, _ = MODELS[name]
    model = build(spec)
    x = torch.randn(shape)
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    y = model(x)
    y.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    y_cl = model.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
    torch.testing.assert_close(y_cl, y, atol=1e-4, rtol=1e-4)
    y_cl.square().mean().backward()
    for n, p in model.named_parameters():  # float32 noise over a deep net: tolerance relative to the largest
        atol = 2e-4 * max(1.0, grads[n].abs().max().item())
        torch.testing.assert_close(p.grad, grads[n], atol=atol, rtol=1e-3, msg=f"{name} {spec}: grad of {n}")


def test_plain_specs_keep_their_relus():
    model = build_model("resnet", norm="gn:4", num_classes=3, in_channels=1, depth=8, width=8)
    assert isinstance(model.blocks[0].act1, nn.ReLU) and isinstance(model.stem[2], nn.ReLU)
    model = build_model("resnet", norm="frn", num_classes=3, in_channels=1, depth=8, width=8)
    assert isinstance(model.blocks[0].act1, nn.Identity) and isinstance(model.blocks[0].relu, nn.ReLU)
    assert model.blocks[0].norm2.tau is None and model.blocks[0].norm1.tau is not None


def test_resnet50_with_a_norm_act_spec_has_torchvisions_names():
    import torchvision

    ours = build_model("resnet50", norm="gn+relu", num_classes=10)
    assert isinstance(ours, TorchvisionStyleResNet)
    theirs = torchvision.models.resnet50(weights=None, num_classes=10)
    assert list(ours.state_dict()) == [k for k in theirs.state_dict() if "running" not in k and "batches" not in k]
    assert isinstance(build_model("resnet50", norm="gn", num_classes=10), torchvision.models.ResNet)
    assert isinstance(ours.layer1[0].bn1, gnn.GroupNormAct) and type(ours.layer1[0].bn3) is GroupNorm


def test_make_norm_plain_forms():
    assert repr(gnn.make_norm("gn:4+relu", 8, act=False)) == repr(GroupNorm(4, 8))
    assert type(gnn.make_norm("ln+silu", 8, act=False)) is gnn.LayerNorm
    assert type(gnn.make_norm("in+relu", 8, act=False)) is gnn.InstanceNorm
    assert gnn.make_norm("frn", 8, act=False).tau is None
    assert gnn.make_norm("evonorm-s0/4", 8, act=False).v is None
    assert type(gnn.make_norm("bn", 8, act=False)) is gnn.BatchNorm  # plain specs ignore act


def test_a_plain_callable_is_a_plain_norm():
    norm = as_norm_act(lambda c: nn.GroupNorm(2, c))
    assert not norm.fused and isinstance(norm(8, act=False), nn.GroupNorm) and isinstance(norm.activation(), nn.ReLU)
    with pytest.raises(TypeError, match="norm must be a NormActLayer"):
        as_norm_act("gn:4")
    assert norm_act_factory("frn").fused and not norm_act_factory("ws+gn:4").fused


def test_mask_rcnn_places_norm_act_layers(tmp_path):
    from torchvision.ops.misc import Conv2dNormActivation

    from groupnorm.models.maskrcnn import build_mask_rcnn
    from groupnorm.train import DetectionConfig

    cfg = DetectionConfig(
        scene_size=64, width=8, backbone_norm="frn", fpn_channels=16, head_channels=16, fc_channels=32,
        fpn_norm="frn", head_norm="frn", trainable_layers=5, devices=2,
    )  # fmt: skip
    model = build_mask_rcnn(cfg, 11)
    fpn = [m for m in model.backbone.fpn.modules() if isinstance(m, gnn.FilterResponseNorm)]
    assert len(fpn) == 8 and not any(m.tlu for m in fpn)  # no activation follows the FPN's convs
    for head in (model.roi_heads.box_head, model.roi_heads.mask_head):
        blocks = [m for m in head.modules() if isinstance(m, Conv2dNormActivation)]
        assert len(blocks) == 4
        assert all(b[1].tlu and isinstance(b[2], nn.Identity) for b in blocks)
    body = model.backbone.body
    assert body.layer1[0].bn1.tlu and not body.layer1[0].bn2.tlu


def test_a_frn_run_trains_through_the_engine(tmp_path):
    from groupnorm.train import TrainConfig, train_run

    cfg = TrainConfig(
        norm="frn", train_images=256, val_images=128, epochs=1, images_per_device=4, devices=4, width=8, threads=1
    )
    result = train_run(cfg, tmp_path, log=lambda m: None)
    assert result["status"] == "finished" and result["epochs"] == 1, result
    assert 0 <= result["final_val_error"] <= 100 and result["norm"] == "frn"
