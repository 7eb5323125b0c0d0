"""check_batch_independence and `groupnorm check`: which models mix the samples of a batch, and where."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import groupnorm
from groupnorm import nn as gnn
from groupnorm.cli import main


class HiddenBatchNorm(nn.Module):
    """BN without a BN module: a functional call in a custom forward."""

    def forward(self, x):
        return F.relu(F.batch_norm(x, None, None, training=True))


class BatchMean(nn.Module):
    def forward(self, x):
        return x - x.mean(0, keepdim=True)


class MyBN(nn.BatchNorm2d):
    pass


def conv_net(*norms: nn.Module) -> nn.Sequential:
    layers = [nn.Conv2d(3, 8, 3, padding=1)]
    for norm in norms:
        layers += [norm, nn.Conv2d(8, 8, 3, padding=1)]
    return nn.Sequential(*layers, nn.Dropout(0.5), nn.Flatten(), nn.Linear(8 * 36, 5))


X = torch.randn(4, 3, 6, 6)


def test_gn_model_is_independent_even_with_dropout():
    report = groupnorm.check_batch_independence(conv_net(gnn.GroupNorm(4, 8), nn.ReLU(), gnn.make_norm("frn", 8)), X)
    assert report.independent and report.culprits == []
    assert report.output_difference < 1e-5 and report.gradient_leak == 0
    assert "batch-independent: yes" in str(report)


def test_bn_in_any_form_is_named_and_state_is_kept():
    model = conv_net(
        nn.BatchNorm2d(8), gnn.BatchNorm(8, devices=2), gnn.BatchRenorm(8), MyBN(8), gnn.FrozenBatchNorm(8)
    )
    model[1].train()
    model[3].eval()  # BN in eval mode mixes in training: the check runs in training mode
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    report = groupnorm.check_batch_independence(model, X)
    assert not report.independent
    assert report.culprits == ["1", "3", "5", "7"]  # not the frozen BN at 9
    assert "BatchRenorm with batch statistics" in report.reasons["5"]
    assert report.gradient_leak > 1e-3
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    text = str(report)
    assert "batch-independent: no" in text and "modules that mix samples (4)" in text


def test_hidden_functional_batch_norm_is_charged_to_its_module():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.Identity(), HiddenBatchNorm()), nn.Flatten())
    report = groupnorm.check_batch_independence(model, X)
    assert not report.independent
    assert report.culprits == ["1.1"]
    assert "calls batch_norm" in report.reasons["1.1"]


def test_any_other_mixing_op_is_localized():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), BatchMean()), nn.Flatten())
    report = groupnorm.check_batch_independence(model, X)
    assert not report.independent and report.culprits == ["1.1"]


def test_converted_torchvision_resnet50():
    model = torchvision.models.resnet50(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    report = groupnorm.check_batch_independence(model, x, max_samples=1)
    assert not report.independent
    assert len(report.culprits) == 53 and report.culprits[:2] == ["bn1", "layer1.0.bn1"]
    groupnorm.convert_norms(model, "gn:32")
    report = groupnorm.check_batch_independence(model, x, max_samples=1)
    assert report.independent and report.culprits == [], str(report)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"N >= 2 samples; got \(1, 3, 6, 6\)"):
        groupnorm.check_batch_independence(nn.Identity(), X[:1])
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        groupnorm.check_batch_independence(lambda x: x, X)


def test_cli_exit_status(capsys):
    assert main(["check", "torch.nn:Identity", "--input", "2,3,4,4"]) == 0
    assert "batch-independent: yes" in capsys.readouterr().out
    assert main(["check", "resnet18", "--input", "2,3,32,32"]) == 1
    out = capsys.readouterr().out
    assert "batch-independent: no" in out and "layer4.1.bn2: BatchNorm2d" in out
    assert main(["check", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
