"""PreciseBN and test-time batch statistics: what they compute, that they leave the model as it was, the records."""

import pytest
import torch
from torch import nn

from groupnorm import nn as gnn
from groupnorm.data.loader import MemoryLoader
from groupnorm.train import TrainConfig, train_run
from groupnorm.train.bn_eval import batch_norms, batch_statistics_mode, precise_bn


def _net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), gnn.BatchNorm(4, devices=4), nn.ReLU(), nn.Flatten())


def _loader(images, batch):
    return MemoryLoader(images, torch.zeros(len(images), dtype=torch.int64), batch, mean=(0.5,), std=(0.25,),
                        train=False)  # fmt: skip


def test_precise_bn_averages_large_batch_statistics_and_restores_the_model():
    torch.manual_seed(0)
    net = _net()
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 256, (60, 1, 6, 6), dtype=torch.uint8)
    loader = _loader(images, 20)
    with precise_bn(net, loader, torch.device("cpu")):
        assert not net.training and not bn.training and bn.devices == 1  # evaluated as one device
        feats = [net[0](x) for x, _ in loader.epoch(0)]  # three batches of 20
        mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
        var = torch.stack([f.var((0, 2, 3)) for f in feats]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert net.training and bn.momentum == 0.1


def test_batch_statistics_mode_normalises_each_batch_and_changes_nothing():
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(3, 1, 5, 5)
    with batch_statistics_mode(net), torch.no_grad():
        out = net(x).view(3, 4, 5, 5)
    y = net[0](x)
    ref = (y - y.mean((0, 2, 3), keepdim=True)) / (y.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(out, ref.clamp_min(0) * net[1].weight.view(1, 4, 1, 1), atol=1e-5, rtol=1e-5)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert not net.training and not net[1].training


def test_evaluation_in_batch_statistics_mode_uses_the_batch_statistics():
    """The diagnosis's evaluation keeps BN in training mode (a bug once evaluated it with running averages)."""
    from groupnorm.train.classification import evaluate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), gnn.BatchNorm(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[1].running_mean.fill_(100.0)  # running averages that ruin an eval-mode forward
    images = torch.randint(0, 256, (12, 1, 6, 6), dtype=torch.uint8)
    labels = torch.randint(0, 4, (12,))
    loader = MemoryLoader(images, labels, 3, mean=(0.5,), std=(0.25,), train=False)
    with batch_statistics_mode(net), torch.no_grad():
        got = evaluate(net, loader, torch.device("cpu"), keep_modes=True)
        want = torch.cat([torch.nn.functional.cross_entropy(net(x), y, reduction="none") for x, y in loader.epoch(0)])
    assert abs(got["val_loss"] - want.mean().item()) < 1e-5
    assert net[1].running_mean[0] == 100.0  # nothing updated


def test_a_bn_run_records_why_it_fails_and_a_gn_run_does_not(tmp_path):
    kw = {"train_images": 256, "val_images": 128, "epochs": 1, "images_per_device": 2, "devices": 8, "width": 8,
          "threads": 1, "median_last": 1}  # fmt: skip
    bn = train_run(TrainConfig(norm="bn", **kw), tmp_path, log=lambda m: None)
    assert 0 <= bn["val_error_precise_bn"] <= 100 and 0 <= bn["val_error_batch_stats"] <= 100
    gn = train_run(TrainConfig(norm="gn:4", **kw), tmp_path, log=lambda m: None)
    assert "val_error_precise_bn" not in gn and not batch_norms(gnn.GroupNorm(2, 4))


def _frozen_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), gnn.FrozenBatchNorm(4), nn.ReLU(), nn.Conv2d(4, 5, 1))
    net.append(gnn.FrozenBatchNorm(5))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([100.0, -3.0, 0.0, 1.0]))  # far from the data's
        net[1].running_var.copy_(torch.tensor([0.01, 4.0, 1.0, 9.0]))
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
    return net.eval()


