"""The training engine: lr scaling, virtual devices, records, resume after a kill, sweeps, the CLI."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from groupnorm.models import build_model
from groupnorm.train import TrainConfig, learning_rate, run_dir_of, scaled_lr, train_run
from groupnorm.train.config import config_from
from groupnorm.train.sweep import run_cost, run_sweep

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {
    "train_images": 256,
    "val_images": 128,
    "epochs": 2,
    "images_per_device": 4,
    "devices": 4,
    "threads": 1,
    "median_last": 2,
}


def tiny(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_config_from_a_preset_takes_the_shared_fields_and_overrides():
    @dataclasses.dataclass(frozen=True)
    class Preset:
        width: int = 32
        epochs: int = 3
        seeds: tuple[int, ...] = (0, 1)  # no TrainConfig field: left out

    cfg = config_from(Preset(), epochs=5, norm="gn:4")
    assert (cfg.width, cfg.epochs, cfg.norm, cfg.seed) == (32, 5, "gn:4", 0)


def test_lr_is_scaled_linearly_with_images_per_device():
    assert scaled_lr(0.1, 32) == pytest.approx(0.1)
    assert scaled_lr(0.1, 2) == pytest.approx(0.1 * 2 / 32)
    assert TrainConfig(images_per_device=1).lr == pytest.approx(0.1 / 32)
    assert TrainConfig(images_per_device=8, devices=8).effective_batch == 64


def test_schedules():
    assert learning_rate(1.0, 0.0, 10, "cosine", 1.0) == pytest.approx(0.1)  # warm-up from peak/10
    assert learning_rate(1.0, 1.0, 10, "cosine", 1.0) == pytest.approx(1.0)
    assert learning_rate(1.0, 10.0, 10, "cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(1.0, 5.5, 10, "cosine", 1.0) == pytest.approx(0.5)
    assert [learning_rate(1.0, e, 100, "step", 0) for e in (0, 29.9, 30, 60, 95)] == pytest.approx(
        [1, 1, 0.1, 0.01, 0.001]
    )


def test_virtual_devices_in_a_model():
    """In training, BN statistics come from each block of N/D images; GN's never cross samples."""
    x = torch.randn(8, 1, 12, 12)
    for norm, crosses_samples in (("bn", True), ("gn:4", False)):
        model = build_model("resnet", norm=norm, depth=8, width=8, num_classes=3, in_channels=1, devices=4)
        model.train()
        y = model(x)
        x2 = x.clone()
        x2[4:] = torch.randn(4, 1, 12, 12) * 3  # other devices' images
        torch.testing.assert_close(model(x2)[:4], y[:4])
        x3 = x.clone()
        x3[1] = torch.randn(1, 12, 12) * 3  # the other image on sample 0's device
        changed = not torch.allclose(model(x3)[0], y[0])
        assert changed == crosses_samples


def test_run_id_hashes_what_changes_results_only():
    a = TrainConfig()
    assert a.id == TrainConfig().id
    assert a.id != TrainConfig(norm="gn:8").id != TrainConfig(seed=1).id
    assert a.id == TrainConfig(threads=1, data_dir="/elsewhere", checkpoint_seconds=1.0).id
    assert a.id.startswith("fmnist_r8w16_bn_b32_s0_")


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"norm": "gx"}, "cannot parse 'gx'"),
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"schedule": "linear"}, "schedule must be one of cosine, step"),
        ({"depth": 9}, r"6n\+2"),
        ({"images_per_device": 0}, "images_per_device must be a positive int"),
        ({"model": "vit"}, "model must be one of"),
    ],
)
def test_bad_configs_fail_before_training(kw, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**kw)


def test_a_run_writes_its_records(tmp_path):
    cfg = tiny(norm="gn:4", width=8)
    result = train_run(cfg, tmp_path, log=lambda m: None)
    run_dir = run_dir_of(cfg, tmp_path)
    assert json.loads((run_dir / "config.json").read_text())["norm"] == "gn:4"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert json.loads((run_dir / "result.json").read_text()) == result
    assert result["images_per_device"] == 4 and result["devices"] == 4 and result["effective_batch"] == 16
    assert result["error"] == pytest.approx((metrics[0]["val_error"] + metrics[1]["val_error"]) / 2)  # median of 2
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "model" in ckpt and "optimizer" in ckpt
    # a finished run is not trained again
    assert train_run(cfg, tmp_path, log=lambda m: pytest.fail("retrained")) == result


