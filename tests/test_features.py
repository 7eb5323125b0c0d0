"""The feature-distribution study (Fig. 6): the VGG, the percentile probe, its records and resume; smoke end to end."""

import json

import numpy as np
import pytest
import torch

from groupnorm import nn as gnn
from groupnorm.cli import main
from groupnorm.experiments import features
from groupnorm.models import VGG, build_model
from groupnorm.train import TrainConfig, load_records, run_dir_of, train_run
from groupnorm.train import check_configs as check_buildable
from groupnorm.train import records as records_module
from groupnorm.train.config import hashed_fields
from groupnorm.train.probe import percentiles, probe_percentiles
from groupnorm.train.records import read_probes

QS = (1.0, 20.0, 80.0, 99.0)
TINY = {"model": "vgg", "depth": 11, "width": 8, "train_images": 256, "val_images": 128, "epochs": 2,
        "images_per_device": 8, "devices": 2, "threads": 1, "median_last": 1, "probe_every": 5,
        "probe_images": 24}  # fmt: skip


def test_percentiles_match_numpy():
    for shape in ((1,), (7,), (3, 5, 4, 4), (1000,)):
        x = torch.randn(shape) * 3 + 1
        qs = (0, 1, 20, 50, 80, 99, 100)
        np.testing.assert_allclose(percentiles(x, qs), np.percentile(x.numpy(), qs), rtol=1e-6)
    x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(percentiles(x, QS), np.percentile(x.numpy(), QS), rtol=1e-6)