def test_frozen_bn_statistics_are_those_of_each_layers_input_over_all_batches():
    from groupnorm.train.bn_eval import frozen_bn_statistics

    net = _frozen_net()
    batches = [torch.randn(3, 3, 5, 5) * 2 + 1e3 for _ in range(4)]  # large offset: shifted sums keep precision
    stats = frozen_bn_statistics(net, batches)
    x1 = torch.cat([net[0](b) for b in batches]).double()
    x2 = torch.cat([net[:4](b) for b in batches]).double()
    for name, x in (("1", x1), ("4", x2)):
        mean, var = stats[name]
        torch.testing.assert_close(mean, x.mean((0, 2, 3)))
        torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_refit_normalises_with_batch_statistics_during_its_pass_then_freezes_them():
    from groupnorm.train.bn_eval import frozen_bn_statistics, refit_frozen_bn, statistics_shift

    net = _frozen_net()
    batches = [torch.randn(16, 3, 6, 6) for _ in range(3)]
    before = statistics_shift(net[1], *frozen_bn_statistics(net, batches)["1"])
    assert before["mean_shift"] > 100 and before["sd_factor"] > 2  # the frozen statistics are far off
    weight = net[1].weight.clone()
    stats = refit_frozen_bn(net, batches)
    h = torch.cat([net[0](b) for b in batches])
    torch.testing.assert_close(net[1].running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, h.var((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].weight, weight)
    # the second layer's statistics came from inputs normalised per batch, not by the old frozen layer
    per_batch = [
        net[3](nn.functional.batch_norm(net[0](b), None, None, weight, net[1].bias, training=True).relu())
        for b in batches
    ]
    torch.testing.assert_close(stats["4"][0].float(), torch.cat(per_batch).mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    after = statistics_shift(net[1], *frozen_bn_statistics(net, batches)["1"])
    assert after["mean_shift"] < 1e-4 and after["sd_factor"] < 1.0001


def test_statistics_shift_counts_a_factor_either_way():
    from groupnorm.train.bn_eval import statistics_shift

    layer = gnn.FrozenBatchNorm(2, eps=0.0)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.0, 1.0]))
        layer.running_var.copy_(torch.tensor([4.0, 1.0]))
    shift = statistics_shift(layer, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 4.0]).double())
    assert shift["mean_shift"] == pytest.approx(0.25)  # (1/2 + 0) / 2
    assert shift["sd_factor"] == pytest.approx(2.0)  # sd off by 2x down in one channel, 2x up in the other


def test_the_shift_baseline_script_measures_a_classifier_on_its_own_images(tmp_path, capsys):
    """scripts/bn_stats_shift.py: a BN classifier's running statistics against its own training images (the
    baseline of the detection report's shift table) are close; a GN run is refused, naming the argument."""
    import importlib.util
    from pathlib import Path

    from groupnorm.train import run_dir_of

    path = Path(__file__).parents[1] / "scripts" / "bn_stats_shift.py"
    spec = importlib.util.spec_from_file_location("bn_stats_shift", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    kw = dict(model="tvresnet", depth=10, width=8, train_images=512, val_images=128, epochs=2, images_per_device=32,
              devices=1, threads=1)  # fmt: skip
    cfg = TrainConfig(norm="bn", **kw)
    train_run(cfg, tmp_path, log=lambda m: None)
    assert script.main([str(run_dir_of(cfg, tmp_path) / "checkpoint.pt"), "--images", "256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[0] == "bn1" and lines[-1].startswith("average")
    shift, factor = map(float, lines[-1].split()[1:])
    assert 0 <= shift < 0.5 and 1 <= factor < 1.5
    gn = TrainConfig(norm="gn:4", **{**kw, "epochs": 1})
    train_run(gn, tmp_path, log=lambda m: None)
    with pytest.raises(SystemExit):
        script.main([str(run_dir_of(gn, tmp_path) / "checkpoint.pt")])
    assert "checkpoint: expected a run with norm 'bn'" in capsys.readouterr().err
