"""The video experiment (Table 8): its grid, checks before training, top-1 / top-5, the report, end to end."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from groupnorm.cli import main
from groupnorm.experiments import EXPERIMENTS, run_experiment, video
from groupnorm.experiments.video import PRESETS, Preset, configs, grid_pairs
from groupnorm.report import REPORTS
from groupnorm.report.video import build_report
from groupnorm.train import VideoConfig, load_records


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the clips are generated once; compiled kernels are shared with the usual cache
    (so they are not rebuilt here)."""
    from groupnorm.io import cache_dir

    path = tmp_path_factory.mktemp("cache")
    kernels = cache_dir() / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    (path / "kernels").symlink_to(kernels, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GROUPNORM_CACHE", str(path))
        yield path


@pytest.fixture
def single_thread():
    """Runs in this process (--jobs 1) single-threaded, as a sweep's workers are."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registered_with_the_cli_and_the_reports():
    assert EXPERIMENTS["video"] is video and "video" in REPORTS
    assert set(PRESETS) >= {"smoke", "quick", "full"}


def test_medium_preset_is_table_8s_grid_scaled_down_and_quick_its_short_clips():
    assert set(PRESETS) >= {"smoke", "quick", "medium", "full"}
    quick = configs(PRESETS["quick"])
    assert grid_pairs(PRESETS["quick"]) == [(8, 8), (8, 4)]  # the paper's 32/8 and 32/4
    assert {c.id for c in quick} <= {c.id for c in configs(PRESETS["medium"])}  # its runs are medium's seed 0
    assert PRESETS["medium"].seeds == (0, 1, 2)
    cfgs = configs(PRESETS["medium"])
    assert grid_pairs(PRESETS["medium"]) == [(8, 8), (8, 4), (16, 4)]  # the paper's 32/8, 32/4, 64/4
    assert len(cfgs) == 3 * 2 * len(PRESETS["medium"].seeds)
    assert {(c.dataset, c.frames) for c in cfgs} == {("moving-fashion", 8), ("moving-fashion", 16)}
    assert {c.data_name() for c in cfgs} == {"moving-fashion-t8", "moving-fashion-t16"}
    assert {(c.norm, c.devices) for c in cfgs} == {("bn", 8), ("gn:8", 8)}
    for c in cfgs:
        assert c.lr == pytest.approx(0.1 * c.images_per_device / 8)
        assert c.model == "resnet3d" and c.experiment == "video"
    assert len({c.id for c in cfgs}) == len(cfgs)
    full = Preset(clips_per_device=(8, 4, 2), grid="full")
    assert grid_pairs(full) == [(8, 8), (8, 4), (8, 2), (16, 8), (16, 4), (16, 2)]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"dataset": "kinetics"}, "dataset must be one of moving-fashion, clips"),
        ({"dataset": "clips"}, "needs data_dir"),
        ({"clip_lengths": (8, 7)}, "clip_lengths must be among"),
        ({"grid": "diagonal"}, "grid must be one of"),
        ({"norms": ()}, "norms must not be empty"),
        ({"norms": ("gn:x",)}, "norm spec"),
        ({"model": "resnet"}, "model must be one of"),
        ({"clips_per_device": (0,)}, "clips per device must be >= 1"),
    ],
)
def test_bad_presets_are_rejected_before_training(kw, words):
    with pytest.raises(ValueError, match=words):
        configs(Preset(**kw))


def test_a_spec_that_does_not_fit_the_model_fails_before_anything_trains(tmp_path, cache):
    preset = dataclasses.replace(PRESETS["smoke"], norms=("gn:5",))
    with pytest.raises(ValueError, match="gn:5"):
        run_experiment(video, preset, tmp_path, log=lambda m: None)
    assert not list((tmp_path / "video").glob("*/config.json"))


def test_two_clip_folders_do_not_share_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    video._check_dataset_marker(Preset(dataset="clips", data_dir=str(a)), tmp_path / "video")
    video._check_dataset_marker(Preset(dataset="clips", data_dir=str(a)), tmp_path / "video")
    with pytest.raises(ValueError, match="use another --runs directory"):
        video._check_dataset_marker(Preset(dataset="clips", data_dir=str(b)), tmp_path / "video")


@pytest.mark.slow
def test_smoke_reproduce_end_to_end_with_top5_report_and_resume(tmp_path, cache, capsys, single_thread):
    runs = tmp_path / "runs"
    assert main(["reproduce", "video", "--preset", "smoke", "--runs", str(runs), "--jobs", "1"]) == 0
    exp = runs / "video"
    run_dirs = sorted(p.parent for p in exp.glob("*/result.json"))
    assert len(run_dirs) == 6
    for d in run_dirs:
        result = json.loads((d / "result.json").read_text())
        metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert 0 <= result["top1"] <= result["top5"] <= 100
        # the final model's top-1 / top-5 on the val clips: the last epoch's evaluation
        assert result["top1"] == pytest.approx(100 - metrics[-1]["val_error"], abs=1e-9)
        assert result["top5"] == pytest.approx(100 - metrics[-1]["val_top5_error"], abs=1e-9)
    report = (exp / "report.md").read_text()
    assert "Table 8" in report and "### Verdict" in report and "32 / 8" in report and "64 / 4" in report
    assert "73.3 / 90.7" in report  # the paper's BN at 32 frames, 8 per GPU
    rows = json.loads((exp / "summary.json").read_text())["rows"]
    assert len(rows) == 6 and {(r["frames"], r["clips_per_device"]) for r in rows} == {(4, 4), (4, 2), (8, 2)}
    assert all(r["top5_mean"] >= r["top1_mean"] for r in rows)
    assert len(list((exp / "figures").glob("*.png"))) == 2 and "Train (dashed) and val (solid) top-1 error" in report
    out = capsys.readouterr().out
    assert "Verdict" in out

    stamps = {d: (d / "result.json").stat().st_mtime_ns for d in run_dirs}
    assert main(["reproduce", "video", "--preset", "smoke", "--runs", str(runs), "--jobs", "1"]) == 0
    assert "6 already finished" in capsys.readouterr().out
    assert all((d / "result.json").stat().st_mtime_ns == stamps[d] for d in run_dirs)


@pytest.mark.slow
def test_resnet3d_inflated_starts_each_run_from_a_2d_run_of_the_experiment(tmp_path, cache, monkeypatch, single_thread):
    for key, value in {
        "train_images": 256,
        "val_images": 128,
        "epochs": 1,
        "images_per_device": 8,
        "devices": 2,
    }.items():
        monkeypatch.setitem(video.PRETRAIN, key, value)
    preset = dataclasses.replace(
        PRESETS["smoke"], model="resnet3d-inflated", norms=("gn:4",), clip_lengths=(4,), clips_per_device=(4,),
        width=8, train_clips=64, val_clips=32, epochs=1, devices=2,
    )  # fmt: skip
    (pre,) = video.pretrain_configs(preset)
    (cfg,) = configs(preset)
    assert cfg.model == "resnet3d" and cfg.init == f"video/pretrain/{pre.id}/checkpoint.pt" and not cfg.zero_init_last
    logs = []
    run_experiment(video, preset, tmp_path, jobs=1, log=logs.append)
    assert [r.finished for r in load_records(tmp_path / "video" / "pretrain")] == [True]
    assert [r.result["status"] for r in load_records(tmp_path / "video")] == ["finished"]
    run_experiment(video, preset, tmp_path, jobs=1, log=logs.append)  # nothing trains twice
    assert sum("already finished" in m for m in logs) == 4 and sum("pre-training" in m for m in logs) == 2


def _fake_run(root: Path, norm: str, frames: int, per_device: int, seed: int, top1: float, top5: float | None):
    cfg = VideoConfig(
        experiment="video",
        frames=frames,
        model="resnet3d",
        norm=norm,
        images_per_device=per_device,
        seed=seed,
        train_images=6000,
        val_images=2000,
        epochs=8,
        reference_images_per_device=8,
    )
    d = root / cfg.id
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    lines = [
        {"epoch": e, "train_error": 50.0, "val_error": 100 - top1 + max(0, 4 - e), "seconds": e} for e in range(1, 9)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    result = {"status": "finished", "error": 100 - top1, "train_error": 50.0, "top1": top1, "top5": top5}
    (d / "result.json").write_text(json.dumps(result))


def _table(root, accuracies, with_eval=True):
    for (norm, frames, b), values in accuracies.items():
        for seed, v in enumerate(values):
            _fake_run(root, norm, frames, b, seed, v, v + 10 if with_eval else None)


def test_verdict_holds_when_bn_loses_with_fewer_clips_and_gn_does_not(tmp_path):
    exp = tmp_path / "video"
    _table(
        exp,
        {
            ("bn", 8, 8): [80.0, 80.4],
            ("bn", 8, 4): [76.0, 76.2],
            ("bn", 16, 4): [78.0, 78.4],
            ("gn:8", 8, 8): [79.6, 79.8],
            ("gn:8", 8, 4): [79.4, 79.6],
            ("gn:8", 16, 4): [82.0, 82.2],
        },
    )
    text = build_report(exp).read_text()
    assert "**Table 8's direction holds here**" in text
    assert "beyond seed noise" in text
    assert "73.0 / 90.6" in text and "+1.2" in text
    rows = json.loads((exp / "summary.json").read_text())["rows"]
    bn84 = next(r for r in rows if (r["norm"], r["frames"], r["clips_per_device"]) == ("bn", 8, 4))
    assert bn84["top1_mean"] == pytest.approx(76.1) and bn84["paper_column"] == [32, 4]
    assert bn84["paper_top1"] == 72.1 and bn84["top5_mean"] == pytest.approx(86.1)


def test_verdict_says_plainly_when_it_does_not_hold(tmp_path):
    exp = tmp_path / "video"
    _table(
        exp,
        {
            ("bn", 8, 8): [80.0],
            ("bn", 8, 4): [80.5],
            ("gn:8", 8, 8): [75.0],
            ("gn:8", 8, 4): [74.0],
        },
        with_eval=False,
    )
    text = build_report(exp).read_text()
    assert "**Table 8's direction does not hold here**" in text
    assert "one seed" in text


def test_verdict_calls_differences_within_seed_noise_direction_only(tmp_path):
    # the paper's signs (BN loses a little, GN ahead a little at 4 clips), but every difference within 2 sd
    exp = tmp_path / "video"
    _table(
        exp,
        {
            ("bn", 8, 8): [78.0, 80.0, 79.0],
            ("bn", 8, 4): [77.5, 79.9, 78.9],
            ("gn:8", 8, 8): [77.0, 80.0, 79.0],
            ("gn:8", 8, 4): [78.0, 80.5, 78.9],
        },
    )
    text = build_report(exp).read_text()
    assert "**Table 8's direction holds in direction only**" in text
    assert "within seed noise" in text and "beyond seed noise" not in text


def test_report_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="groupnorm reproduce video"):
        build_report(tmp_path)


def test_full_grid_compares_8_to_4_as_the_paper_and_reports_2_too(tmp_path):
    from groupnorm.report.video import batch_axis, paper_column

    cols = [(8, 8), (8, 4), (8, 2), (16, 8), (16, 4), (16, 2)]
    assert batch_axis({8, 4, 2}) == (8, 4) and batch_axis({4, 2}) == (4, 2) and batch_axis({4}) == (4, 4)
    assert [paper_column(c, cols) for c in cols] == [(32, 8), (32, 4), None, None, (64, 4), None]
    exp = tmp_path / "video"
    _table(exp, {(n, t, b): [70.0 + b + (t == 16)] for n in ("bn", "gn:8") for t, b in cols})
    text = build_report(exp).read_text()
    assert "From 8 to 4 clips per device" in text and "From 8 to 2 clips per device: BN -6.00, GN -6.00" in text
