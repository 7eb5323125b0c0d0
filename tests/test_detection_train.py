"""The detection engine end to end on a tiny generated dataset: records, exact resume, the experiment, the report."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groupnorm.cli import main
from groupnorm.cli import main as cli_main
from groupnorm.data import coco as data_module
from groupnorm.experiments import detection as experiment
from groupnorm.models.maskrcnn import build_mask_rcnn
from groupnorm.train import DetectionConfig, distributed, run_dir_of
from groupnorm.train import train_run as train_detection
from groupnorm.train.detection import evaluate_detector, open_datasets
from groupnorm.train.records import load_checkpoint, load_records

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # inside pycocotools
]

SIZES = {  # a Mask R-CNN small enough for a test: a few seconds per run on one core
    "scene_size": 64,
    "scene_train": 12,
    "scene_val": 4,
    "scene_scales": (0.9, 1.6),
    "width": 8,
    "fpn_channels": 16,
    "head_channels": 16,
    "fc_channels": 32,
    "anchor_size": 8,
    "rpn_batch_per_image": 32,
    "rpn_pre_nms_train": 100,
    "rpn_post_nms_train": 50,
    "rpn_pre_nms_test": 100,
    "rpn_post_nms_test": 50,
    "box_batch_per_image": 16,
    "detections_per_image": 20,
}


def tiny(tmp_path, **kw) -> DetectionConfig:
    base = {
        **SIZES,
        "backbone_norm": "gn:4",
        "fpn_norm": "gn:4",
        "head_norm": "gn:4",
        "devices": 2,
        "epochs": 2,
        "threads": 1,
        "data_dir": str(tmp_path.parent / "scenes"),  # shared by the tests of this module
        "eval_batch": 4,
        "sample_images": 2,
    }
    return DetectionConfig(**{**base, **kw})


def test_a_few_iterations_end_to_end(tmp_path):
    cfg = tiny(tmp_path, eval_every=1)
    result = train_detection(cfg, tmp_path, log=lambda msg: None)
    run = run_dir_of(cfg, tmp_path)
    assert result["status"] == "finished" and result["epochs"] == 2 and result["effective_batch"] == 4
    for key in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP75"):
        assert 0.0 <= result[key] <= 100.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all("segm_AP" in m for m in metrics)  # eval_every=1
    assert all(m["loss"] > 0 and m["loss_mask"] > 0 for m in metrics)
    samples = json.loads((run / "samples.json").read_text())["images"]
    assert len(samples) == 2 and all(s["file"].endswith(".png") for s in samples)
    assert set(load_checkpoint(run / "checkpoint.pt")) >= {"model", "optimizer", "epoch", "metrics"}
    assert json.loads((run / "config.json").read_text())["backbone_norm"] == "gn:4"
    assert train_detection(cfg, tmp_path) == result  # finished: read back, not retrained


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """Exact on a CPU (on a GPU, RoIAlign's backward adds with atomics, in no fixed order)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tiny(tmp_path, backbone_norm="bn", fpn_norm="none", head="2fc", head_norm="none", checkpoint_steps=1)
    whole = train_detection(cfg, tmp_path / "a", log=lambda msg: None)

    real_epoch = data_module.DetectionLoader.epoch
    served = {"n": 0}

    def killed_after_4_batches(self, epoch, start_step=0):
        for batch in real_epoch(self, epoch, start_step):
            if self.train and served["n"] == 4:
                raise KeyboardInterrupt  # as a Ctrl-C in the middle of epoch 2
            served["n"] += self.train
            yield batch

    monkeypatch.setattr(data_module.DetectionLoader, "epoch", killed_after_4_batches)
    with pytest.raises(KeyboardInterrupt):
        train_detection(cfg, tmp_path / "b", log=lambda msg: None)
    run = run_dir_of(cfg, tmp_path / "b")
    assert not (run / "result.json").exists() and load_checkpoint(run / "checkpoint.pt")["step"] == 1
    monkeypatch.setattr(data_module.DetectionLoader, "epoch", real_epoch)
    logs = []
    resumed = train_detection(cfg, tmp_path / "b", log=logs.append)
    assert any("resuming at epoch 2, step 1" in line for line in logs)
    for key in ("final_loss", "bbox_AP", "segm_AP", "bbox_AP50"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    sd_a = load_checkpoint(run_dir_of(cfg, tmp_path / "a") / "checkpoint.pt")["model"]
    sd_b = load_checkpoint(run / "checkpoint.pt")["model"]
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=1e-5, atol=1e-6)


def test_bn_star_records_its_statistics_shift_and_target_statistics_remove_it(tmp_path):
    """Every BN* run measures how far its frozen statistics are from the training scenes' (backbone_stats.json);
    backbone_stats="target" re-estimates them there before training, which the BN* run must not do."""
    from groupnorm.models import build_model

    classifier = build_model("tvresnet", norm="bn", depth=10, width=8, num_classes=10, in_channels=1)
    torch.save(classifier.state_dict(), tmp_path / "bn.pt")  # fresh BN statistics: mean 0, variance 1
    kw = {"backbone_norm": "bn:frozen", "init": str(tmp_path / "bn.pt"), "trainable_layers": 3, "epochs": 1}
    shifts = {}
    for stats in ("pretrained", "target"):
        cfg = tiny(tmp_path, backbone_stats=stats, **kw)
        result = train_detection(cfg, tmp_path / stats, log=lambda msg: None)
        assert result["status"] == "finished" and result["backbone_stats"] == stats
        shifts[stats] = json.loads((run_dir_of(cfg, tmp_path / stats) / "backbone_stats.json").read_text())
    before = shifts["pretrained"]
    assert before["images"] == 12 and before["backbone_stats"] == "pretrained" and "layers_after" not in before
    assert before["layers"][0]["layer"] == "bn1" and len(before["layers"]) == 1 + 4 * 2 + 3
    assert before["layers"] == shifts["target"]["layers"]  # the same backbone meets the same images
    after = shifts["target"]["layers_after"]
    assert after[0]["mean_shift"] < 1e-4 and after[0]["sd_factor"] < 1.001  # the first layer's exactly
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    for key in ("mean_shift", "sd_factor"):
        assert mean(after, key) < mean(before["layers"], key), key


def test_the_experiment_and_its_report_through_the_cli(tmp_path, capsys):
    """Pre-training (the classification engine), BN* and GN Mask R-CNN, the report: `groupnorm reproduce detection`."""
    sets = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in SIZES.items()]
    sets += [
        "variants=bn*,bn*-target,gn",
        "backbone_gn=gn:4",
        "head_gn=gn:4",
        "pretrain_images=256",
        "pretrain_epochs=1",
        "pretrain_images_per_device=16",
        "pretrain_devices=2",
        "devices=2",
        "epochs=1",
        "seeds=0",
        f"data_dir={tmp_path / 'scenes'}",
    ]
    argv = ["reproduce", "detection", "--preset", "smoke", "--runs", str(tmp_path / "runs"), "--jobs", "1"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "### Verdict" in out and "GN − BN*" in out
    exp = tmp_path / "runs" / "detection"
    recs = load_records(exp)
    assert sorted(r.config["variant"] for r in recs) == ["bn*", "bn*-target", "gn"] and all(r.finished for r in recs)
    pre = load_records(exp / "pretrain")
    assert sorted(r.config["norm"] for r in pre) == ["bn", "gn:4"]
    star = next(r for r in recs if r.config["variant"] == "bn*")
    assert star.config["init"].startswith("detection/pretrain/") and star.config["trainable_layers"] == 3
    report = (exp / "report.md").read_text()
    assert "Tables 4-7" in report and "| BN* | BN* | 4conv1fc, GN (G=4) | pre-trained |" in report
    assert "39.5" in report and "40.0" in report  # the paper's numbers beside ours
    assert "| BN*, target statistics | BN* (target statistics) |" in report
    assert "### Why BN* and fine-tuned BN differ here (measured)" in report and "| `bn1` |" in report
    assert "BN* with target statistics − BN*" in report
    assert (exp / "figures" / "samples_main.png").is_file() and (exp / "figures" / "curves_main.png").is_file()
    rows = json.loads((exp / "summary.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["bn*", "bn*-target", "gn"] and rows[0]["seeds"] == [0]
    assert rows[2]["paper_bbox_AP"] == 40.0 and 0.0 <= rows[2]["segm_AP_mean"] <= 100.0
    # a second run skips everything finished
    assert main(argv) == 0
    assert "3 already finished" in capsys.readouterr().out


def test_a_bad_preset_fails_before_anything_trains(tmp_path):
    with pytest.raises(ValueError, match="variants must be among"):
        experiment.configs(experiment.Preset(variants=("bn**",)))
    assert main(["reproduce", "detection", "--runs", str(tmp_path), "--set", "head_gn=gn:5"]) == 2
    assert not (tmp_path / "detection").exists() or not any((tmp_path / "detection").iterdir())


def _sets(cfg_kw: dict) -> list[str]:
    out = []
    for k, v in cfg_kw.items():
        out += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"]
    return out


def test_one_run_from_the_command_line(tmp_path, capsys):
    kw = {**SIZES, "backbone_norm": "gn:4", "fpn_norm": "gn:4", "head_norm": "gn:4", "devices": 2, "epochs": 1}
    kw["data_dir"] = str(tmp_path.parent / "scenes")
    assert cli_main(["train", "--task", "detection", "--runs", str(tmp_path), *_sets(kw)]) == 0
    assert "box AP" in capsys.readouterr().out
    assert cli_main(["train", "--task", "detection", "--runs", str(tmp_path), "--set", "head=x"]) == 2
    assert "head must be one of 2fc, 4conv1fc; got 'x'" in capsys.readouterr().err


@pytest.mark.distributed
def test_torchrun_two_processes_train_and_evaluate_together(tmp_path):
    """2 gloo processes, 1 device each: DDP training, every validation image evaluated once, on rank 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kw = {**SIZES, "backbone_norm": "bn", "fpn_norm": "gn:4", "head_norm": "gn:4", "devices": 2, "epochs": 1}
    kw["data_dir"] = str(tmp_path / "scenes")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += ["-m", "groupnorm", "train", "--task", "detection", "--runs", str(tmp_path / "runs"), *_sets(kw)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result_path,) = (tmp_path / "runs" / "detection").glob("*/result.json")
    result = json.loads(result_path.read_text())
    assert result["processes"] == 2 and result["effective_batch"] == 4 and result["status"] == "finished"
    assert result["bbox_AP"] is not None and proc.stdout.count("(COCOeval, %)") == 1  # printed by rank 0 only
    # rank 0 evaluated the predictions of both ranks: one process evaluating the final weights agrees
    cfg = DetectionConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(
        (result_path.parent / "config.json").read_text()).items()})  # fmt: skip
    train_set, val_set = open_datasets(cfg)
    model = build_mask_rcnn(cfg, train_set.num_classes, devices=1)
    model.load_state_dict(load_checkpoint(result_path.parent / "checkpoint.pt")["model"])
    metrics, results = evaluate_detector(model, val_set, distributed.Dist(0, 1, 0, torch.device("cpu")))
    recorded = json.loads((result_path.parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert recorded["val_detections"] == len(results) > 0
    assert 100 * metrics["bbox"]["AP"] == pytest.approx(result["bbox_AP"], abs=1e-6)
    assert 100 * metrics["segm"]["AP50"] == pytest.approx(result["segm_AP50"], abs=1e-6)
