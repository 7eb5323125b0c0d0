"""The GPU kernels: GroupNorm + activation in Triton, channels-last (NHWC) first, NCHW too.

x is read as (N, S, C) with strides, S the product of the trailing dims: channels last has
channel stride 1 (the first layout these kernels were written for, as diffusion UNets use
it), NCHW has position stride 1; Triton specialises whichever stride is 1, so both layouts
get contiguous, vectorised loads from the same code.

Forward, three launches:
    1. partial statistics: one program per (sample, block of positions, block of channels)
       holds its tile in registers and writes each channel's mean and sum of squared
       deviations over the block (two passes over the registers, compensated);
    2. merge: one program per (sample, group) combines its partials (the exact parallel
       formula for means and sums of squared deviations) in float64 and writes the group's
       mean (also as a float32 pair, high and low, so that x - mean stays exact) and 1/std;
    3. output: y = act((x - mean) * rstd * gamma + beta), one program per tile.
Backward, three launches and two small sums: per-tile partial sums of dz and dz * x_hat
(dz = dy * act'(z) with z recomputed from x, mean and rstd), a per-(sample, group) merge into
the coefficients of dx, then dx per tile; dgamma and dbeta are sums over the samples.

Every tile is independent of the grid's order: results are deterministic. Checked against
groupnorm.reference on the CPU with TRITON_INTERPRET=1 (tests/test_kernels_triton.py).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from groupnorm.kernels._common import memory_format_of

__all__ = ["DTYPES", "INTERPRET", "backward", "forward", "supports"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ACT_CODES = {"identity": 0, "relu": 1, "silu": 2}
TILE = 4096  # elements per program's tile


@triton.jit
def _act_forward(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z < 0.0, 0.0, z)
    elif ACT == 2:
        z = z * tl.sigmoid(z)
    return z


@triton.jit
def _act_backward(g, z, ACT: tl.constexpr):
    if ACT == 1:
        g = tl.where(z > 0.0, g, 0.0)
    elif ACT == 2:
        s = tl.sigmoid(z)
        g = g * s * (1.0 + z * (1.0 - s))
    return g


@triton.jit
def _tile(n, bs, bc, S, C, stride_n, stride_s, stride_c, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets of a (BLOCK_S, BLOCK_C) tile of sample n, its channel indices and masks. The offsets are
    64-bit: one sample may hold more than 2**31 elements (positions x channels), the tensor many more."""
    offs_s = bs * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_c = bc * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask = (offs_s[:, None] < S) & mask_c[None, :]
    offs_s64, offs_c64 = offs_s.to(tl.int64), offs_c.to(tl.int64)
    offs = n.to(tl.int64) * stride_n + offs_s64[:, None] * stride_s + offs_c64[None, :] * stride_c
    return offs, offs_c, mask_c, mask


