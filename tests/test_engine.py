"""The one run engine, for every task: exact resume after SIGKILL, records a team can trust, clear errors."""

import itertools
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from groupnorm.io import cache_dir
from groupnorm.models import build_model
from groupnorm.report import build_report
from groupnorm.report.common import norm_kind, norm_label
from groupnorm.train import (
    CorruptRecord,
    DetectionConfig,
    TrainConfig,
    VideoConfig,
    load_records,
    run_dir_of,
    train_run,
)
from groupnorm.train.engine import inductor_can_build
from groupnorm.train.sweep import run_sweep

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # in pycocotools

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {"train_images": 256, "val_images": 128, "epochs": 2, "images_per_device": 4, "devices": 4, "width": 8,
        "median_last": 1}  # fmt: skip
DETECTION = {"scene_size": 64, "scene_train": 16, "scene_val": 4, "scene_scales": (0.9, 1.6), "width": 8,
             "fpn_channels": 16, "head_channels": 16, "fc_channels": 32, "anchor_size": 8, "rpn_batch_per_image": 32,
             "rpn_pre_nms_train": 100, "rpn_post_nms_train": 50, "rpn_pre_nms_test": 100, "rpn_post_nms_test": 50,
             "box_batch_per_image": 16, "detections_per_image": 20, "backbone_norm": "bn", "fpn_norm": "none",
             "head": "2fc", "head_norm": "none", "devices": 2, "epochs": 2, "eval_batch": 4}  # fmt: skip
