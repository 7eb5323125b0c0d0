"""nn.Modules of the GN family and the norm factory ``make_norm``."""

from groupnorm.nn.act import GroupNormAct, fused_act_name, resolve_act
from groupnorm.nn.conv import WSConv2d, WSConv3d
from groupnorm.nn.evonorm import EvoNormS0
from groupnorm.nn.frn import FilterResponseNorm
from groupnorm.nn.norm import BatchNorm, FrozenBatchNorm, GroupNorm, InstanceNorm, LayerNorm, resolve_groups
from groupnorm.nn.renorm import BatchRenorm, renorm_limits
from groupnorm.nn.spec import (
    NormSpec,
    conv_layer,
    make_norm,
    nearest_divisor,
    parse_norm_spec,
    register_norm,
)
from groupnorm.nn.split_gn import SplitStatsGroupNorm

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "EvoNormS0",
    "FilterResponseNorm",
    "FrozenBatchNorm",
    "GroupNorm",
    "GroupNormAct",
    "InstanceNorm",
    "LayerNorm",
    "NormSpec",
    "SplitStatsGroupNorm",
    "WSConv2d",
    "WSConv3d",
    "conv_layer",
    "fused_act_name",
    "make_norm",
    "nearest_divisor",
    "parse_norm_spec",
    "register_norm",
    "renorm_limits",
    "resolve_act",
    "resolve_groups",
]