@triton.jit
def _partial_stats_kernel(
    x_ptr, pmean_ptr, pcorr_ptr, pm2_ptr, S, C, stride_n, stride_s, stride_c, NBS,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, bs, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs, offs_c, mask_c, mask = _tile(n, bs, bc, S, C, stride_n, stride_s, stride_c, BLOCK_S, BLOCK_C)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    cnt = tl.minimum(S - bs * BLOCK_S, BLOCK_S).to(tl.float32)
    mu = tl.sum(x, axis=0) / cnt
    d = tl.where(mask, x - mu[None, :], 0.0)
    dsum = tl.sum(d, axis=0)
    m2 = tl.sum(d * d, axis=0) - dsum * dsum / cnt  # compensated for the rounding of mu
    out = (n * NBS + bs) * C + offs_c
    tl.store(pmean_ptr + out, mu, mask=mask_c)  # the mean is mu + corr, added up in float64
    tl.store(pcorr_ptr + out, dsum / cnt, mask=mask_c)
    tl.store(pm2_ptr + out, m2, mask=mask_c)


@triton.jit(do_not_specialize=["S", "D"])  # S * D must stay a tensor even where both are 1
def _merge_stats_kernel(
    pmean_ptr, pcorr_ptr, pm2_ptr, mean_ptr, mean_lo_ptr, rstd_ptr, S, C, G, D, NBS, eps,
    BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n, g = pid // G, pid % G
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    total = (S * D).to(tl.float64)
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float64)
    for b0 in range(0, NBS, BLOCK_P):
        offs_b = b0 + tl.arange(0, BLOCK_P)
        m = (offs_b[:, None] < NBS) & mask_d[None, :]
        cnt = tl.minimum(S - offs_b * BLOCK_S, BLOCK_S).to(tl.float64)
        idx = (n * NBS + offs_b[:, None]) * C + g * D + offs_d[None, :]
        pm = tl.load(pmean_ptr + idx, mask=m, other=0.0).to(tl.float64)
        pm += tl.load(pcorr_ptr + idx, mask=m, other=0.0).to(tl.float64)
        acc += tl.where(m, pm * cnt[:, None], 0.0)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / total
    acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float64)
    for b0 in range(0, NBS, BLOCK_P):
        offs_b = b0 + tl.arange(0, BLOCK_P)
        m = (offs_b[:, None] < NBS) & mask_d[None, :]
        cnt = tl.minimum(S - offs_b * BLOCK_S, BLOCK_S).to(tl.float64)
        idx = (n * NBS + offs_b[:, None]) * C + g * D + offs_d[None, :]
        pm = tl.load(pmean_ptr + idx, mask=m, other=0.0).to(tl.float64)
        pm += tl.load(pcorr_ptr + idx, mask=m, other=0.0).to(tl.float64)
        p2 = tl.load(pm2_ptr + idx, mask=m, other=0.0).to(tl.float64)
        dev = pm - mean
        acc += tl.where(m, p2 + cnt[:, None] * dev * dev, 0.0)
    var = tl.maximum(tl.sum(tl.sum(acc, axis=1), axis=0) / total, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    hi = mean.to(tl.float32)
    tl.store(mean_ptr + pid, hi)
    tl.store(mean_lo_ptr + pid, (mean - hi.to(tl.float64)).to(tl.float32))
    tl.store(rstd_ptr + pid, rstd.to(tl.float32))


@triton.jit
def _channel_params(w_ptr, b_ptr, offs_c, mask_c, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    if HAS_W:
        w = tl.load(w_ptr + offs_c, mask=mask_c, other=1.0).to(tl.float32)
    else:
        w = tl.full(offs_c.shape, 1.0, tl.float32)
    if HAS_B:  # noqa: SIM108 - a constexpr branch: only the taken one is compiled
        b = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    else:
        b = tl.zeros(offs_c.shape, tl.float32)
    return w, b


@triton.jit
def _forward_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, mean_lo_ptr, rstd_ptr, S, C, G, D, stride_n, stride_s, stride_c,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, bs, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs, offs_c, mask_c, mask = _tile(n, bs, bc, S, C, stride_n, stride_s, stride_c, BLOCK_S, BLOCK_C)
    grp = n * G + offs_c // D
    hi = tl.load(mean_ptr + grp, mask=mask_c, other=0.0)
    lo = tl.load(mean_lo_ptr + grp, mask=mask_c, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=mask_c, other=0.0)
    w, b = _channel_params(w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    scale = rstd * w
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = ((x - hi[None, :]) - lo[None, :]) * scale[None, :] + b[None, :]
    y = _act_forward(z, ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_partial_kernel(
    dy_ptr, x_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, pa_ptr, pb_ptr, S, C, G, D, stride_n, stride_s, stride_c, NBS,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, bs, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs, offs_c, mask_c, mask = _tile(n, bs, bc, S, C, stride_n, stride_s, stride_c, BLOCK_S, BLOCK_C)
    grp = n * G + offs_c // D
    mean = tl.load(mean_ptr + grp, mask=mask_c, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=mask_c, other=0.0)
    w, b = _channel_params(w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean[None, :]) * rstd[None, :]
    dz = _act_backward(dy, xhat * w[None, :] + b[None, :], ACT)
    dz = tl.where(mask, dz, 0.0)
    out = (n * NBS + bs) * C + offs_c
    tl.store(pa_ptr + out, tl.sum(dz, axis=0), mask=mask_c)
    tl.store(pb_ptr + out, tl.sum(dz * xhat, axis=0), mask=mask_c)


@triton.jit(do_not_specialize=["S", "D"])
def _backward_merge_kernel(
    pa_ptr, pb_ptr, w_ptr, rstd_ptr, a_ptr, b_ptr, c2_ptr, c3_ptr, S, C, G, D, NBS,
    HAS_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n, g = pid // G, pid % G
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc_a = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    for b0 in range(0, NBS, BLOCK_P):
        offs_b = b0 + tl.arange(0, BLOCK_P)
        m = (offs_b[:, None] < NBS) & mask_d[None, :]
        idx = (n * NBS + offs_b[:, None]) * C + g * D + offs_d[None, :]
        acc_a += tl.load(pa_ptr + idx, mask=m, other=0.0)
        acc_b += tl.load(pb_ptr + idx, mask=m, other=0.0)
    sa = tl.sum(acc_a, axis=0)  # per channel of the group: sum dz, sum dz * x_hat
    sb = tl.sum(acc_b, axis=0)
    tl.store(a_ptr + n * C + g * D + offs_d, sa, mask=mask_d)
    tl.store(b_ptr + n * C + g * D + offs_d, sb, mask=mask_d)
    if HAS_W:  # noqa: SIM108 - a constexpr branch: only the taken one is compiled
        w = tl.load(w_ptr + g * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        w = tl.where(mask_d, 1.0, 0.0)
    total = (S * D).to(tl.float32)
    m1 = tl.sum(w * sa, axis=0) / total
    m2 = tl.sum(w * sb, axis=0) / total
    rstd = tl.load(rstd_ptr + pid)
    tl.store(c2_ptr + pid, -rstd * m2)
    tl.store(c3_ptr + pid, -rstd * m1)


@triton.jit
def _backward_kernel(
    dy_ptr, x_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, c2_ptr, c3_ptr, S, C, G, D, stride_n, stride_s, stride_c,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    n, bs, bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs, offs_c, mask_c, mask = _tile(n, bs, bc, S, C, stride_n, stride_s, stride_c, BLOCK_S, BLOCK_C)
    grp = n * G + offs_c // D
    mean = tl.load(mean_ptr + grp, mask=mask_c, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=mask_c, other=0.0)
    c2 = tl.load(c2_ptr + grp, mask=mask_c, other=0.0)
    c3 = tl.load(c3_ptr + grp, mask=mask_c, other=0.0)
    w, b = _channel_params(w_ptr, b_ptr, offs_c, mask_c, HAS_W, HAS_B)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    xhat = (x - mean[None, :]) * rstd[None, :]
    dz = _act_backward(dy, xhat * w[None, :] + b[None, :], ACT)
    dx = (rstd * w)[None, :] * dz + c2[None, :] * xhat + c3[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------
# launchers


def supports(x: Tensor) -> bool:
    """Whether these kernels take x: CUDA (or any device under TRITON_INTERPRET=1), float32/16, bfloat16,
    any number of elements (64-bit offsets) as long as a sample's positions fit the grid (see _geometry)."""
    on_device = x.device.type == "cuda" or INTERPRET
    return on_device and x.dtype in DTYPES and x.dim() >= 2 and x.numel() > 0 and _grid_fits(x)


MAX_GRID_YZ = 65535  # CUDA's limit on a grid's 2nd and 3rd dimensions (blocks of positions, of channels)


def _blocks(x: Tensor) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C): a tile of positions x channels, channels or positions contiguous as x is."""
    c, s = x.shape[1], math.prod(x.shape[2:])
    if memory_format_of(x) is torch.contiguous_format:  # (N, C, S): positions contiguous
        block_s = min(triton.next_power_of_2(s), 256)
        return block_s, min(triton.next_power_of_2(c), max(1, TILE // block_s))
    block_c = min(triton.next_power_of_2(c), 64)
    return min(triton.next_power_of_2(s), max(1, TILE // block_c)), block_c


def _grid_fits(x: Tensor) -> bool:
    """Whether the (N, blocks of positions, blocks of channels) grid fits CUDA's limits: up to about
    16 million positions per sample in NCHW, 4 million in channels-last with 64 channels or more."""
    block_s, block_c = _blocks(x)
    s = math.prod(x.shape[2:])
    return triton.cdiv(s, block_s) <= MAX_GRID_YZ and triton.cdiv(x.shape[1], block_c) <= MAX_GRID_YZ


def _geometry(x: Tensor) -> tuple[Tensor, int, int, int, tuple[int, int, int], int, int]:
    """(x in its layout, N, C, S, strides (n, s, c), BLOCK_S, BLOCK_C) for reading x as (N, S, C)."""
    fmt = memory_format_of(x)
    xc = x.contiguous(memory_format=fmt)
    n, c = x.shape[:2]
    s = math.prod(x.shape[2:])
    strides = (c * s, 1, s) if fmt is torch.contiguous_format else (c * s, c, 1)
    return xc, n, c, s, strides, *_blocks(x)


def _merge_blocks(nbs: int, d: int) -> tuple[int, int]:
    block_d = triton.next_power_of_2(d)
    block_p = min(triton.next_power_of_2(nbs), max(1, TILE // block_d))
    return block_p, block_d


def _params(weight: Tensor | None, bias: Tensor | None, fallback: Tensor) -> tuple[Tensor, Tensor, bool, bool]:
    w = fallback if weight is None else weight.detach().contiguous()
    b = fallback if bias is None else bias.detach().contiguous()
    return w, b, weight is not None, bias is not None


def forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, eps: float, act: str
) -> tuple[Tensor, Tensor, Tensor]:
    """y = act(GN(x)) and the (N, G) float32 mean and rstd; y keeps x's memory format."""
    xc, n, c, s, (sn, ss, sc), block_s, block_c = _geometry(x)
    g, d = num_groups, c // num_groups
    nbs, nbc = triton.cdiv(s, block_s), triton.cdiv(c, block_c)
    f32 = {"dtype": torch.float32, "device": x.device}
    # one workspace for what is not returned (allocations cost on a GPU); mean and rstd are
    # returned by the op, which may not return views of one another
    work = torch.empty(3 * n * nbs * c + n * g, **f32)
    pmean, pcorr, pm2 = work[: 3 * n * nbs * c].view(3, n, nbs, c)
    mean_lo = work[3 * n * nbs * c :].view(n, g)
    mean = torch.empty((n, g), **f32)
    rstd = torch.empty((n, g), **f32)
    y = torch.empty_like(xc)
    w, b, has_w, has_b = _params(weight, bias, mean)
    grid = (n, nbs, nbc)
    _partial_stats_kernel[grid](xc, pmean, pcorr, pm2, s, c, sn, ss, sc, nbs, BLOCK_S=block_s, BLOCK_C=block_c)
    block_p, block_d = _merge_blocks(nbs, d)
    _merge_stats_kernel[(n * g,)](
        pmean, pcorr, pm2, mean, mean_lo, rstd, s, c, g, d, nbs, float(eps),
        BLOCK_S=block_s, BLOCK_P=block_p, BLOCK_D=block_d,
    )  # fmt: skip
    _forward_kernel[grid](
        xc, y, w, b, mean, mean_lo, rstd, s, c, g, d, sn, ss, sc,
        HAS_W=has_w, HAS_B=has_b, ACT=ACT_CODES[act], BLOCK_S=block_s, BLOCK_C=block_c,
    )  # fmt: skip
    return y, mean, rstd


def backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    act: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dweight, dbias) from x and the saved mean and rstd; dweight and dbias float32 of shape (C,)."""
    xc, n, c, s, (sn, ss, sc), block_s, block_c = _geometry(x)
    dyc = dy.to(x.dtype).contiguous(memory_format=memory_format_of(xc))
    g, d = num_groups, c // num_groups
    nbs, nbc = triton.cdiv(s, block_s), triton.cdiv(c, block_c)
    f32 = {"dtype": torch.float32, "device": x.device}
    mean = mean.to(torch.float32).contiguous()
    rstd = rstd.to(torch.float32).contiguous()
    pa, pb = torch.empty((2, n, nbs, c), **f32)
    sum_a, sum_b = torch.empty((2, n, c), **f32)
    c2, c3 = torch.empty((2, n, g), **f32)
    dx = torch.empty_like(xc)
    w, b, has_w, has_b = _params(weight, bias, mean)
    act_code = ACT_CODES[act]
    grid = (n, nbs, nbc)
    _backward_partial_kernel[grid](
        dyc, xc, w, b, mean, rstd, pa, pb, s, c, g, d, sn, ss, sc, nbs,
        HAS_W=has_w, HAS_B=has_b, ACT=act_code, BLOCK_S=block_s, BLOCK_C=block_c,
    )  # fmt: skip
    block_p, block_d = _merge_blocks(nbs, d)
    _backward_merge_kernel[(n * g,)](
        pa, pb, w, rstd, sum_a, sum_b, c2, c3, s, c, g, d, nbs, HAS_W=has_w, BLOCK_P=block_p, BLOCK_D=block_d
    )
    _backward_kernel[grid](
        dyc, xc, dx, w, b, mean, rstd, c2, c3, s, c, g, d, sn, ss, sc,
        HAS_W=has_w, HAS_B=has_b, ACT=act_code, BLOCK_S=block_s, BLOCK_C=block_c,
    )  # fmt: skip
    return dx, sum_b.sum(0), sum_a.sum(0)
