"""Model builders; every one takes a norm spec (see groupnorm.nn.spec).

build_model("resnet", norm="gn:8", depth=20, width=16, num_classes=10, in_channels=1)
build_model("resnet50", norm="gn", num_classes=1000)
build_model("vgg", norm="gn:16", depth=16, width=32, num_classes=10, in_channels=1)

Video models (clips (N, C, T, H, W)) are in the registry too; Mask R-CNN is built from a detection
config by groupnorm.models.maskrcnn.build_mask_rcnn.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from groupnorm.convert import zero_init_last_gamma
from groupnorm.models import resnet3d
from groupnorm.models.cifar_resnet import BasicBlock, CifarResNet
from groupnorm.models.tv_resnet import TorchvisionStyleResNet
from groupnorm.models.vgg import VGG
from groupnorm.nn.spec import NormSpec, OnIndivisible, conv_layer, make_norm, parse_norm_spec

__all__ = ["MODELS", "VGG", "BasicBlock", "CifarResNet", "TorchvisionStyleResNet", "build_model", "norm_factory"]


def norm_factory(
    spec: str | NormSpec, devices: int = 1, on_indivisible: OnIndivisible = "error"
) -> Callable[[int], nn.Module]:
    """``num_channels -> norm layer`` for ``spec``: what torchvision calls a ``norm_layer``."""
    return partial(make_norm, parse_norm_spec(spec), devices=devices, on_indivisible=on_indivisible)


def _resnet(spec, num_classes, in_channels, devices, on_indivisible, *, depth=20, width=16):
    norm = norm_factory(spec, devices, on_indivisible)
    return CifarResNet(depth, width, num_classes, in_channels, norm, conv_layer(spec))


def _resnet_s2(spec, num_classes, in_channels, devices, on_indivisible, *, depth=8, width=64):
    """The CIFAR-style ResNet with a stride-2 stem: a wide net (the groups study's) at a quarter of the cost."""
    norm = norm_factory(spec, devices, on_indivisible)
    return CifarResNet(depth, width, num_classes, in_channels, norm, conv_layer(spec), stem_stride=2)


def _resnet50(spec, num_classes, in_channels, devices, on_indivisible, *, depth=50, width=64):
    if (depth, width) != (50, 64):
        raise ValueError(f"resnet50 is torchvision's ResNet-50: depth 50, width 64; got depth={depth}, width={width}")
    import torchvision

    from groupnorm.convert import convert_norms

    model = torchvision.models.resnet50(
        weights=None, num_classes=num_classes, norm_layer=norm_factory(spec, devices, on_indivisible)
    )
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if parse_norm_spec(spec).ws:
        convert_norms(model, "none", ws=True)  # no BN left to replace: swaps the convs only
    return model


def _tvresnet(spec, num_classes, in_channels, devices, on_indivisible, *, depth=10, width=16):
    """A torchvision-style ResNet of any width (the detection experiment's backbone, pre-trained as a classifier)."""
    norm = norm_factory(spec, devices, on_indivisible)
    return TorchvisionStyleResNet(depth, width, num_classes, in_channels, norm, conv_layer(spec))


def _vgg(spec, num_classes, in_channels, devices, on_indivisible, *, depth=16, width=64):
    norm = norm_factory(spec, devices, on_indivisible)
    return VGG(
        depth, width, num_classes, in_channels, norm, conv_layer(spec), bias=spec.kind == "none", act=not spec.act
    )


# name -> builder(spec, num_classes, in_channels, devices, on_indivisible, *, depth, width)
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet": _resnet,
    "resnet-s2": _resnet_s2,
    "resnet50": _resnet50,
    "tvresnet": _tvresnet,
    "vgg": _vgg,
    **resnet3d.BUILDERS,  # resnet3d, i3d-resnet50: clips (N, C, T, H, W)
}


def build_model(
    name: str,
    *,
    norm: str | NormSpec,
    num_classes: int,
    in_channels: int = 3,
    devices: int = 1,
    on_indivisible: OnIndivisible = "error",
    zero_init_last: bool = True,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` with every norm from ``norm``; gamma = 0 in each block's last norm.

    Raises ValueError before anything trains where the spec does not fit a layer.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}")
    model = MODELS[name](parse_norm_spec(norm), num_classes, in_channels, devices, on_indivisible, **kwargs)
    if zero_init_last:
        zero_init_last_gamma(model)
    return model
