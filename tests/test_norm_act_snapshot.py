"""Norm-act layers changed nothing for the existing specs: the state_dict keys and a seeded forward of each
model builder, snapshotted before the change (built by build_model at main 46c88ea)."""

import hashlib

import pytest
import torch

from groupnorm.models import build_model

# name -> (builder arguments, input shape); devices=2 and 4 images, so BN's statistics differ from IN's
CASES = {
    "resnet": ({"depth": 8, "width": 8}, (4, 1, 12, 12)),
    "tvresnet": ({"depth": 10, "width": 8}, (4, 1, 48, 48)),
    "vgg": ({"depth": 11, "width": 8}, (4, 1, 16, 16)),
    "resnet3d": ({"depth": 8, "width": 8}, (4, 1, 4, 12, 12)),
}

# (model, spec) -> (sha1 of "key:shape,..." of the state dict, 12 digits; logits[:, :2] in training mode)
SNAPSHOT = {
    ("resnet", "bn"): ("d73e0d68749e", [0.73057, 0.5422, 0.35063, 0.65688, 0.53065, 0.57563, 0.49457, 0.42554]),
    ("resnet", "gn:8"): ("5e86668107ec", [0.50289, 0.69666, 0.35006, 0.64743, 0.3359, 0.77658, 0.16301, 0.50442]),
    ("resnet", "ws+gn:8"): ("5e86668107ec", [0.33753, 0.67254, 0.49448, 0.72996, 0.43313, 0.75336, 0.47479, 0.69158]),
    ("resnet", "ln"): ("5e86668107ec", [0.79632, 0.5544, 0.75523, 0.72911, 0.62272, 0.70912, 0.60701, 0.62731]),
    ("resnet", "in"): ("5e86668107ec", [0.49859, 0.61854, 0.49993, 0.63294, 0.46565, 0.70138, 0.58694, 0.36051]),
    ("resnet", "none"): ("2bd16e1ba7e1", [0.35456, 0.1741, 0.22585, 0.22406, 0.17377, 0.19318, 0.16915, 0.20746]),
    ("tvresnet", "bn"): ("67111b458ff5", [-0.32528, 0.25367, -0.19879, 0.18463, -0.38176, 0.29594, -0.32923, 0.452]),
    ("tvresnet", "gn:8"): ("60c24d3d0243", [-0.14599, 0.00678, -0.01014, 0.16959, -0.00877, 0.13334, 0.11274, 0.1958]),
    ("tvresnet", "ws+gn:8"): (
        "60c24d3d0243",
        [-0.32195, 0.22869, 0.08314, 0.27282, -0.22401, 0.32843, -0.07757, 0.24589],
    ),
    ("tvresnet", "ln"): ("60c24d3d0243", [-0.17, 0.18372, -0.36234, 0.16161, -0.18561, 0.07827, -0.05912, 0.39002]),
    ("tvresnet", "in"): ("60c24d3d0243", [-0.1838, 0.30782, -0.10478, 0.30171, -0.49684, 0.23697, -0.34752, 0.09071]),
    ("tvresnet", "none"): (
        "ad55c47b3dce",
        [-0.0466, -0.0081, -0.07518, -0.01554, -0.08438, -0.09347, -0.0599, 0.06818],
    ),
    ("vgg", "bn"): ("684a4a6e815b", [0.03277, 0.0323, 0.0612, 0.02781, 0.04736, 0.02082, 0.0463, 0.03002]),
    ("vgg", "gn:8"): ("399bc273e58b", [0.05432, 0.03886, 0.05369, 0.04801, 0.05715, 0.04768, 0.05464, 0.03839]),
    ("vgg", "ws+gn:8"): ("399bc273e58b", [0.05421, 0.03144, 0.04323, 0.01893, 0.04685, 0.00163, 0.03686, 0.00996]),
    ("vgg", "ln"): ("399bc273e58b", [0.04596, 0.05285, 0.05492, 0.05772, 0.04559, 0.054, 0.04752, 0.05883]),
    ("vgg", "in"): ("399bc273e58b", [0.05006, 0.02673, 0.04855, 0.02933, 0.04564, 0.03031, 0.04641, 0.02657]),
    ("vgg", "none"): ("98ee34b4e015", [-0.00382, -0.00873, -0.0066, -0.00945, -0.00489, -0.01088, -0.00516, -0.00966]),
    ("vgg", "gn:4+relu"): ("399bc273e58b", [0.03712, 0.06065, 0.049, 0.07046, 0.04074, 0.06756, 0.04441, 0.06505]),
    ("resnet3d", "bn"): ("7f568a463e22", [-0.26462, 0.45043, -0.26762, 0.24184, -0.15285, -0.01498, -0.41873, 0.63366]),
    ("resnet3d", "gn:8"): ("ff46be8d4d7a", [-0.60377, 0.72315, -0.61859, 0.80073, -0.60367, 1.06362, -0.49526, 0.8207]),
    ("resnet3d", "ws+gn:8"): (
        "ff46be8d4d7a",
        [-0.32131, 0.62877, -0.14835, 0.17804, -0.36501, 0.62851, -0.10188, 0.584],
    ),
    ("resnet3d", "ln"): ("ff46be8d4d7a", [-0.44191, 1.03433, -0.28638, 0.92881, -0.20395, 0.80979, -0.21203, 1.17703]),
    ("resnet3d", "in"): ("ff46be8d4d7a", [-0.30048, 0.20461, -0.22299, 0.34861, 0.00105, 0.44099, -0.30881, 0.21927]),
    ("resnet3d", "none"): (
        "7bfa9836c094",
        [-0.17691, 0.28899, -0.14397, 0.26619, -0.13398, 0.25663, -0.12262, 0.36875],
    ),
}


def _keys_hash(model: torch.nn.Module) -> str:
    keys = ",".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha1(keys.encode()).hexdigest()[:12]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "spec"), list(SNAPSHOT))
def test_existing_specs_keep_their_keys_and_numbers(name, spec):
    kwargs, shape = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, norm=spec, num_classes=3, in_channels=1, devices=2, zero_init_last=False, **kwargs)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    keys, logits = SNAPSHOT[(name, spec)]
    assert _keys_hash(model) == keys, f"{name} with {spec}: the state_dict keys changed"
    got = model(x)[:, :2].flatten()
    torch.testing.assert_close(got, torch.tensor(logits), atol=2e-5, rtol=0, msg=f"{name} with {spec}: outputs changed")
