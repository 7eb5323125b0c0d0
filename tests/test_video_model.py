"""3D ResNets: norms over (T, H, W), temporal kernels, channels_last_3d, inflation of 2D checkpoints."""

import pytest
import torch
from torch import nn

from groupnorm.models import MODELS, build_model, norm_factory
from groupnorm.models.cifar_resnet import CifarResNet
from groupnorm.models.resnet3d import (
    BasicBlock3d,
    I3DResNet,
    ResNet3d,
    inflate_state_dict,
    inflate_weight,
    load_inflated,
    temporal_kernels,
)
from groupnorm.nn import GroupNorm
from groupnorm.nn.conv import WSConv3d


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors: one thread is faster than two, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(norm="gn:4", **kw):
    return ResNet3d(8, 8, 5, 1, norm_factory(norm, devices=kw.pop("devices", 1)), **kw)


def test_forward_shapes_and_temporal_kernels():
    model = small(temporal="alternate")
    assert model(torch.randn(2, 1, 6, 12, 12)).shape == (2, 5)
    kernels = [b.conv1.kernel_size for b in model.blocks]
    assert kernels == [(3, 3, 3), (1, 3, 3), (3, 3, 3)]
    assert all(b.conv2.kernel_size == (1, 3, 3) for b in model.blocks)
    assert model.stem[0].kernel_size == (3, 3, 3)
    assert [b.conv1.kernel_size[0] for b in small(temporal="none").blocks] == [1, 1, 1]
    assert temporal_kernels("all", 2) == (3, 3) and temporal_kernels((1, 5), 2) == (1, 5)
    strided = small(temporal_stride=2, stem_stride=2)
    assert strided(torch.randn(1, 1, 8, 16, 16)).shape == (1, 5)
    assert strided.blocks[1].conv1.stride == (2, 2, 2) and strided.stem[0].stride == (1, 2, 2)


def test_registered_builders():
    for name in ("resnet3d", "i3d-resnet50"):
        assert name in MODELS
    model = build_model("resnet3d", norm="gn:8", num_classes=16, in_channels=1)
    assert isinstance(model.blocks[0], BasicBlock3d) and model.stem[0].stride == (1, 2, 2)
    assert model.blocks[1].conv1.stride == (2, 2, 2)  # T halves with H and W entering stage 2
    assert model.blocks[0].norm2.weight.abs().sum() == 0  # zero-init of each block's last gamma
    ws = build_model("resnet3d", norm="ws+gn:8", num_classes=16, in_channels=1)
    assert isinstance(ws.blocks[0].conv1, WSConv3d)


