"""Model builders; every one takes a norm spec (see groupnorm.nn.spec).

build_model("resnet", norm="gn:8", depth=20, width=16, num_classes=10, in_channels=1)
build_model("resnet50", norm="gn", num_classes=1000)
build_model("vgg", norm="gn:16", depth=16, width=32, num_classes=10, in_channels=1)

Video models (clips (N, C, T, H, W)) are in the registry too; Mask R-CNN is built from a detection
config by groupnorm.models.maskrcnn.build_mask_rcnn.

Norm-act layers. Every builder takes its norms from ``norm_act_factory(spec)`` (timm's
``norm_act_layer``): a norm a ReLU follows gets ``norm(C)`` and then ``norm.activation()``; a norm no
activation follows gets ``norm(C, act=False)``. For a plain spec (bn, gn:8, ws+gn:8, ln, in, none, brn)
both are ``make_norm(spec, C)`` and the activation is the model's ReLU: the same model as ever. For a
norm-act spec the first is the norm-act layer (GroupNormAct for gn:32+relu, FRN + TLU for frn,
EvoNorm-S0 for evonorm-s0) with an Identity in place of the ReLU, the second its plain form (GN, FRN
without TLU, EvoNorm-S0 without its gate: x / group_std * gamma + beta):

    model             norm-act layers (norm, then ReLU)           plain norms (no activation follows)
    resnet, resnet-s2 stem norm; norm1 of each block              norm2 (before the add); shortcut norm
    tvresnet          bn1; bn1 of each block (and bn2 of a        the last bn of each block (before the
    resnet50          bottleneck)                                 add); downsample's norm
    vgg               every norm                                  none
    resnet3d          as resnet                                   as resnet
    i3d-resnet50      as resnet50                                 as resnet50

The ReLU after each residual add stays. ``resnet50`` is torchvision's model for a plain spec; for a
norm-act spec, whose forward torchvision's blocks cannot express (one ReLU module serves every slot),
it is TorchvisionStyleResNet at depth 50, width 64: the same modules, names and state_dict keys.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from groupnorm.convert import zero_init_last_gamma
from groupnorm.models import resnet3d
from groupnorm.models.cifar_resnet import BasicBlock, CifarResNet
from groupnorm.models.norm_act import NormActLayer, as_norm_act, norm_act_factory
from groupnorm.models.tv_resnet import TorchvisionStyleResNet
from groupnorm.models.vgg import VGG
from groupnorm.nn.spec import NormSpec, OnIndivisible, conv_layer, parse_norm_spec

__all__ = [
    "MODELS",
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "NormActLayer",
    "TorchvisionStyleResNet",
    "as_norm_act",
    "build_model",
    "norm_act_factory",
    "norm_factory",
]


def norm_factory(spec: str | NormSpec, devices: int = 1, on_indivisible: OnIndivisible = "error") -> NormActLayer:
    """``num_channels -> norm layer`` for ``spec``: what torchvision calls a ``norm_layer``.

    The same object as :func:`norm_act_factory`'s: ``norm(C)`` is ``make_norm(spec, C)``, and the
    model builders also ask it for the plain form (``norm(C, act=False)``) and the activation.
    """
    return norm_act_factory(spec, devices, on_indivisible)


def _resnet(spec, num_classes, in_channels, devices, on_indivisible, *, depth=20, width=16):
    norm = norm_factory(spec, devices, on_indivisible)
    return CifarResNet(depth, width, num_classes, in_channels, norm, conv_layer(spec))


def _resnet_s2(spec, num_classes, in_channels, devices, on_indivisible, *, depth=8, width=64):
    """The CIFAR-style ResNet with a stride-2 stem: a wide net (the groups study's) at a quarter of the cost."""
    norm = norm_factory(spec, devices, on_indivisible)
    return CifarResNet(depth, width, num_classes, in_channels, norm, conv_layer(spec), stem_stride=2)


def _resnet50(spec, num_classes, in_channels, devices, on_indivisible, *, depth=50, width=64):
    """torchvision's ResNet-50 built with our norms; for a norm-act spec, TorchvisionStyleResNet(50, 64)
    (the same names and keys, with the ReLUs after norm-act layers left out: see the module docstring)."""
    if (depth, width) != (50, 64):
        raise ValueError(f"resnet50 is torchvision's ResNet-50: depth 50, width 64; got depth={depth}, width={width}")
    import torchvision

    from groupnorm.convert import convert_norms

    norm = norm_act_factory(spec, devices, on_indivisible)
    if norm.fused:  # torchvision's blocks put one ReLU module after every norm: build the same net ourselves
        return TorchvisionStyleResNet(50, 64, num_classes, in_channels, norm, conv_layer(spec))
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes, norm_layer=norm)
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
    return VGG(depth, width, num_classes, in_channels, norm, conv_layer(spec), bias=spec.kind == "none")


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
