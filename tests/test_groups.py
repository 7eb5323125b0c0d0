"""The group-division study (Table 3): every setting builds or is rejected before training; smoke end to end."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from groupnorm.cli import main
from groupnorm.experiments import groups, run_experiment
from groupnorm.models import build_model
from groupnorm.nn import GroupNorm
from groupnorm.report.groups import Cell, build_report, setting_of, verdict
from groupnorm.train import check_configs as check_buildable
from groupnorm.train.records import Record

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_specs_of_table3_and_their_ends():
    assert [groups.group_spec("groups", g) for g in (64, 32, 2, 1)] == ["gn:64", "gn:32", "gn:2", "ln"]
    assert [groups.group_spec("channels_per_group", k) for k in (64, 16, 1)] == ["gn/64", "gn/16", "in"]
    for axis in ("groups", "channels_per_group"):
        for v in (64, 32, 16, 8, 4, 2, 1):
            assert setting_of(groups.group_spec(axis, v)) == (axis, v)
    assert setting_of("bn") is None
    with pytest.raises(ValueError, match="axis must be"):
        groups.group_spec("rows", 4)


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_every_setting_of_the_presets_builds_a_valid_model(preset):
    """The paper's grid: every G and every channels-per-group divides every layer (width 64: 64, 128, 256)."""
    configs = groups.configs(groups.PRESETS[preset])
    assert {c.norm for c in configs} == {
        "gn:64", "gn:32", "gn:16", "gn:8", "gn:4", "gn:2", "ln", "gn/64", "gn/32", "gn/16", "gn/8", "gn/4", "gn/2", "in"
    }  # fmt: skip
    assert {c.images_per_device for c in configs} == {32}
    check_buildable(configs)  # raises on any setting that does not fit


def test_the_quick_model_halves_the_image_in_its_stem():
    """resnet-s2 is the CIFAR-style ResNet with a stride-2 stem: the same layers at half the resolution."""
    import torch

    plain = build_model("resnet", norm="gn:32", depth=8, width=64, num_classes=10, in_channels=1)
    s2 = build_model(groups.PRESETS["quick"].model, norm="gn:32", depth=8, width=64, num_classes=10, in_channels=1)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in s2.named_parameters()]
    sizes = []
    s2.blocks.register_forward_hook(lambda m, a, out: sizes.append(out.shape[-2:]))
    assert s2(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sizes == [(4, 4)]  # 28 -> 14 (stem) -> 7 -> 4
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2; got 3"):
        type(s2)(8, 64, 10, 1, lambda c: torch.nn.Identity(), stem_stride=3)


@pytest.mark.parametrize(("norm", "groups_per_layer"), [("gn:64", [64, 64, 64]), ("gn/64", [1, 2, 4]), ("in", None)])
def test_the_settings_build_what_they_say(norm, groups_per_layer):
    model = build_model("resnet", norm=norm, depth=8, width=64, num_classes=10, in_channels=1)
    norms = [m for m in model.modules() if isinstance(m, GroupNorm)]
    if groups_per_layer is None:
        assert all(type(m).__name__ == "InstanceNorm" for m in model.modules() if "Norm" in type(m).__name__)
        return
    by_width = {m.num_channels: m.num_groups for m in norms}
    assert [by_width[c] for c in (64, 128, 256)] == groups_per_layer


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"width": 32}, ["gn:64", "does not apply to 32 channels"]),
        ({"width": 48, "groups": (32,), "channels_per_group": ()}, ["gn:32", "does not apply to 48 channels"]),
        ({"width": 32, "groups": (), "channels_per_group": (64,)}, ["gn/64", "does not apply to 32 channels"]),
    ],
)
def test_a_setting_that_does_not_fit_is_rejected_before_training(tmp_path, change, words):
    quick = groups.PRESETS["quick"]
    grid = {"groups": quick.groups, "channels_per_group": quick.channels_per_group}
    preset = dataclasses.replace(groups.PRESETS["smoke"], **{**grid, **change})
    trained = []
    with pytest.raises(ValueError) as err:
        run_experiment(groups, preset, tmp_path, log=trained.append)
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / groups.NAME).exists()  # nothing trained, no record written