def test_gn_normalises_each_clip_over_its_group_and_t_h_w():
    """GN statistics over (C/G, T, H, W) of one clip: the output of a clip does not depend on the others,
    and after the stem's GN every (clip, group) has mean 0 and variance 1 over (C/G, T, H, W)."""
    model = small("gn:4")
    model.train()
    x = torch.randn(4, 1, 6, 12, 12)
    seen = {}
    model.stem[1].register_forward_hook(lambda m, i, o: seen.update(out=o.clone()))  # before the in-place ReLU
    y = model(x)
    out = seen["out"].reshape(4, 4, -1)
    torch.testing.assert_close(out.mean(-1), torch.zeros(4, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(4, 4), atol=1e-3, rtol=0)
    x2 = x.clone()
    x2[1:] = torch.randn(3, 1, 6, 12, 12) * 5
    torch.testing.assert_close(model(x2)[0], y[0])
    assert isinstance(model.stem[1], GroupNorm)


def test_bn_statistics_per_virtual_device_over_clips_t_h_w():
    """BN with 2 virtual devices: the first device's clips see only each other, over (N/D, T, H, W)."""
    model = small("bn", devices=2)
    model.train()
    x = torch.randn(4, 1, 4, 8, 8)
    y = model(x)
    x2 = x.clone()
    x2[2:] = torch.randn(2, 1, 4, 8, 8) * 3
    y2 = model(x2)
    torch.testing.assert_close(y2[:2], y[:2])
    assert not torch.allclose(y2[2:], y[2:])
    x3 = x.clone()
    x3[1] = torch.randn(1, 4, 8, 8) * 3  # a clip on the same device changes the others' outputs
    assert not torch.allclose(model(x3)[0], y[0])


@pytest.mark.parametrize("norm", ["bn", "gn:4"])
def test_channels_last_3d_gives_the_same_outputs_and_gradients(norm):
    torch.manual_seed(0)
    model = small(norm, devices=2)
    fast = small(norm, devices=2)
    fast.load_state_dict(model.state_dict())
    fast = fast.to(memory_format=torch.channels_last_3d)
    x = torch.randn(4, 1, 4, 8, 8)
    y, y_cl = model(x), fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(y_cl, y, atol=1e-4, rtol=1e-4)
    y.square().sum().backward()
    y_cl.square().sum().backward()
    torch.testing.assert_close(fast.stem[0].weight.grad, model.stem[0].weight.grad, atol=1e-3, rtol=1e-3)


def test_inflated_weights_repeat_over_time_and_keep_the_2d_response():
    w = torch.randn(4, 3, 3, 3)
    mean = inflate_weight(w, (4, 3, 5, 3, 3), "mean")
    torch.testing.assert_close(mean.sum(2), w)
    center = inflate_weight(w, (4, 3, 3, 3, 3), "center")
    assert torch.equal(center[:, :, 1], w) and center[:, :, [0, 2]].abs().sum() == 0
    grey = inflate_weight(torch.randn(4, 1, 3, 3), (4, 3, 1, 3, 3))
    assert grey.shape == (4, 3, 1, 3, 3)
    with pytest.raises(ValueError, match="only a one-channel"):
        inflate_weight(torch.randn(4, 2, 3, 3), (4, 3, 1, 3, 3))
    with pytest.raises(ValueError, match="method must be"):
        inflate_weight(w, (4, 3, 3, 3, 3), "sum")


@pytest.mark.parametrize(("norm", "method", "temporal"), [("gn:4", "center", "alternate"), ("bn", "mean", "none")])
def test_a_static_clip_through_the_inflated_model_gives_the_2d_output(norm, method, temporal):
    """The 'boring video' check: T copies of an image through the inflated 3D model = the 2D model on the image
    (center inflation for any temporal kernels; mean inflation with 1-frame kernels, away from temporal borders)."""
    torch.manual_seed(0)
    net2d = CifarResNet(8, 8, 5, 1, norm_factory(norm))
    for m in net2d.modules():  # non-trivial norm parameters and statistics
        if hasattr(m, "weight") and m.weight is not None and m.weight.dim() == 1:
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if getattr(m, "running_var", None) is not None:
            m.running_var.uniform_(0.5, 2)
            m.running_mean.uniform_(-0.5, 0.5)
    net3d = ResNet3d(8, 8, 5, 1, norm_factory(norm), temporal=temporal, stem_temporal=1 if temporal == "none" else 3)
    report = inflate_state_dict(net2d.state_dict(), net3d, method=method, strict=True)
    assert len(report.inflated) == sum(1 for m in net3d.modules() if isinstance(m, nn.Conv3d))
    net2d.eval()
    net3d.eval()
    image = torch.randn(3, 1, 12, 12)
    clip = image[:, :, None].expand(3, 1, 5, 12, 12)
    torch.testing.assert_close(net3d(clip), net2d(image), atol=1e-4, rtol=1e-4)


def test_inflation_reports_what_it_did_and_checks_its_source(tmp_path):
    net2d = CifarResNet(8, 8, 10, 1, norm_factory("gn:4"))
    net3d = small("gn:4")  # 5 classes: the head cannot carry over
    report = inflate_state_dict(net2d, net3d)
    assert report.skipped == ["fc.weight", "fc.bias"] and not report.missing and report.inflated
    with pytest.raises(ValueError, match="strict"):
        inflate_state_dict(net2d, net3d, strict=True)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net2d.state_dict(), "epoch": 3}, path)  # an engine checkpoint
    assert inflate_state_dict(path, small("gn:4")).inflated == report.inflated
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        inflate_state_dict(tmp_path / "nothing.pt", net3d)
    with pytest.raises(TypeError, match="source must be"):
        inflate_state_dict(42, net3d)
    with pytest.raises(ValueError, match="no tensor of the source matches"):
        load_inflated(small("gn:4"), {"other.weight": torch.zeros(3)})


