"""VGG-style plain networks (Simonyan & Zisserman 2015) with a norm after every conv, as in the paper's Fig. 6.

Five stages of 3x3 convs (torchvision's configurations: VGG-11, 13, 16, 19), each conv followed by
the norm and a ReLU, a 2x2 max-pool after each stage, then global average pooling and one linear
layer in place of VGG's three fully connected layers (small data: no 4096-wide head to fit).
Widths are ``width x (1, 2, 4, 8, 8)``, VGG's 64 ... 512 at ``width=64``.

Small inputs: a max-pool is skipped when its input map is smaller than ``min_pool_size`` pixels, so
28x28 images go 28 -> 14 -> 7 -> 3 and the last two stages work on 3x3 maps rather than 1x1 ones
(224x224 images go through all five pools, as in VGG).

Layers are named as in the paper: ``features.conv5_3`` is VGG-16's last conv, and ``probe_module``
names the last conv of any depth (the engine's percentile probe hooks its output: the responses
before norm and ReLU).

Norm-act layers (a ``norm_act_factory`` spec such as ``frn``): every norm is followed by a ReLU,
so every norm slot is a norm-act layer and the ``relu`` layers are left out; no norm stays plain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import Tensor, nn

from groupnorm.models.norm_act import NormActLayer, as_norm_act

__all__ = ["CONFIGS", "VGG", "MaxPoolIfLarge"]

# convs per stage
CONFIGS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
STAGE_WIDTHS = (1, 2, 4, 8, 8)


class MaxPoolIfLarge(nn.MaxPool2d):
    """A 2x2, stride-2 max-pool that passes maps smaller than ``min_size`` pixels (either side) through."""

    def __init__(self, min_size: int = 6) -> None:
        super().__init__(2, 2)
        self.min_size = min_size

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < self.min_size:
            return x
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, min_size={self.min_size}"


class VGG(nn.Module):
    """A VGG-style network; every conv is followed by ``norm(C)`` (``nn.Identity`` for no norm) and a ReLU.

    Args:
        depth: 11, 13, 16 or 19 (weight layers, counting the linear head as VGG counts its three).
        width: channels of the first stage (64 in VGG).
        num_classes, in_channels: of the data.
        norm: a NormActLayer (groupnorm.models.norm_act_factory(spec)) or a plain ``num_channels -> module``.
            With no norm (``bias=True``) the convs get a bias, as in VGG.
        conv: the conv class (nn.Conv2d, or WSConv2d for ws+ specs).
        bias: give the convs a bias (pointless before a norm with a beta).
        act: put a ReLU after each norm (never after a norm-act layer, which applies its own: a
            norm-act spec such as ``frn`` or ``gn:8+relu``); False leaves every ReLU out.
        min_pool_size: see :class:`MaxPoolIfLarge`.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_classes: int,
        in_channels: int,
        norm: NormActLayer | Callable[[int], nn.Module],
        conv: type = nn.Conv2d,
        *,
        bias: bool = False,
        act: bool = True,
        min_pool_size: int = 6,
    ) -> None:
        super().__init__()
        if depth not in CONFIGS:
            raise ValueError(f"VGG: depth must be one of {', '.join(map(str, CONFIGS))}; got {depth}")
        norm = as_norm_act(norm)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = in_channels
        for stage, (convs, mult) in enumerate(zip(CONFIGS[depth], STAGE_WIDTHS, strict=True), 1):
            cout = width * mult
            for i in range(1, convs + 1):
                layers[f"conv{stage}_{i}"] = conv(cin, cout, 3, 1, 1, bias=bias)
                layers[f"norm{stage}_{i}"] = norm(cout)
                if act and not norm.fused:
                    layers[f"relu{stage}_{i}"] = norm.activation()
                cin = cout
            layers[f"pool{stage}"] = MaxPoolIfLarge(min_pool_size)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.probe_module = f"features.conv5_{CONFIGS[depth][-1]}"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))
