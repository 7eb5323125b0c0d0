"""Hypothesis: GN over random shapes and groups agrees with the reference and keeps its invariants."""

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from groupnorm import functional as F
from groupnorm import reference as R


@st.composite
def gn_case(draw):
    groups = draw(st.integers(1, 6))
    per_group = draw(st.integers(1, 5))
    n = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
    if per_group * (1 if not spatial else int(torch.tensor(spatial).prod())) < 2:
        spatial = [*spatial, 2]
    channels_last = draw(st.booleans()) and len(spatial) in (2, 3)
    seed = draw(st.integers(0, 2**31 - 1))
    return n, groups, per_group, spatial, channels_last, seed


@settings(max_examples=60, deadline=None)
@given(gn_case(), st.floats(-100, 100), st.floats(0.1, 10))
@example((1, 1, 1, [1, 2], True, 0), 16.0, 0.125)  # a 2-value group far from 0: torch's kernel cancelled here
def test_gn_matches_reference_and_invariants(case, offset, scale):
    n, groups, per_group, spatial, channels_last, seed = case
    c = groups * per_group
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g) * scale + offset
    if channels_last:
        x = x.to(memory_format=torch.channels_last if len(spatial) == 2 else torch.channels_last_3d)
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    y = F.group_norm(x, groups, w, b)
    ref = R.group_norm(x, groups, w, b)
    err = (y.double() - ref).abs().max().item()
    assert err < 1e-3 * max(1.0, ref.abs().max().item())
    # without affine: each (sample, group) has mean 0 and variance var / (var + eps)
    z = F.group_norm(x, groups).double().reshape(n, groups, -1)
    assert z.mean(-1).abs().max() < 1e-3
    # invariant to a shift of the input, and to a scale with eps scaled alike
    z2 = F.group_norm(x * 3 + 5, groups, eps=9e-5).double().reshape(n, groups, -1)
    assert (z - z2).abs().max() < 2e-3
    assert y.is_contiguous(memory_format=F.memory_format_of(x))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_bn_devices_matches_reference(devices, per_device, c, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(devices * per_device, c, 3, generator=g)
    y = F.batch_norm(x, None, None, training=True, devices=devices)
    assert (y.double() - R.batch_norm(x, devices=devices)).abs().max() < 1e-4
