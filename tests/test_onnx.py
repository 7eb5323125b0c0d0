"""ONNX export of every layer and spec, checked by running the graph in onnxruntime."""

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from torch import nn

import groupnorm
from groupnorm import kernels
from groupnorm import nn as gnn

FORMATS = {2: torch.channels_last, 3: torch.channels_last_3d}


def _every_layer(dims: int) -> nn.Module:
    """One net holding each layer: GN, LN, IN, fused GN + ReLU/SiLU, GN + GELU, BN (eval), BN*, WS conv."""
    conv, ws_conv = (nn.Conv2d, gnn.WSConv2d) if dims == 2 else (nn.Conv3d, gnn.WSConv3d)
    model = nn.Sequential(
        conv(3, 16, 3, padding=1),
        gnn.GroupNorm(4, 16),
        gnn.make_norm("ln", 16),
        gnn.make_norm("in", 16),
        gnn.make_norm("gn:4+silu", 16),
        gnn.make_norm("gn/4+relu", 16),
        gnn.GroupNormAct(4, 16, act="gelu"),
        gnn.BatchNorm(16, devices=2),
        gnn.make_norm("bn:frozen", 16),
        ws_conv(16, 8, 3, padding=1),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "var" in name else torch.randn_like(t) * 0.5)
    return model.eval()


def _run(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_every_layer_exports_and_matches_onnxruntime(dims, channels_last):
    fmt = FORMATS[dims] if channels_last else torch.contiguous_format
    model = _every_layer(dims).to(memory_format=fmt)
    x = torch.randn((2, 3) + (6,) * dims).contiguous(memory_format=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), verbose=False
        )
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert "InstanceNormalization" in ops and not any("groupnorm" in op for op in ops)
    x5 = torch.randn((5, 3) + (6,) * dims).contiguous(memory_format=fmt)  # another batch size
    with torch.no_grad():
        want = model(x5).numpy()
    np.testing.assert_allclose(_run(program.model_proto.SerializeToString(), x5), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dims", [2, 3])
def test_legacy_exporter_writes_a_real_graph_for_channels_last(dims):
    # It once wrote a single Constant (the ctypes kernel's output) for channels-last inputs.
    model = _every_layer(dims).to(memory_format=FORMATS[dims])
    x = torch.randn((2, 3) + (6,) * dims).contiguous(memory_format=FORMATS[dims])
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    x3 = torch.randn((3, 3) + (6,) * dims)
    with torch.no_grad():
        np.testing.assert_allclose(_run(f.getvalue(), x3), model(x3).numpy(), rtol=0, atol=1e-4)


def test_tracing_the_kernels_directly_raises():
    def raw(x):
        return kernels.group_norm_act(x, None, None, 2, 1e-5, "silu")[0]

    with pytest.raises(RuntimeError, match=r"cannot be traced by torch\.jit"):
        torch.jit.trace(raw, (torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last),))


@pytest.mark.slow
def test_converted_resnet50_exports_end_to_end():
    model = torchvision.models.resnet50(weights=None, num_classes=10)
    groupnorm.convert_norms(model, "ws+gn:32")
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", max=1024)
        program = torch.onnx.export(model, (x,), dynamic_shapes=({0: batch},), verbose=False)
    x2 = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = model(x2).numpy()
    # 53 float32 layers in two runtimes whose convolutions sum in different orders: on an AVX2 EPYC the largest
    # difference was 1.0e-4 (outputs of about 1.7), a wrong GroupNorm is off by O(1)
    np.testing.assert_allclose(_run(program.model_proto.SerializeToString(), x2), want, rtol=0, atol=3e-4)