@pytest.mark.parametrize("depth", [11, 16])
def test_vgg_layers_and_the_probed_conv(depth):
    model = build_model("vgg", norm="gn:4", depth=depth, width=8, num_classes=10, in_channels=1)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth - 3 and convs[-1] == model.probe_module
    assert model.probe_module == {11: "features.conv5_2", 16: "features.conv5_3"}[depth]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.features.conv1_1.bias is None  # a bias is pointless before a norm with a beta
    assert build_model("vgg", norm="none", depth=11, width=8, num_classes=10).features.conv1_1.bias is not None
    # pools skip maps under 6 pixels: 28 -> 14 -> 7 -> 3, the last stages at 3x3; 224 goes through all five
    shapes = []
    model.features.conv5_1.register_forward_hook(lambda m, a, out: shapes.append(out.shape[-1]))
    model(torch.randn(1, 1, 28, 28))
    assert shapes == [3]
    fused = build_model("vgg", norm="gn:4+relu", depth=11, width=8, num_classes=10)  # the norm applies the ReLU
    norm_acts = {id(m.act) for m in fused.modules() if isinstance(m, gnn.GroupNormAct)}
    assert all(id(m) in norm_acts for m in fused.modules() if isinstance(m, torch.nn.ReLU))  # only the norms' own
    assert fused.probe_module == "features.conv5_2"
    with pytest.raises(ValueError, match="depth must be one of 11, 13, 16, 19"):
        VGG(12, 8, 10, 1, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("norm", ["none", "bn", "gn:4"])
def test_the_probe_captures_the_last_convs_responses_before_norm_and_relu(norm):
    """Checked against a direct computation: the layers run by hand up to conv5_3, its output's percentiles."""
    model = build_model("vgg", norm=norm, depth=16, width=8, num_classes=10, in_channels=1, devices=2)
    x = torch.randn(12, 1, 28, 28)
    if norm == "bn":  # running statistics away from their init, so eval mode is not the identity
        model.train()
        for _ in range(3):
            model(torch.randn(12, 1, 28, 28) * 2 + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = probe_percentiles(model, x, QS)

    model.eval()
    h = x
    with torch.no_grad():
        for name, layer in model.features.named_children():
            h = layer(h)
            if name == "conv5_3":
                break
    expected = np.percentile(h.numpy(), QS)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0] < 0 < got[-1]  # before the ReLU: negative responses too (an in-place ReLU must not leak in)
    # the probe changes nothing: weights, running statistics, mode
    model.train()
    probe_percentiles(model, x, QS)
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_new_fields_leave_the_run_ids_of_earlier_runs_alone():
    cfg = TrainConfig()
    assert not {"probe_every", "probe_images", "probe_percentiles"} & set(hashed_fields(cfg))
    assert TrainConfig(probe_images=7).id != cfg.id  # ... and count once set
    assert TrainConfig(model="vgg", probe_every=10).id != TrainConfig(model="vgg").id
    assert TrainConfig(probe_percentiles=[1, 20, 80, 99]).id == cfg.id  # one spelling, one id
    with pytest.raises(ValueError, match="probe_every must be >= 0"):
        TrainConfig(probe_every=-1)
    with pytest.raises(ValueError, match=r"probe_percentiles must be numbers in 0\.\.100"):
        TrainConfig(probe_percentiles=(50, 101))


def test_probe_on_a_model_without_a_probe_module_is_rejected_before_training():
    with pytest.raises(ValueError, match="no probe_module attribute"):
        check_buildable([TrainConfig(model="resnet", probe_every=10)])
    check_buildable([TrainConfig(**{k: v for k, v in TINY.items() if k != "threads"})])


def test_a_run_records_probes_every_k_iterations(tmp_path):
    cfg = TrainConfig(**TINY)
    result = train_run(cfg, tmp_path, log=lambda m: None)
    probes = read_probes(run_dir_of(cfg, tmp_path))
    steps = 256 // 16  # images / (8 per device x 2 devices)
    assert [p["iteration"] for p in probes] == list(range(0, 2 * steps + 1, 5))
    assert probes[1]["epoch"] == pytest.approx(5 / steps)
    assert all(list(p["percentiles"]) == ["1", "20", "80", "99"] for p in probes)
    assert all(p["percentiles"]["1"] <= p["percentiles"]["99"] for p in probes)
    assert result["status"] == "finished"
    # without probe_every: no probes file, and the same training
    plain = train_run(cfg.replace(probe_every=0), tmp_path, log=lambda m: None)
    assert not (run_dir_of(cfg.replace(probe_every=0), tmp_path) / "probes.jsonl").exists()
    assert plain["error"] == result["error"] and plain["train_error"] == result["train_error"]


def test_probes_resume_exactly_after_an_interruption(tmp_path, monkeypatch):
    """Stopped after a mid-epoch checkpoint, then resumed: the same probes and metrics as an uninterrupted run."""
    cfg = TrainConfig(**{**TINY, "checkpoint_steps": 3})
    whole = train_run(cfg, tmp_path / "whole", log=lambda m: None)

    saves = []
    real_save = records_module.save_checkpoint

    def save_then_stop(path, state):
        real_save(path, state)
        saves.append(state["step"])
        if len(saves) == 3:  # in epoch 1, after step 9
            raise KeyboardInterrupt

    monkeypatch.setattr(records_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", log=lambda m: None)
    cut_dir = run_dir_of(cfg, tmp_path / "cut")
    assert [p["iteration"] for p in read_probes(cut_dir)] == [0, 5]  # what the checkpoint holds, no more
    monkeypatch.setattr(records_module, "save_checkpoint", real_save)
    resumed = train_run(cfg, tmp_path / "cut", log=lambda m: None)

    assert read_probes(cut_dir) == read_probes(run_dir_of(cfg, tmp_path / "whole"))
    keys = ("train_loss", "train_error", "val_loss", "val_error")
    a = load_records(tmp_path / "whole" / "train")[0].metrics
    b = load_records(tmp_path / "cut" / "train")[0].metrics
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    assert resumed["error"] == whole["error"]


def test_presets_build():
    for name in ("smoke", "quick", "medium", "full"):
        configs = features.configs(features.PRESETS[name])
        assert list(dict.fromkeys(c.norm for c in configs)) == list(features.PRESETS[name].norms)
        assert all(c.probe_every > 0 and c.model == "vgg" for c in configs)
        check_buildable(configs)


@pytest.mark.slow
def test_smoke_reproduce_features_end_to_end(tmp_path, capsys):
    assert main(["reproduce", "features", "--preset", "smoke", "--runs", str(tmp_path)]) == 0
    exp = tmp_path / features.NAME
    report = (exp / "report.md").read_text()
    for words in ("### Verdict", "Figure 6", "29.2", "28.0", "27.6", "before norm and ReLU"):
        assert words in report
    for fig in ("fig6_main.png", "fig6_spread_main.png", "curves_main.png"):  # curves: train and val error
        assert (exp / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{fig}" in report
    rows = json.loads((exp / "summary.json").read_text())["rows"]
    assert [r["norm"] for r in rows] == ["none", "bn", "gn:4"]
    for r in rows:
        assert r["probes"] == 1 + 2 * 12 // 3 and set(r["last_percentiles"]) == {"1", "20", "80", "99"}
        assert 0 <= r["error_mean"] <= 100 and r["paper_error"] in (29.2, 28.0, 27.6)
    for run in exp.glob("*/"):
        if run.name != "figures":
            assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "result.json", "probes.jsonl"}
    capsys.readouterr()
    assert main(["reproduce", "features", "--preset", "smoke", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 already finished" in out and "epoch 1/" not in out
    assert main(["report", "features", "--runs", str(tmp_path)]) == 0


def test_report_measures_drift_and_jitter_per_run_not_on_the_seed_mean(tmp_path):
    # Two seeds whose spreads zig-zag in opposite phase: the mean curve is flat (no jitter, no drift), while
    # each run changes by 20% from one probe to the next; the report must say the latter.
    from groupnorm.report import features as report

    for seed, phase in ((0, 0), (1, 1)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"norm": "none", "seed": seed}))
        (run / "result.json").write_text(json.dumps({"error": 10.0, "train_error": 9.0}))
        (run / "metrics.jsonl").write_text("")
        spreads = [1.0, *[10.0 if (i + phase) % 2 == 0 else 12.0 for i in range(9)]]
        lines = [
            {"iteration": 10 * i, "epoch": i / 2, "percentiles": {"1": -s / 2, "99": s / 2}}
            for i, s in enumerate(spreads)
        ]
        (run / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in lines))
    (cell,) = report._norm_runs(load_records(tmp_path)).values()
    assert cell.curves().jitter == 0.0  # the mean of the two curves is flat after the first epoch
    jitter, sd = cell.run_stat("jitter")
    assert jitter == pytest.approx(100 * (12 - 10) / 11, rel=0.15) and sd < 5
    drift, _ = cell.run_stat("drift")
    assert drift == pytest.approx(1.0, abs=0.21)
