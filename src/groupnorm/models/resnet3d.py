"""3D ResNets for video (I3D-style, paper Sec. 6.3): norms over (T, H, W), inflation of 2D checkpoints.

Every norm comes from a norm spec and normalises over all trailing dims, so on a clip
(N, C, T, H, W) BN takes statistics over (N, T, H, W) of each (virtual) device, GN over
(C/G, T, H, W) of each clip: the paper's "normalising over (T, H, W)".

    ResNet3d         CIFAR-style ResNet-(6n+2) of 3D basic blocks; parameter names are those of
                     groupnorm's 2D CifarResNet, so its checkpoints inflate one to one.
    I3DResNet        the paper's I3D ResNet-50 (bottlenecks [3, 4, 6, 3], 5x7x7 stem, temporal
                     pooling after res2); parameter names are torchvision's ResNet-50's.

Temporal kernels sit in some blocks only (``temporal="alternate"``: every other block, as in
I3D / non-local networks; ``"all"``; ``"none"``: a C2D baseline; or one kernel size per block).

Inflation (Carreira & Zisserman 2017) turns a 2D checkpoint into 3D initial weights:
``inflate_state_dict(state_2d, model_3d)`` repeats each k x k kernel along time and divides by
the temporal size ("mean": a static clip then gives the 2D activations, away from the
temporal borders) or puts it at the temporal centre ("center": exactly the 2D network applied
frame by frame). Norm parameters and statistics carry over; a head of another shape is left
to train from scratch, as when fine-tuning an ImageNet model on Kinetics.

Norm-act layers (a ``norm_act_factory`` spec such as ``frn``), as in the 2D models: the stem's norm
and every norm a ReLU follows (``norm1`` of a basic block, ``bn1`` and ``bn2`` of a bottleneck) are
norm-act layers with an Identity in place of that ReLU (``act1``, ``act2``; the stem's ``relu``);
a block's last norm (before the residual add) and the shortcut's norm stay plain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from groupnorm.models.inflate import Inflation, inflate_state_dict, inflate_weight, load_inflated
from groupnorm.models.norm_act import NormActLayer, as_norm_act, norm_act_factory
from groupnorm.nn.spec import conv_layer

__all__ = [
    "BasicBlock3d",
    "Bottleneck3d",
    "I3DResNet",
    "Inflation",
    "ResNet3d",
    "inflate_state_dict",
    "inflate_weight",
    "load_inflated",
    "temporal_kernels",
]

Temporal = Literal["alternate", "all", "none"] | Sequence[int]

_TEMPORAL_HELP = "'alternate', 'all', 'none', or one odd temporal kernel size per block"


def temporal_kernels(temporal: Temporal, blocks: int, size: int = 3) -> tuple[int, ...]:
    """The temporal kernel size of each of ``blocks`` residual blocks.

    ``"alternate"``: ``size`` in blocks 0, 2, 4, ... and 1 in the others; ``"all"``: ``size``
    everywhere; ``"none"``: 1 everywhere (frame-by-frame 2D convs, a C2D baseline); or an
    explicit sequence of odd sizes, one per block.
    """
    if isinstance(temporal, str):
        if temporal == "alternate":
            return tuple(size if i % 2 == 0 else 1 for i in range(blocks))
        if temporal == "all":
            return (size,) * blocks
        if temporal == "none":
            return (1,) * blocks
        raise ValueError(f"temporal must be {_TEMPORAL_HELP}; got {temporal!r}")
    kernels = tuple(temporal)
    if len(kernels) != blocks or not all(isinstance(k, int) and k >= 1 and k % 2 == 1 for k in kernels):
        raise ValueError(f"temporal must be {_TEMPORAL_HELP} ({blocks} blocks here); got {temporal!r}")
    return kernels


def _check_conv(conv: type) -> None:
    if not (isinstance(conv, type) and issubclass(conv, nn.Conv3d)):
        raise TypeError(f"conv must be nn.Conv3d or a subclass (e.g. WSConv3d); got {conv!r}")


class BasicBlock3d(nn.Module):
    """kt x 3 x 3 conv - norm - relu - 1 x 3 x 3 conv - norm, plus the shortcut (1x1x1 conv and norm
    where the shape changes). Names as in the 2D CifarResNet's BasicBlock, for inflation."""

    last_norm_name: str | None = "norm2"  # zero_init_last_gamma zeroes its gamma

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: tuple[int, int, int],
        temporal_kernel: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv3d,
    ) -> None:
        super().__init__()
        norm = as_norm_act(norm)
        kt = temporal_kernel
        self.conv1 = conv(cin, cout, (kt, 3, 3), stride, (kt // 2, 1, 1), bias=False)
        self.norm1 = norm(cout)
        self.act1 = norm.activation()
        self.conv2 = conv(cout, cout, (1, 3, 3), 1, (0, 1, 1), bias=False)
        self.norm2 = norm(cout, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if any(s != 1 for s in stride) or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout, act=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3d(nn.Module):
    """A CIFAR-style ResNet-(6n+2) for clips (N, C, T, H, W): the 3D twin of groupnorm's CifarResNet.

    Stem: a ``stem_temporal`` x 3 x 3 conv; three stages of n basic blocks of widths w, 2w, 4w,
    spatial stride 2 entering stages 2 and 3 (and temporal stride ``temporal_stride`` there);
    global average pooling over (T, H, W) and a linear head.

    Args:
        depth: 6n + 2 (8, 14, 20, ...).
        width: channels of the first stage.
        num_classes, in_channels: of the data.
        norm: a NormActLayer (groupnorm.models.norm_act_factory(spec)) or a plain ``num_channels -> norm``.
        conv: nn.Conv3d, or WSConv3d for ws+ specs.
        temporal: which blocks have temporal kernels (see :func:`temporal_kernels`).
        stem_temporal: temporal kernel size of the stem conv (odd).
        stem_stride: spatial stride of the stem conv (2 quarters the cost of every later layer).
        temporal_stride: 1 (keep T, as I3D does in its residual stages) or 2 (halve T entering
            stages 2 and 3: cheaper on long clips).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv3d,
        *,
        temporal: Temporal = "alternate",
        stem_temporal: int = 3,
        stem_stride: int = 1,
        temporal_stride: int = 1,
    ) -> None:
        super().__init__()
        _check_conv(conv)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet3d: depth must be 6n+2 with n >= 1 (8, 14, 20, ...); got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNet3d: width must be a positive int; got {width!r}")
        if not isinstance(stem_temporal, int) or stem_temporal < 1 or stem_temporal % 2 == 0:
            raise ValueError(f"ResNet3d: stem_temporal must be an odd positive int; got {stem_temporal!r}")
        if stem_stride not in (1, 2):
            raise ValueError(f"ResNet3d: stem_stride must be 1 or 2; got {stem_stride!r}")
        if temporal_stride not in (1, 2):
            raise ValueError(f"ResNet3d: temporal_stride must be 1 or 2; got {temporal_stride!r}")
        n = (depth - 2) // 6
        kernels = temporal_kernels(temporal, 3 * n)
        norm = as_norm_act(norm)
        self.stem = nn.Sequential(
            conv(
                in_channels,
                width,
                (stem_temporal, 3, 3),
                (1, stem_stride, stem_stride),
                (stem_temporal // 2, 1, 1),
                bias=False,
            ),
            norm(width),
            norm.activation(),
        )
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                s = 2 if stage and i == 0 else 1
                stride = (temporal_stride if s == 2 else 1, s, s)
                blocks.append(BasicBlock3d(cin, cout, stride, kernels[len(blocks)], norm, conv))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"ResNet3d expects clips (N, C, T, H, W); got shape {tuple(x.shape)}")
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


class Bottleneck3d(nn.Module):
    """kt x 1 x 1 conv - norm - relu - 1 x 3 x 3 conv (spatial stride) - norm - relu - 1x1x1 conv - norm,
    plus the shortcut. Names as in torchvision's Bottleneck (bn1..bn3, downsample), for inflation."""

    expansion = 4
    last_norm_name: str | None = "bn3"

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        temporal_kernel: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv3d,
    ) -> None:
        super().__init__()
        norm = as_norm_act(norm)
        kt, cout = temporal_kernel, planes * self.expansion
        self.conv1 = conv(cin, planes, (kt, 1, 1), 1, (kt // 2, 0, 0), bias=False)
        self.bn1 = norm(planes)
        self.act1 = norm.activation()
        self.conv2 = conv(planes, planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.bn2 = norm(planes)
        self.act2 = norm.activation()
        self.conv3 = conv(planes, cout, 1, bias=False)
        self.bn3 = norm(cout, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, (1, stride, stride), bias=False), norm(cout, act=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class I3DResNet(nn.Module):
    """The paper's video model: ResNet-50 I3D (Carreira & Zisserman 2017; Wang et al. 2018's variant).

    conv1 5x7x7 (spatial stride 2), 1x3x3 max pool, res2, a 3x1x1 temporal max pool (stride 2),
    res3-res5 of bottlenecks whose first conv is 3x1x1 in every other block, global average
    pooling and a linear head. Names are torchvision's ResNet-50's, so a checkpoint of the
    engine's ``resnet50`` inflates into it with :func:`inflate_state_dict`.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int,
        in_channels: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv3d,
        *,
        width: int = 64,
        temporal: Temporal = "alternate",
        stem_temporal: int = 5,
    ) -> None:
        super().__init__()
        _check_conv(conv)
        kernels = temporal_kernels(temporal, sum(layers))
        norm = as_norm_act(norm)
        self.conv1 = conv(in_channels, width, (stem_temporal, 7, 7), (1, 2, 2), (stem_temporal // 2, 3, 3), bias=False)
        self.bn1 = norm(width)
        self.relu = norm.activation()
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.temporal_pool = nn.MaxPool3d((3, 1, 1), (2, 1, 1), (1, 0, 0))
        cin, k = width, 0
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck3d(cin, planes, 2 if i and b == 0 else 1, kernels[k], norm, conv))
                cin, k = planes * Bottleneck3d.expansion, k + 1
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"I3DResNet expects clips (N, C, T, H, W); got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.temporal_pool(self.layer1(x))
        x = self.layer4(self.layer3(self.layer2(x)))
        return self.fc(self.avgpool(x).flatten(1))


# ---------------------------------------------------------------------------------------
# builders of the model registry (groupnorm.models.MODELS)


def _norm_and_conv(spec, devices: int, on_indivisible) -> tuple[NormActLayer, type]:
    return norm_act_factory(spec, devices, on_indivisible), conv_layer(spec, dims=3)


def build_resnet3d(spec, num_classes, in_channels, devices, on_indivisible, *, depth=8, width=16, **kwargs):
    """``resnet3d``: :class:`ResNet3d` from scratch: temporal kernels in the stem and every other block,
    spatial stride 2 in the stem (as I3D's stem: 4x cheaper than stride 1), and T halved entering stages
    2 and 3 with the spatial size (as I3D's temporal pooling: a quarter cheaper again)."""
    norm, conv = _norm_and_conv(spec, devices, on_indivisible)
    return ResNet3d(
        depth, width, num_classes, in_channels, norm, conv, **{"stem_stride": 2, "temporal_stride": 2, **kwargs}
    )


def build_i3d_resnet50(spec, num_classes, in_channels, devices, on_indivisible, *, depth=50, width=64):
    """``i3d-resnet50``: the paper's I3D ResNet-50 (inflate an engine ``resnet50`` checkpoint with
    :func:`load_inflated` for the paper's ImageNet start)."""
    if (depth, width) != (50, 64):
        raise ValueError(f"i3d-resnet50 has depth 50 and width 64; got depth={depth}, width={width}")
    norm, conv = _norm_and_conv(spec, devices, on_indivisible)
    return I3DResNet((3, 4, 6, 3), num_classes, in_channels, norm, conv)


BUILDERS = {
    "resnet3d": build_resnet3d,
    "i3d-resnet50": build_i3d_resnet50,
}