def test_cli_rejects_an_unbuildable_grid_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "groupnorm", "reproduce", "groups", "--set", "width=16", "--runs", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "does not apply to 16 channels" in proc.stderr
    assert not (tmp_path / groups.NAME).exists()


def fake(tmp_path, norm, seed, error):
    config = {"norm": norm, "seed": seed, "dataset": "fashion-mnist", "model": "resnet", "depth": 8, "width": 64,
              "train_images": 100, "epochs": 2, "devices": 1, "images_per_device": 32}  # fmt: skip
    return Record(tmp_path / f"{norm}-{seed}", config, [], {"error": error, "train_error": error - 1})


def rows_of(records):
    rows = {}
    for r in records:
        axis, value = setting_of(r.config["norm"])
        rows.setdefault(axis, {}).setdefault(value, Cell((axis, value))).records.append(r)
    return rows


def test_verdict_holds_on_the_papers_own_numbers(tmp_path):
    from groupnorm.report import paper

    recs = [fake(tmp_path, groups.group_spec("groups", g), 0, e) for g, e in paper.TABLE3_GROUPS.items()]
    recs += [fake(tmp_path, groups.group_spec("channels_per_group", k), 0, e) for k, e in paper.TABLE3_CHANNELS.items()]
    text = "\n".join(verdict(rows_of(recs)))
    assert "LN (value 1) is the worst of its row" in text and "IN (value 1) is the worst of its row" in text
    # the paper's own middle: G within 0.6 of the best, and 2 channels per group 1.4 above it
    assert "holds in one row only" in text and "beyond 1 point: 2" in text


def test_verdict_says_plainly_when_it_does_not_hold(tmp_path):
    recs = [fake(tmp_path, n, s, e + 0.1 * s) for n, e in (("gn:32", 9.0), ("gn:4", 11.0), ("ln", 8.5)) for s in (0, 1)]
    text = "\n".join(verdict(rows_of(recs)))
    assert "LN (value 1) is not the worst of its row" in text and "does not hold" in text
    assert "beyond seed noise" in text


@pytest.mark.slow
def test_smoke_reproduce_groups_end_to_end(tmp_path, capsys):
    assert main(["reproduce", "groups", "--preset", "smoke", "--runs", str(tmp_path)]) == 0
    exp = tmp_path / groups.NAME
    report = (exp / "report.md").read_text()
    for words in ("### Verdict", "### Table 3a", "### Table 3b", "1 (=LN)", "1 (=IN)", "25.3", "28.4"):
        assert words in report
    for fig in ("fig_groups_main.png", "curves_main.png"):  # Table 3's shape; every setting's curves
        assert (exp / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{fig}" in report
    rows = json.loads((exp / "summary.json").read_text())["rows"]
    assert {(r["axis"], r["value"], r["norm"]) for r in rows} == {
        ("groups", 8, "gn:8"), ("groups", 2, "gn:2"), ("groups", 1, "ln"),
        ("channels_per_group", 8, "gn/8"), ("channels_per_group", 2, "gn/2"), ("channels_per_group", 1, "in"),
    }  # fmt: skip
    for r in rows:
        assert r["seeds"] == [0] and 0 <= r["error_mean"] <= 100 and r["paper_error"] is not None
    # a second call trains nothing and rebuilds the report
    capsys.readouterr()
    assert main(["reproduce", "groups", "--preset", "smoke", "--runs", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6 already finished" in out and "epoch 1/" not in out
    assert "No verdict on the paper's claims" in report  # one epoch: nothing is judged
    assert main(["report", "groups", "--runs", str(tmp_path)]) == 0
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        build_report(tmp_path / "nothing")
