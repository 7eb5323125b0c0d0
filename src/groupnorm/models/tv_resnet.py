"""A torchvision-style ResNet of any width: a classifier and, unchanged, a detection backbone.

The module names are torchvision's (``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``;
blocks with ``conv1, bn1, conv2, bn2[, conv3, bn3], downsample``), so torchvision's
``IntermediateLayerGetter`` / ``BackboneWithFPN`` take it as they take ``resnet50``, and at
width 64 its state dict is torchvision's (ImageNet weights of resnet18/34/50/101 load into it).
Unlike torchvision's it is narrow on demand (``width`` is the stem's channels, the stages have
w, 2w, 4w, 8w (x4 for bottlenecks)), takes any norm spec and WS convs, and has a depth-10 form
(one block per stage), small enough for a CPU.

    model = TorchvisionStyleResNet(10, width=16, num_classes=10, in_channels=1, norm=norm_factory("gn:4"))

Norm-act layers (a ``norm_act_factory`` spec such as ``frn``): ``bn1`` of the stem and ``bn1`` (and
``bn2`` of a bottleneck) of each block, each followed by a ReLU, become norm-act layers, and that
ReLU (``relu`` of the stem, ``act1`` / ``act2`` of a block) is an Identity; a block's last norm
(``bn2`` / ``bn3``, before the residual add) and the downsample's norm stay plain; the ReLU after
the add (a block's ``relu``) stays.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from groupnorm.models.norm_act import NormActLayer, as_norm_act

__all__ = ["DEPTHS", "BasicBlock", "Bottleneck", "TorchvisionStyleResNet"]


class BasicBlock(nn.Module):
    """conv3x3-norm-relu-conv3x3-norm plus the shortcut; torchvision's names (and ``act1`` after ``bn1``)."""

    expansion = 1
    last_norm_name = "bn2"

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm: NormActLayer | Callable,
        conv: type,
    ) -> None:
        super().__init__()
        norm = as_norm_act(norm)
        self.conv1 = conv(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.act1 = norm.activation()
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 with the stride on the 3x3 (torchvision's "ResNet V1.5"); torchvision's names (and
    ``act1``, ``act2`` after ``bn1``, ``bn2``)."""

    expansion = 4
    last_norm_name = "bn3"

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        norm: NormActLayer | Callable,
        conv: type,
    ) -> None:
        super().__init__()
        norm = as_norm_act(norm)
        self.conv1 = conv(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.act1 = norm.activation()
        self.conv2 = conv(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm(planes)
        self.act2 = norm.activation()
        self.conv3 = conv(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block, blocks per stage)
DEPTHS: dict[int, tuple[type, tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    26: (Bottleneck, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class TorchvisionStyleResNet(nn.Module):
    """ResNet-{10, 18, 26, 34, 50, 101} with torchvision's stem (7x7/2 conv, 3x3/2 max-pool) and names.

    Args:
        depth: one of DEPTHS.
        width: channels of the stem and of the first stage's 3x3 convs (64 in torchvision).
        num_classes, in_channels: of the data.
        norm: a NormActLayer (groupnorm.models.norm_act_factory(spec)) or a plain ``num_channels -> norm``.
        conv: the conv class (nn.Conv2d, or WSConv2d for ws+ specs).

    Attributes:
        stage_channels: output channels of layer1..layer4 (what an FPN on top takes).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv2d,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(
                f"TorchvisionStyleResNet: depth must be one of {', '.join(map(str, sorted(DEPTHS)))}; got {depth!r}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"TorchvisionStyleResNet: width must be a positive int; got {width!r}")
        block, counts = DEPTHS[depth]
        norm = as_norm_act(norm)
        self.conv1 = conv(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = norm(width)
        self.relu = norm.activation()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        self.stage_channels: list[int] = []
        for i, n in enumerate(counts):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                downsample = None
                if j == 0 and (stride != 1 or cin != planes * block.expansion):
                    downsample = nn.Sequential(
                        conv(cin, planes * block.expansion, 1, stride, bias=False),
                        norm(planes * block.expansion, act=False),
                    )
                layers.append(block(cin, planes, stride if j == 0 else 1, downsample, norm, conv))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            self.stage_channels.append(cin)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))
