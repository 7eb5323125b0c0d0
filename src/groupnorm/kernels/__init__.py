"""Fast GroupNorm kernels behind groupnorm.functional: CPU (C++, built at first use) and GPU (Triton).

    groupnorm.kernels.group_norm_act      # the torch.library op: (y, mean, rstd)
    groupnorm.kernels.backend_for(x)      # "cpu", "triton" or "native": what runs for x
    groupnorm.kernels.cpu.build_info()    # where the CPU library is and how it was built

Users call :func:`groupnorm.functional.group_norm_act` or :class:`groupnorm.nn.GroupNormAct`;
docs/kernels.md describes the kernels, how they were chosen and what they measure.
"""

from groupnorm.kernels import cpu, native
from groupnorm.kernels._common import ACTIVATIONS, memory_format_of
from groupnorm.kernels.ops import backend_for, group_norm_act, group_norm_act_backward

__all__ = [
    "ACTIVATIONS",
    "backend_for",
    "cpu",
    "group_norm_act",
    "group_norm_act_backward",
    "memory_format_of",
    "native",
]
