"""groupnorm: Group Normalization (Wu & He, ECCV 2018) and its family for PyTorch.

    import groupnorm
    norm = groupnorm.nn.GroupNorm(32, 256)          # drop-in for torch.nn.GroupNorm
    groupnorm.convert_norms(model, "gn:32")          # every BN in a model becomes GN
    groupnorm.functional.group_norm(x, 32)           # the function behind it
    groupnorm.check_batch_independence(model, x)     # does a sample's output depend on the batch?
    groupnorm.fuse_group_norm_act(unet, *example)     # a UNet's GroupNorm + SiLU -> one fused layer

See README.md for the reproduction of the paper's experiments (``groupnorm reproduce``).
"""

from groupnorm import functional, nn
from groupnorm.convert import Replacement, convert_norms, set_devices, set_renorm_limits, zero_init_last_gamma
from groupnorm.convert.check import BatchIndependenceReport, check_batch_independence
from groupnorm.convert.fuse import fuse_group_norm_act

__version__ = "0.1.0"

__all__ = [
    "BatchIndependenceReport",
    "Replacement",
    "__version__",
    "check_batch_independence",
    "convert_norms",
    "functional",
    "fuse_group_norm_act",
    "nn",
    "set_devices",
    "set_renorm_limits",
    "zero_init_last_gamma",
]
