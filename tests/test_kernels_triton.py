"""groupnorm.kernels.triton_gn against groupnorm.reference.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1) on the CPU, so CI
checks the same kernel code that runs on a GPU; the shapes are small because the interpreter
runs each program in Python. Tests marked gpu run the compiled kernels on CUDA.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF

from groupnorm import reference as R

pytest.importorskip("triton")  # a dependency of torch on Linux; absent elsewhere

# Triton decides at its own import whether its functions (tl.sum too) are interpreted, so
# without a GPU these tests run in a fresh process that sets TRITON_INTERPRET=1 first.
RUN_HERE = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"

if not RUN_HERE:

    def test_triton_kernels_in_the_interpreter():
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout


if RUN_HERE:  # on a GPU, or in the interpreter process started above
    from groupnorm.kernels import triton_gn as T

    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}
    # C/G not a power of two, H*W = 1, H*W not a multiple of the blocks, 1-D and 3-D, G = 1 and G = C
    CASES = [((2, 6, 5, 7), 3), ((2, 12, 1, 1), 4), ((1, 6, 2, 3, 4), 2), ((2, 4, 37), 1), ((2, 5, 3, 3), 5)]

    def reference_act(x, groups, w, b, act):
        y = R.group_norm(x.cpu(), groups, None if w is None else w.cpu(), None if b is None else b.cpu())
        return {"identity": y, "relu": y.relu(), "silu": TF.silu(y)}[act]

    def rel_err(y, ref):
        return ((y.double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()

    def layouts(shape):
        return {4: [torch.contiguous_format, torch.channels_last], 5: [torch.channels_last_3d]}.get(
            len(shape), [torch.contiguous_format]
        )

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    @pytest.mark.parametrize(("shape", "groups"), CASES)
    def test_triton_forward_and_backward_match_reference(shape, groups, dtype):
        c = shape[1]
        for fmt in layouts(shape):
            for act in ("identity", "relu", "silu"):
                x = (torch.randn(shape) * 2 + 0.5).to(dtype).to(DEVICE).contiguous(memory_format=fmt)
                w, b = torch.randn(c, device=DEVICE), torch.randn(c, device=DEVICE)
                y, mean, rstd = T.forward(x, w, b, groups, 1e-5, act)
                assert y.dtype == dtype and y.stride() == x.stride()
                # a custom op's outputs may not share storage (torch.compile refuses them)
                assert len({t.untyped_storage().data_ptr() for t in (y, mean, rstd)}) == 3
                assert rel_err(y, reference_act(x, groups, w, b, act)) < TOL[dtype], (fmt, act)
                dy = torch.randn(shape).to(dtype).to(DEVICE)
                dx, dw, db = T.backward(dy, x, w, b, mean, rstd, groups, act)
                assert dx.stride() == x.stride()
                xd, wd, bd = (t.detach().cpu().double().requires_grad_() for t in (x, w, b))
                reference_act(xd, groups, wd, bd, act).backward(dy.cpu().double())
                for got, want in ((dx, xd.grad), (dw, wd.grad), (db, bd.grad)):
                    assert rel_err(got, want) < 5 * TOL[dtype], (fmt, act)

    def test_triton_without_affine_and_many_blocks():
        # S spans several position blocks and C several channel blocks, both with ragged ends
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(1, 72, 23, 19, device=DEVICE).contiguous(memory_format=fmt)
            y, _, _ = T.forward(x, None, None, 8, 1e-5, "silu")
            assert rel_err(y, reference_act(x, 8, None, None, "silu")) < TOL[torch.float32]

    @pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
    def test_triton_large_mean_small_spread(fmt):
        x = (1e4 + torch.randn(2, 16, 8, 8, device=DEVICE)).contiguous(memory_format=fmt)
        y, _, _ = T.forward(x, None, None, 4, 1e-5, "identity")
        assert rel_err(y, reference_act(x, 4, None, None, "identity")) < 1e-5

    def test_tile_offsets_are_64_bit():
        # a channels-last sample of 4 x 2**30 elements: the last tile's offsets pass 2**31 within the sample
        import triton
        import triton.language as tl

        @triton.jit
        def offsets_kernel(out_ptr, n, bs, S, C, sn, ss, sc, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
            offs, _, _, _ = T._tile(n, bs, 0, S, C, sn, ss, sc, BLOCK_S, BLOCK_C)
            tl.store(out_ptr + tl.arange(0, BLOCK_S)[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :], offs)

        s, c, block_s = 2**30, 4, 64
        out = torch.zeros(block_s, c, dtype=torch.int64, device=DEVICE)
        bs = s // block_s - 1
        offsets_kernel[(1,)](out, 3, bs, s, c, c * s, c, 1, BLOCK_S=block_s, BLOCK_C=c)
        rows = torch.arange(bs * block_s, s, dtype=torch.int64)[:, None]
        want = 3 * c * s + rows * c + torch.arange(c, dtype=torch.int64)[None, :]
        assert torch.equal(out.cpu(), want)

    def test_tensors_over_2_31_elements_are_taken_while_the_grid_fits():
        meta = {"device": "meta", "dtype": torch.bfloat16}
        big = torch.empty(64, 320, 512, 512, **meta)  # 5.4e9 elements, 262144 positions per sample
        assert T.supports(big) and T.supports(big.contiguous(memory_format=torch.channels_last))
        # 2**31 positions in one sample: 2**23 blocks of positions, past CUDA's 65535
        assert not T.supports(torch.empty(1, 4, 2**16, 2**15, **meta))

    @pytest.mark.gpu
    def test_group_norm_act_on_cuda_uses_triton_and_compiles():
        from groupnorm import functional as F
        from groupnorm import kernels
        from groupnorm import nn as gnn

        x = torch.randn(2, 64, 16, 16, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last
        )
        assert kernels.backend_for(x) == "triton"
        m = gnn.GroupNormAct(32, 64).to("cuda", torch.bfloat16)
        torch.testing.assert_close(m(x), TF.silu(TF.group_norm(x, 32, m.weight, m.bias)), rtol=2e-2, atol=2e-2)
        compiled = torch.compile(m)
        xr = x.clone().requires_grad_()
        compiled(xr).float().square().sum().backward()
        xe = x.clone().requires_grad_()
        F.group_norm_act(xe, 32, m.weight, m.bias).float().square().sum().backward()
        torch.testing.assert_close(xr.grad, xe.grad, rtol=2e-2, atol=2e-2)


def test_the_gpu_benchmark_runs_end_to_end():
    """benchmarks/gpu.py --smoke: tiny shapes through every variant (on the CPU kernels without a GPU)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu.py"), "--smoke"], capture_output=True,
                          text=True, timeout=300, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs eager: median" in proc.stdout.splitlines()[-1]