def test_the_video_task_inflates_its_init_and_keeps_the_pretrained_gammas(tmp_path):
    from groupnorm.train import VideoConfig, VideoTask
    from groupnorm.train.distributed import Dist
    from groupnorm.train.engine import load_init

    net2d = CifarResNet(8, 8, 10, 1, norm_factory("gn:4"))
    with torch.no_grad():
        net2d.blocks[0].norm2.weight.fill_(0.5)
    (tmp_path / "pre").mkdir()
    torch.save({"model": net2d.state_dict(), "epoch": 4}, tmp_path / "pre" / "checkpoint.pt")  # an engine checkpoint
    cfg = VideoConfig(norm="gn:4", width=8, frames=4, init="pre/checkpoint.pt", zero_init_last=False)
    model = build_model("resnet3d", norm="gn:4", num_classes=32, in_channels=1, depth=8, width=8, zero_init_last=False)
    VideoTask(cfg, Dist(0, 1, 0, torch.device("cpu")), 1, tmp_path).initialize(model, load_init(cfg, tmp_path))
    torch.testing.assert_close(model.blocks[0].norm2.weight, net2d.blocks[0].norm2.weight)  # not re-zeroed
    torch.testing.assert_close(
        model.blocks[1].conv2.weight[:, :, 0], net2d.blocks[1].conv2.weight
    )  # a 1-frame kernel here
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_init(cfg.replace(init="nope.pt"), tmp_path)


def test_i3d_resnet50_takes_the_engine_resnet50_weights_by_name():
    with torch.device("meta"):
        net2d = build_model("resnet50", norm="gn", num_classes=1000, depth=50, width=64)
        net3d = build_model("i3d-resnet50", norm="gn", num_classes=1000, in_channels=3, depth=50, width=64)
    report = inflate_state_dict(net2d, net3d, strict=True)
    assert "conv1.weight" in report.inflated and "layer4.2.conv3.weight" in report.inflated
    assert net3d.conv1.kernel_size == (5, 7, 7)
    assert [b.conv1.kernel_size[0] for b in net3d.layer2] == [1, 3, 1, 3]  # every other block: 3x1x1
    with pytest.raises(ValueError, match="depth 50 and width 64"):
        build_model("i3d-resnet50", norm="gn", num_classes=10, depth=18, width=64)
    tiny = I3DResNet((1, 1, 1, 1), 7, 1, norm_factory("gn:4"), width=8)
    assert tiny(torch.randn(2, 1, 4, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"depth": 9}, ValueError, "depth must be 6n\\+2"),
        ({"temporal": "sometimes"}, ValueError, "temporal must be"),
        ({"temporal": (3, 2, 1)}, ValueError, "temporal must be"),
        ({"stem_temporal": 2}, ValueError, "stem_temporal must be an odd"),
        ({"temporal_stride": 3}, ValueError, "temporal_stride must be 1 or 2"),
        ({"conv": nn.Conv2d}, TypeError, "conv must be nn.Conv3d"),
    ],
)
def test_bad_arguments_are_named(kw, error, words):
    args = {"depth": 8, "width": 8, "num_classes": 5, "in_channels": 1, "norm": norm_factory("gn:4"), **kw}
    with pytest.raises(error, match=words):
        ResNet3d(**args)


def test_images_instead_of_clips_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects clips \(N, C, T, H, W\)"):
        small()(torch.randn(2, 1, 12, 12))
