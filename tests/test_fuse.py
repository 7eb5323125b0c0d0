"""fuse_group_norm_act on diffusers' UNet and VAE, and on models where a GN must not be fused."""

import copy
import warnings

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel
from torch import nn

import groupnorm
from groupnorm.convert.fuse import FusedGroupNormSiLU, SiLUAfterFusedNorm


def _unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )  # fmt: skip


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
    )  # fmt: skip


def _check_fused(model: nn.Module, *args) -> list[str]:
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = groupnorm.fuse_group_norm_act(model, *args)
    assert list(model.state_dict()) == keys  # checkpoints load as before
    # what is left unfused is a GN not followed by SiLU (the attention blocks' group_norm)
    left = [n for n, m in model.named_modules() if type(m) is nn.GroupNorm]
    assert all(n.endswith("group_norm") for n in left), left
    out, want = model(*args).sample, reference(*args).sample
    torch.testing.assert_close(out, want, rtol=0, atol=1e-4)
    out.square().mean().backward()
    want.square().mean().backward()
    grads = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    return fused


def test_unet_group_norm_silu_pairs_are_fused():
    unet = _unet()
    blocks = sum(type(m).__name__ == "ResnetBlock2D" for m in unet.modules())
    fused = _check_fused(unet, torch.randn(2, 3, 16, 16), torch.tensor([10, 500]))
    assert "conv_norm_out" in fused and "down_blocks.0.resnets.0.norm1" in fused
    assert len(fused) == 2 * blocks + 1  # norm1 and norm2 of every resnet block, and the output norm


def test_a_fused_unet_compiles_without_graph_breaks():
    unet = _unet()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    want = unet(x, t).sample
    groupnorm.fuse_group_norm_act(unet, x, t)
    got = torch.compile(unet, backend="aot_eager", fullgraph=True)(x, t).sample  # fullgraph: a break raises
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_vae_group_norm_silu_pairs_are_fused():
    fused = _check_fused(_vae(), torch.randn(2, 3, 16, 16))
    assert "encoder.conv_norm_out" in fused and "decoder.conv_norm_out" in fused


class _Residual(nn.Module):
    """A GN whose output goes to a SiLU and to a residual add: it must stay unfused."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.act, self.norm2 = nn.GroupNorm(2, 4), nn.SiLU(), nn.GroupNorm(2, 4)

    def forward(self, x):
        h = self.norm(x)
        return self.act(h) + h + self.act(self.norm2(x))


def test_a_norm_whose_output_is_used_twice_is_not_fused():
    model = _Residual()
    x = torch.randn(2, 4, 3, 3)
    want = model(x)
    assert groupnorm.fuse_group_norm_act(model, x) == ["norm2"]
    assert type(model.norm) is nn.GroupNorm and type(model.norm2) is FusedGroupNormSiLU
    assert type(model.act) is SiLUAfterFusedNorm  # shared: still applies SiLU to norm's output
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_fuse_checks_its_model():
    with pytest.raises(TypeError, match=r"fuse_group_norm_act: model must be an nn\.Module; got int"):
        groupnorm.fuse_group_norm_act(3)
