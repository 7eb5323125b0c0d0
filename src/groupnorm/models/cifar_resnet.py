"""CIFAR-style ResNets (He et al. 2016, Sec. 4.2): depth 6n+2, three stages of n basic blocks.

Norm-act layers (a ``norm_act_factory`` spec such as ``frn``): the stem's norm and each block's
``norm1`` (each followed by a ReLU) become norm-act layers with no ReLU after them; each block's
``norm2`` (before the residual add) and the shortcut's norm stay plain; the ReLU after the add stays.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from groupnorm.models.norm_act import NormActLayer, as_norm_act

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(nn.Module):
    """conv3x3-norm-relu-conv3x3-norm, plus the shortcut (a 1x1 conv and norm where the shape changes).

    ``norm1`` and ``act1`` are the (norm, ReLU) pair (a norm-act layer and Identity for a norm-act spec);
    ``norm2`` and the shortcut's norm, before the add, are plain; ``relu`` follows the add.
    """

    last_norm_name = "norm2"  # zero_init_last_gamma zeroes its gamma

    def __init__(
        self, cin: int, cout: int, stride: int, norm: NormActLayer | Callable[[int], nn.Module], conv: type
    ) -> None:
        super().__init__()
        norm = as_norm_act(norm)
        self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm(cout)
        self.act1 = norm.activation()
        self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm(cout, act=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout, act=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: widths w, 2w, 4w at strides 1, 2, 2, global pooling, a linear head.

    Args:
        depth: 6n + 2 (8, 14, 20, 32, 44, 56, 110).
        width: channels of the first stage (16 in He et al.).
        num_classes, in_channels: of the data.
        norm: a NormActLayer (groupnorm.models.norm_act_factory(spec)), or a plain callable building
            the norm layer for a number of channels (see make_norm).
        conv: the conv class (nn.Conv2d, or WSConv2d for ws+ specs).
        stem_stride: 1 (He et al.) or 2: the stem halves the image, so a wide net costs a quarter
            (28x28 images: stages at 14, 7 and 4 pixels instead of 28, 14 and 7).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv2d,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n+2 with n >= 1 (8, 14, 20, ...); got {depth}")
        if stem_stride not in (1, 2):
            raise ValueError(f"CifarResNet: stem_stride must be 1 or 2; got {stem_stride}")
        n = (depth - 2) // 6
        norm = as_norm_act(norm)
        self.stem = nn.Sequential(
            conv(in_channels, width, 3, stem_stride, 1, bias=False), norm(width), norm.activation()
        )
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage and i == 0 else 1, norm, conv))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