# (task, --set settings, the metrics that must come out identical)
KINDS = {
    "classification": ({**TINY, "epochs": 3, "norm": "bn"}, ("train_loss", "train_error", "val_loss", "val_error")),
    "video": ({**TINY, "norm": "bn", "frames": 4, "train_images": 64, "val_images": 32, "images_per_device": 2},
              ("train_loss", "train_error", "val_loss", "val_error", "val_top5_error")),
    "detection": (DETECTION, ("loss", "loss_mask", "loss_classifier", "bbox_AP", "segm_AP")),
}  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocesses on one thread, with a cache of their own (generated data) that shares the compiled kernels."""
    cache = tmp_path_factory.mktemp("cache")
    kernels = cache_dir() / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    (cache / "kernels").symlink_to(kernels, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "GROUPNORM_CACHE": str(cache),
            "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip


def _train_cmd(task: str, runs: Path, settings: dict) -> list[str]:
    cmd = [sys.executable, "-m", "groupnorm", "train", "--task", task, "--runs", str(runs)]
    for k, v in settings.items():
        cmd += ["--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"]
    return cmd


@pytest.mark.slow
@pytest.mark.parametrize("task", list(KINDS))
def test_a_sigkill_mid_epoch_resumes_to_identical_numbers(tmp_path, env, task):
    settings, keys = KINDS[task]
    settings = {**settings, "threads": 1, "checkpoint_steps": 2}
    if task == "detection":
        settings["data_dir"] = str(tmp_path / "scenes")
    subprocess.run(_train_cmd(task, tmp_path / "whole", settings), env=env, check=True, capture_output=True)
    (whole_dir,) = {p.parent for p in (tmp_path / "whole").glob("*/*/result.json")}

    runs = tmp_path / "killed"
    ckpt = runs / whole_dir.parent.name / whole_dir.name / "checkpoint.pt"
    for kill_after in (1, 3):  # two kills: mid-epoch 1, then later
        proc = subprocess.Popen(_train_cmd(task, runs, settings), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline, seen, last = time.time() + 240, 0, None
        while time.time() < deadline and proc.poll() is None:
            stamp = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if stamp is not None and stamp != last:
                seen, last = seen + 1, stamp
                if seen >= kill_after:
                    break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (ckpt.parent / "result.json").exists(), "the run finished before it could be killed"
    subprocess.run(_train_cmd(task, runs, settings), env=env, check=True, capture_output=True)

    whole, resumed = load_records(whole_dir.parent)[0], load_records(ckpt.parent.parent)[0]
    assert [[m.get(k) for k in keys] for m in resumed.metrics] == [[m.get(k) for k in keys] for m in whole.metrics]
    assert [m["images_seen"] for m in resumed.metrics] == [m["images_seen"] for m in whole.metrics]


def test_a_run_of_another_process_count_is_another_run(monkeypatch, tmp_path):
    single = TrainConfig(**TINY)
    monkeypatch.setenv("WORLD_SIZE", "2")
    double = TrainConfig(**TINY)  # made inside a torchrun of 2 processes
    assert double.processes == 2 and single.processes == 1 and double.id != single.id
    assert double.replace(processes=1).id == single.id  # a single process keeps the ids of earlier runs
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ValueError, match="processes=2, launched with 1"):
        train_run(double, tmp_path, log=lambda m: None)
    with pytest.raises(ValueError, match="multiple of processes=3"):
        TrainConfig(**{**TINY, "processes": 3})


@pytest.fixture
def finished(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 1, "norm": "gn:4", "threads": 1})
    train_run(cfg, tmp_path, log=lambda m: None)
    return cfg, run_dir_of(cfg, tmp_path)


def test_a_corrupt_result_or_checkpoint_names_the_file_and_how_to_go_on(finished, tmp_path):
    cfg, run = finished
    (run / "result.json").write_text('{"status": "fini')
    with pytest.raises(CorruptRecord) as err:
        train_run(cfg, tmp_path)
    assert str(run / "result.json") in str(err.value) and "restart that run" in str(err.value)
    with pytest.raises(CorruptRecord, match=re.escape("result.json is unreadable")):
        load_records(run.parent)
    (run / "result.json").unlink()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptRecord, match=re.escape("checkpoint.pt is unreadable: not a readable checkpoint")):
        train_run(cfg, tmp_path)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n')
    with pytest.raises(CorruptRecord, match=re.escape("metrics.jsonl is unreadable: line 2")):
        load_records(run.parent)


def test_a_corrupt_record_is_one_line_from_the_command_line(finished, tmp_path):
    _, run = finished
    (run / "result.json").write_text("{")
    cmd = [sys.executable, "-m", "groupnorm", "train", "--runs", str(tmp_path)]
    for k, v in {**TINY, "epochs": 1, "norm": "gn:4"}.items():
        cmd += ["--set", f"{k}={v}"]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "result.json is unreadable" in proc.stderr and "restart that run" in proc.stderr


def test_records_are_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        cfg = TrainConfig(**{**TINY, "epochs": 1, "norm": "gn:4", "threads": 1})
        train_run(cfg, tmp_path, log=lambda m: None)
        report = build_report("batch-sizes", tmp_path / "train")
    finally:
        os.umask(old)
    run = run_dir_of(cfg, tmp_path)
    for path in (run / "config.json", run / "metrics.jsonl", run / "result.json", run / "checkpoint.pt", report):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "groupnorm", *args], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("jobs", ["0", "-1", "x"])
def test_jobs_must_be_a_positive_number(tmp_path, jobs):
    proc = _cli("reproduce", "--preset", "smoke", "--runs", str(tmp_path), "--jobs", jobs)
    assert proc.returncode == 2 and f"expected a positive number of runs at once; got '{jobs}'" in proc.stderr
    with pytest.raises(ValueError, match="jobs must be a positive int"):
        run_sweep([TrainConfig(**TINY)], tmp_path, jobs=0)


def test_an_unwritable_runs_directory_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    proc = _cli("reproduce", "--preset", "smoke", "--runs", str(tmp_path / "file" / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --runs: cannot create the records directory" in proc.stderr


def test_reports_know_fused_specs_and_refuse_unknown_names(tmp_path):
    assert norm_kind("gn:8+silu") == "gn" and norm_kind("ws+gn/16") == "gn" and norm_kind("bn:frozen") == "bn"
    assert norm_label("gn:8+silu") == "GN (G=8)+SiLU" and norm_label("ws+gn/16") == "WS+GN (16 ch/group)"
    assert norm_label("none") == "no norm" and norm_label("bn:frozen") == "BN:frozen"
    with pytest.raises(ValueError, match="unknown report 'batch-size'; expected one of batch-sizes"):
        build_report("batch-size", tmp_path)


def test_the_recipe_of_a_report_is_what_the_runs_recorded(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 1, "norm": "gn:4", "threads": 1, "base_lr": 0.05, "warmup_epochs": 0.5})
    train_run(cfg, tmp_path, log=lambda m: None)
    text = build_report("batch-sizes", tmp_path / "train").read_text()
    assert "lr = 0.05 x B/32 at B images per device, warmed up linearly from lr/10 over 0.5 epochs" in text
    assert "0.1 x B/32" not in text


def test_every_task_starts_from_its_init(tmp_path, env, monkeypatch):
    """A run's init names an earlier run's checkpoint; the engine refuses one that is missing or unfinished."""
    monkeypatch.setenv("GROUPNORM_CACHE", env["GROUPNORM_CACHE"])
    pre = TrainConfig(**{**TINY, "epochs": 1, "norm": "gn:4", "threads": 1, "experiment": "pre"})
    video = VideoConfig(**{**KINDS["video"][0], "norm": "gn:4", "epochs": 1, "threads": 1, "model": "resnet3d",
                           "zero_init_last": False, "init": f"pre/{pre.id}/checkpoint.pt"})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train_run(video, tmp_path, log=lambda m: None)
    train_run(pre, tmp_path, log=lambda m: None)
    assert train_run(video, tmp_path, log=lambda m: None)["status"] == "finished"
    config = json.loads((run_dir_of(video, tmp_path) / "config.json").read_text())
    assert config["init"] == video.init and config["frames"] == 4
    det = DetectionConfig(**{**DETECTION, "init": "nope/checkpoint.pt", "backbone_norm": "bn:frozen",
                             "trainable_layers": 3})  # fmt: skip
    with pytest.raises(FileNotFoundError, match=re.escape("init='nope/checkpoint.pt': no checkpoint at")):
        train_run(det, tmp_path, log=lambda m: None)


def test_batch_renorm_follows_the_ramp_over_the_run(tmp_path, monkeypatch):
    """The engine sets r_max and d_max before every step: BN alone at first, 3 and 5 from a quarter of the run."""
    from groupnorm.nn.renorm import BatchRenorm

    seen = []
    real = BatchRenorm.forward

    def spy(self, x):
        if self.training and torch.is_grad_enabled():  # training steps (not the final BN diagnosis)
            seen.append((self.r_max, self.d_max))
        return real(self, x)

    monkeypatch.setattr(BatchRenorm, "forward", spy)
    cfg = TrainConfig(**{**TINY, "epochs": 2, "norm": "brn", "threads": 1})
    assert train_run(cfg, tmp_path, log=lambda m: None)["status"] == "finished"
    model = build_model("resnet", norm="brn", num_classes=10, in_channels=1, depth=8, width=8)
    layers = sum(isinstance(m, BatchRenorm) for m in model.modules())
    per_step = seen[::layers]
    assert per_step[0] == (1.0, 0.0) and per_step[-1] == (3.0, 5.0)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(per_step))  # r_max never falls


@pytest.mark.parametrize(
    ("norm", "mode", "expected"),
    [("bn", "auto", True), ("frn", "auto", True), ("evonorm-s0:2", "auto", True), ("gn:2", "auto", False),
     ("brn", "auto", False), ("bn:sync", "auto", False), ("gn:2", "on", True), ("bn", "off", False)],
)  # fmt: skip
def test_the_engine_compiles_where_it_was_measured_to_pay(tmp_path, norm, mode, expected):
    from groupnorm.train import distributed
    from groupnorm.train.engine import compiles, task_of

    cfg = TrainConfig(**{**TINY, "norm": norm, "torch_compile": mode})
    buildable = mode != "auto" or inductor_can_build()  # auto never compiles where inductor cannot build
    assert compiles(task_of(cfg)(cfg, distributed.setup(), cfg.devices, tmp_path)) is (expected and buildable)
    video = VideoConfig(**{**KINDS["video"][0], "norm": norm, "torch_compile": mode})
    assert compiles(task_of(video)(video, distributed.setup(), video.devices, tmp_path)) is (mode == "on")


def test_torch_compile_is_checked_and_not_part_of_the_run_id():
    with pytest.raises(ValueError, match="torch_compile must be 'off', 'on' or 'auto'; got 'yes'"):
        TrainConfig(**TINY, torch_compile="yes")
    assert TrainConfig(**TINY, torch_compile="on").id == TrainConfig(**TINY).id


@pytest.mark.slow
@pytest.mark.skipif(not inductor_can_build(), reason="torch.compile's CPU code needs a C++ compiler and Python.h")
def test_a_compiled_run_trains_as_the_eager_one(tmp_path):
    """Per-device BN under torch.compile: the same losses to float rounding, running statistics included."""
    settings = {**TINY, "epochs": 1, "norm": "bn", "threads": 1}
    eager = train_run(TrainConfig(**settings), tmp_path / "eager", log=lambda m: None)
    compiled = train_run(TrainConfig(**settings, torch_compile="on"), tmp_path / "compiled", log=lambda m: None)
    (a,), (b,) = (load_records(tmp_path / d / "train")[0].metrics for d in ("eager", "compiled"))
    assert compiled["status"] == eager["status"] == "finished"
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-2)  # through the running statistics


def test_auto_does_not_compile_where_inductor_cannot_build(tmp_path, monkeypatch):
    from groupnorm.train import distributed, engine

    cfg = TrainConfig(**{**TINY, "norm": "bn", "torch_compile": "auto"})
    task = engine.task_of(cfg)(cfg, distributed.setup(), cfg.devices, tmp_path)
    monkeypatch.setattr(engine, "inductor_can_build", lambda: True)
    assert engine.compiles(task)
    monkeypatch.undo()
    monkeypatch.setattr(engine.sysconfig, "get_path", lambda name: str(tmp_path))  # no Python.h there
    assert not engine.compiles(task)
    monkeypatch.undo()
    monkeypatch.setattr(engine.cpu_kernels, "compiler", lambda: None)
    assert not engine.compiles(task)


@pytest.mark.parametrize(
    ("norm", "model", "built"),
    [("gn:2", "resnet", "gn:2+relu"), ("ln", "resnet-s2", "ln+relu"), ("in", "resnet", "in+relu"),
     ("gn/4", "resnet", "gn/4+relu"), ("gn:2+silu", "resnet", "gn:2+silu"), ("ws+gn:2", "resnet", "ws+gn:2"),
     ("bn", "resnet", "bn"), ("gn:2", "vgg", "gn:2")],
)  # fmt: skip
def test_the_engine_fuses_gn_with_its_relu_to_the_bit(norm, model, built):
    """GN, LN and IN in the CIFAR ResNets run fused with their ReLU: the same state dict, outputs and gradients."""
    from groupnorm.nn import GroupNormAct
    from groupnorm.train.classification import build_classifier, engine_norm

    cfg = TrainConfig(**{**TINY, "norm": norm, "model": model, "depth": 11 if model == "vgg" else 8})
    assert engine_norm(cfg) == built
    if built == norm or model == "vgg":
        return
    torch.manual_seed(0)
    fused = build_classifier(cfg, 10, 1, 1).to(memory_format=torch.channels_last)
    plain = build_model(model, norm=norm, num_classes=10, in_channels=1, depth=8, width=8)
    plain = plain.to(memory_format=torch.channels_last)
    assert any(isinstance(m, GroupNormAct) and isinstance(m.act, torch.nn.ReLU) for m in fused.modules())
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.1 * torch.randn_like(p))  # zero gammas would hide the backward of the last norms
    plain.load_state_dict(fused.state_dict())  # the same keys
    x = torch.randn(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    outs = [m(x) for m in (fused, plain)]
    assert torch.equal(*outs)
    for out in outs:
        out.square().sum().backward()
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