def test_sweep_skips_finished_runs_and_reports_progress(tmp_path):
    configs = [tiny(norm=n, width=8, epochs=1) for n in ("bn", "gn:4")]
    lines = []
    run_sweep(configs, tmp_path, jobs=1, log=lines.append)
    assert any("2/2 runs finished, 100% of the work" in line for line in lines)
    lines.clear()
    results = run_sweep(configs, tmp_path, jobs=1, log=lines.append)
    assert "2 already finished" in lines[0] and all(r["status"] == "finished" for r in results)
    assert run_cost(tiny(images_per_device=1)) > run_cost(tiny(images_per_device=4))


@pytest.mark.slow
def test_sweep_runs_jobs_in_parallel_processes(tmp_path):
    configs = [tiny(norm=n, width=8, epochs=1) for n in ("bn", "gn:4", "ln")]
    results = run_sweep(configs, tmp_path, jobs=2, log=lambda m: None)
    assert [r["norm"] for r in results] == ["bn", "gn:4", "ln"]


def test_diverged_run_is_recorded(tmp_path):
    result = train_run(tiny(norm="none", width=8, base_lr=1e4, epochs=3), tmp_path, log=lambda m: None)
    assert result["status"] == "diverged"


def _env():
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "groupnorm", *args], env=_env(), capture_output=True, text=True, cwd=cwd
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["reproduce", "nope"], ["invalid choice: 'nope'", "batch-sizes"]),
        (["reproduce", "--preset", "huge"], ["unknown preset 'huge'", "smoke, quick, medium, full, paper"]),
        (["reproduce", "--set", "epoch=3"], ["unknown setting 'epoch'", "epochs"]),
        (["reproduce", "--set", "epochs=three"], ["epochs expects int; got 'three'"]),
        (["reproduce", "--set", "seeds=0,x"], ["seeds expects int; got 'x'"]),
        (["train", "--set", "norm=gx"], ["cannot parse 'gx'"]),
        (["sweep", "--norms", "bn", "gn:7", "--set", "width=16"], ["'gn:7' does not apply to 16 channels"]),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, words):
    proc = _cli(*args, "--runs", str(tmp_path)) if args[0] != "reproduce" or "nope" not in args else _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr


def test_cli_help_explains_the_commands():
    out = _cli("--help").stdout
    for w in ("reproduce", "train", "sweep", "report", "torchrun", "--preset smoke"):
        assert w in out
    assert "smoke" in _cli("reproduce", "--help").stdout


def test_image_folder_runs_through_the_engine(tmp_path):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(8):
                pixels = np.full((36, 36, 3), 60 + 120 * c + i, dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / cls / f"{i}.png")
    cfg = tiny(dataset="imagefolder", data_dir=str(tmp_path / "data"), image_size=32, workers=0, width=8, epochs=1,
               images_per_device=2)  # fmt: skip
    result = train_run(cfg, tmp_path / "runs", log=lambda m: None)
    assert result["status"] == "finished" and result["epochs"] == 1


@pytest.mark.parametrize("name", ["batch-sizes", "groups", "features"])
def test_set_workers_reaches_the_imagefolder_loaders(name, tmp_path, monkeypatch):
    from groupnorm.experiments import EXPERIMENTS
    from groupnorm.train import classification
    from groupnorm.train.distributed import Dist
    from groupnorm.train.overrides import apply_overrides

    module = EXPERIMENTS[name]
    key = "datasets" if name == "batch-sizes" else "dataset"
    preset = apply_overrides(module.PRESETS["smoke"], ["workers=3", f"{key}=imagefolder", f"data_dir={tmp_path}"])
    cfgs = module.configs(preset, log=lambda _: None)
    assert cfgs and all(c.workers == 3 for c in cfgs)
    seen = []
    monkeypatch.setattr(
        classification, "FolderLoader", lambda root, batch, **kw: seen.append(kw["workers"]) or _Classes()
    )
    task = classification.ClassificationTask(cfgs[0], Dist(0, 1, 0, torch.device("cpu")), 1, tmp_path)
    task.loaders(2)
    assert seen == [3, 3]  # the train and the val loader


def test_set_workers_reaches_detection_pretraining():
    from groupnorm.experiments import EXPERIMENTS
    from groupnorm.train.overrides import apply_overrides

    module = EXPERIMENTS["detection"]
    preset = apply_overrides(module.PRESETS["smoke"], ["workers=3"])
    assert all(c.workers == 3 for c in module.pretrain_configs(preset))


class _Classes:
    classes = ("a", "b")
