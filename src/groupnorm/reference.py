"""Float64 normalizations written straight from the paper's equations: the test oracle.

Wu & He (2018), Eq. (1)-(3): for a set S_i of m elements,

    mu_i    = 1/m * sum_{k in S_i} x_k
    sigma_i = sqrt(1/m * sum_{k in S_i} (x_k - mu_i)^2 + eps)
    x_hat_i = (x_i - mu_i) / sigma_i,       y_i = gamma * x_hat_i + beta   (per channel)

and the methods differ only in S_i (x has shape (N, C, *spatial)):

    BN: same channel, every sample and position          (per device)
    LN: same sample, every channel and position
    IN: same sample and channel, every position
    GN: same sample, the same group of C/G contiguous channels, every position

The family after GN (Batch Renorm, FRN + TLU, EvoNorm-S0) is written from its own paper below.

Everything here loops over the sets S_i and computes in float64. Slow and obvious on purpose:
nothing in the package imports this module, the tests compare against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "batch_norm",
    "batch_renorm",
    "evo_norm_s0",
    "filter_response_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "normalize_set",
    "weight_standardize",
]


def normalize_set(values: Tensor, eps: float) -> Tensor:
    """x_hat for one set S_i: (x - mu) / sqrt(sigma^2 + eps), biased variance, in float64."""
    v = values.double()
    m = v.numel()
    mu = v.sum() / m
    sigma = torch.sqrt(((v - mu) ** 2).sum() / m + eps)
    return (v - mu) / sigma


def _affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """y = gamma * x_hat + beta with one gamma and beta per channel (dim 1)."""
    shape = (1, x_hat.shape[1]) + (1,) * (x_hat.dim() - 2)
    if weight is not None:
        x_hat = x_hat * weight.double().reshape(shape)
    if bias is not None:
        x_hat = x_hat + bias.double().reshape(shape)
    return x_hat


def group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """GN: S_i = {k | k_N = i_N, floor(k_C / (C/G)) = floor(i_C / (C/G))}."""
    n, c = x.shape[:2]
    per_group = c // num_groups
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(n):
        for g in range(num_groups):
            channels = slice(g * per_group, (g + 1) * per_group)
            out[i, channels] = normalize_set(x[i, channels], eps)
    return _affine(out, weight, bias)


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LN: S_i = {k | k_N = i_N}: one set per sample (GN with G = 1)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(x.shape[0]):
        out[i] = normalize_set(x[i], eps)
    return _affine(out, weight, bias)


def instance_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """IN: S_i = {k | k_N = i_N, k_C = i_C}: one set per sample and channel (GN with G = C)."""
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(x.shape[0]):
        for ch in range(x.shape[1]):
            out[i, ch] = normalize_set(x[i, ch], eps)
    return _affine(out, weight, bias)


def batch_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    devices: int = 1,
) -> Tensor:
    """BN in training mode: S_i = {k | k_C = i_C, k_N in the device of i_N}.

    The batch is split into ``devices`` equal, contiguous blocks (one per device, as on
    the paper's 8 GPUs); each block is normalised with its own statistics.
    """
    n = x.shape[0]
    block = n // devices
    out = torch.empty(x.shape, dtype=torch.float64)
    for d in range(devices):
        rows = slice(d * block, (d + 1) * block)
        for ch in range(x.shape[1]):
            out[rows, ch] = normalize_set(x[rows, ch], eps)
    return _affine(out, weight, bias)


def batch_norm_running_update(
    x: Tensor, running_mean: Tensor, running_var: Tensor, momentum: float, devices: int = 1
) -> tuple[Tensor, Tensor]:
    """The running statistics after one training step, averaged over the devices' blocks.

    Each device's update is torch's: (1 - momentum) * old + momentum * batch statistic, with
    the unbiased variance; the blocks' results are averaged.
    """
    n, c = x.shape[:2]
    block = n // devices
    means = torch.empty(devices, c, dtype=torch.float64)
    variances = torch.empty(devices, c, dtype=torch.float64)
    for d in range(devices):
        for ch in range(c):
            v = x[d * block : (d + 1) * block, ch].double().flatten()
            means[d, ch] = v.mean()
            variances[d, ch] = ((v - v.mean()) ** 2).sum() / (v.numel() - 1)
    new_mean = (1 - momentum) * running_mean.double() + momentum * means.mean(0)
    new_var = (1 - momentum) * running_var.double() + momentum * variances.mean(0)
    return new_mean, new_var


def weight_standardize(weight: Tensor, eps: float = 1e-5) -> Tensor:
    """Weight Standardization (Qiao et al. 2019): each output filter to zero mean, unit variance.

    W_hat[o] = (W[o] - mean(W[o])) / sqrt(var(W[o]) + eps), over its in-channels and kernel
    positions, biased variance.
    """
    out = torch.empty(weight.shape, dtype=torch.float64)
    for o in range(weight.shape[0]):
        out[o] = normalize_set(weight[o], eps)
    return out


def batch_renorm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    r_max: float = 1.0,
    d_max: float = 0.0,
    devices: int = 1,
) -> Tensor:
    """Batch Renorm in training (Ioffe 2017, Algorithm 1), per device block and channel.

    x_hat = (x - mu_B) / sigma_B * r + d,  r = clip(sigma_B / sigma, 1/r_max, r_max),
    d = clip((mu_B - mu) / sigma, -d_max, d_max), sigma_B = sqrt(Var_B + eps) (biased),
    sigma = sqrt(running_var + eps), mu = running_mean.
    """
    n = x.shape[0]
    block = n // devices
    out = torch.empty(x.shape, dtype=torch.float64)
    for dev in range(devices):
        rows = slice(dev * block, (dev + 1) * block)
        for ch in range(x.shape[1]):
            v = x[rows, ch].double()
            mu_b = v.mean()
            sigma_b = torch.sqrt(((v - mu_b) ** 2).mean() + eps)
            sigma = torch.sqrt(running_var[ch].double() + eps)
            # r and d are plain numbers: constants for autograd, as in the paper
            r = min(max((sigma_b / sigma).item(), 1.0 / r_max), r_max)
            d = min(max(((mu_b - running_mean[ch].double()) / sigma).item(), -d_max), d_max)
            out[rows, ch] = (v - mu_b) / sigma_b * r + d
    return _affine(out, weight, bias)


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    tau: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """FRN + TLU (Singh & Krishnan 2020, Eq. 1-2), per sample and channel.

    nu^2 = mean of x^2 over the spatial positions;  y = max(gamma * x / sqrt(nu^2 + eps) + beta, tau).
    """
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(x.shape[0]):
        for ch in range(x.shape[1]):
            v = x[i, ch].double()
            out[i, ch] = v / torch.sqrt((v**2).mean() + eps)
    out = _affine(out, weight, bias)
    if tau is not None:
        out = torch.maximum(out, tau.double().reshape((1, -1) + (1,) * (x.dim() - 2)))
    return out


def evo_norm_s0(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    v: Tensor | None = None,
    eps: float = 1e-5,
    act: bool = True,
) -> Tensor:
    """EvoNorm-S0 (Liu et al. 2020): y = x * sigmoid(v * x) / group_std(x) * gamma + beta.

    group_std = sqrt(Var + eps), biased, over GN's sets: one sample, C/G channels, all positions.
    ``act=False``: y = x / group_std(x) * gamma + beta (no activation: a norm before a residual add).
    """
    n, c = x.shape[:2]
    per_group = c // num_groups
    out = torch.empty(x.shape, dtype=torch.float64)
    for i in range(n):
        for g in range(num_groups):
            for ch in range(g * per_group, (g + 1) * per_group):
                s = x[i, g * per_group : (g + 1) * per_group].double()
                std = torch.sqrt(((s - s.mean()) ** 2).mean() + eps)
                xc = x[i, ch].double()
                vc = 1.0 if v is None else v[ch].double()
                gate = torch.sigmoid(vc * xc) if act else 1.0
                out[i, ch] = xc * gate / std
    return _affine(out, weight, bias)
