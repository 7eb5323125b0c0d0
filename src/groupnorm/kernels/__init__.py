"""Fast GroupNorm kernels behind groupnorm.functional: CPU (C++, built at first use) and GPU (Triton).

    groupnorm.kernels.group_norm_act      # (y, mean, rstd); the op groupnorm::group_norm_act when traced
    groupnorm.kernels.backend_for(x)      # "cpu", "triton" or "native": what runs for x
    groupnorm.kernels.cpu.build_info()    # where the CPU library is and how it was built

Users call :func:`groupnorm.functional.group_norm_act` or :class:`groupnorm.nn.GroupNormAct`;
docs/kernels.md describes the kernels, how they were chosen and what they measure.
"""

from groupnorm.kernels import cpu, native
from groupnorm.kernels._common import ACTIVATIONS, memory_format_of
from groupnorm.kernels.ops import backend_for, group_norm_act, group_norm_act_backward_op, group_norm_act_op

__all__ = [
    "ACTIVATIONS",
    "backend_for",
    "cpu",
    "group_norm_act",
    "group_norm_act_backward_op",
    "group_norm_act_op",
    "memory_format_of",
    "native",
]
