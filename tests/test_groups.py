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


@pytest.mark.parametrize("preset", ["quick", "medium", "full"])
def test_every_setting_of_the_presets_builds_a_valid_model(preset):
    """The paper's grid: every G and every channels-per-group divides every layer (width 64: 64, 128, 256)."""
    configs = groups.configs(groups.PRESETS[preset])
    whole = {
        "gn:64",
        "gn:32",
        "gn:16",
        "gn:8",
        "gn:4",
        "gn:2",
        "ln",
        "gn/64",
        "gn/32",
        "gn/16",
        "gn/8",
        "gn/4",
        "gn/2",
        "in",
    }
    # the quick preset: each row's ends and middle, under 30 minutes
    assert {c.norm for c in configs} == ({"gn:32", "gn:8", "ln", "gn/16", "gn/4", "in"} if preset == "quick" else whole)
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
    medium = groups.PRESETS["medium"]  # the whole grid
    grid = {"groups": medium.groups, "channels_per_group": medium.channels_per_group}
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


def test_verdict_words_an_end_within_the_noise_as_a_tie(tmp_path):
    # one seed: LN 0.2 above the next worst is a tie (floor 0.5); IN 1.0 above it is not
    errors = {"gn:32": 11.7, "gn:8": 12.6, "ln": 12.8, "gn/16": 11.5, "gn/4": 11.9, "in": 12.9}
    text = "\n".join(verdict(rows_of([fake(tmp_path, n, 0, e) for n, e in errors.items()])))
    assert "LN (value 1) is the worst of its row, but tied with 8" in text
    assert "IN (value 1) is the worst of its row:" in text
    assert "**The paper's shape holds in direction only**" in text
    # three seeds whose spread swallows LN's lead: still a tie, now against 2 sd
    recs = [fake(tmp_path, n, s, e + d) for n, e in errors.items() for s, d in enumerate((-0.4, 0.0, 0.4))]
    assert "but tied with 8" in "\n".join(verdict(rows_of(recs)))
    errors["ln"] = 13.6  # 1.0 ahead, beyond the floor: the shape holds
    text = "\n".join(verdict(rows_of([fake(tmp_path, n, 0, e) for n, e in errors.items()])))
    assert "tied" not in text and "**The paper's shape holds here**" in text


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


# --- the halves between GN and IN (SplitStatsGroupNorm, the report's ablation section) ---


def split_reference(x, groups, per_channel, eps=1e-5):
    """Float64 loops over (sample, group): the layer's two formulas written out."""
    import torch

    n, c = x.shape[:2]
    k = c // groups
    v = x.double().reshape(n, groups, k, -1)
    out = torch.empty_like(v)
    for i in range(n):
        for g in range(groups):
            block = v[i, g]
            if per_channel == "mean":
                d = block - block.mean(1, keepdim=True)
                out[i, g] = d / (d.pow(2).mean() + eps).sqrt()
            else:
                d = block - block.mean()
                out[i, g] = d / (d.pow(2).mean(1, keepdim=True) + eps).sqrt()
    return out.reshape(x.shape)


@pytest.mark.parametrize("per_channel", ["mean", "std"])
def test_split_stats_gn_matches_its_formula_and_ends_at_in(per_channel):
    import torch

    from groupnorm.nn import SplitStatsGroupNorm, make_norm

    torch.manual_seed(0)
    x = torch.randn(3, 12, 5, 4) * torch.rand(1, 12, 1, 1) * 4 + torch.randn(1, 12, 1, 1) * 50
    m = make_norm(f"gn-ch{per_channel}:3", 12)
    assert isinstance(m, SplitStatsGroupNorm) and m.per_channel == per_channel and m.num_groups == 3
    torch.testing.assert_close(m(x).double(), split_reference(x, 3, per_channel), atol=1e-4, rtol=1e-4)
    # training and evaluation compute the same thing, sample by sample
    assert torch.equal(m.eval()(x)[1:2], m.train()(x[1:2]))
    # one channel per group: both halves are IN; one group: the mean half is not LN (the spread half is not either)
    ins = torch.nn.functional.instance_norm(x)
    torch.testing.assert_close(make_norm(f"gn-ch{per_channel}/1", 12)(x), ins, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(make_norm(f"gn-ch{per_channel}:1", 12)(x), ins, atol=1e-2)
    # the halves differ from GN and from each other on channels of unequal scale and offset
    gn = torch.nn.functional.group_norm(x, 3)
    assert not torch.allclose(m(x), gn, atol=1e-2)


def test_split_stats_gn_rejects_bad_arguments():
    import torch

    from groupnorm.nn import SplitStatsGroupNorm, make_norm

    with pytest.raises(ValueError, match="per_channel must be 'mean' or 'std'; got 'var'"):
        SplitStatsGroupNorm(2, 8, "var")
    with pytest.raises(ValueError, match="num_groups must divide num_channels=8; got num_groups=3"):
        SplitStatsGroupNorm(3, 8)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 8, \*\).*got \(2, 6, 3\)"):
        SplitStatsGroupNorm(2, 8)(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match="gn-chstd takes ':G'"):
        make_norm("gn-chstd:sync", 8)
    with pytest.raises(ValueError, match="groups study: extra_norms: norm spec: cannot parse 'bogus'"):
        groups.configs(dataclasses.replace(groups.PRESETS["smoke"], extra_norms=("bogus",)))


def test_extra_norms_run_beside_table3_and_keep_its_ids():
    preset = groups.PRESETS["smoke"]
    base = [c.id for c in groups.configs(preset)]
    extra = groups.configs(dataclasses.replace(preset, extra_norms=("gn-chmean:8", "GN-CHSTD:8", "gn:8")))
    assert [c.id for c in extra][: len(base)] == base  # Table 3's runs are the same runs
    assert [c.norm for c in extra][len(base) :] == ["gn-chmean:8", "gn-chstd:8"]  # canonical, once each
    check_buildable(extra)


def split_records(tmp_path, errors):
    """norm -> per-seed errors, as records of one setting."""
    return [fake(tmp_path, norm, s, e) for norm, es in errors.items() for s, e in enumerate(es)]


@pytest.mark.parametrize(
    "errors, words",
    [
        # the spread per channel carries IN's difference, the mean does not
        ({"gn-chmean:32": [13.9, 13.7, 13.8], "gn-chstd:32": [12.2, 12.0, 12.1]},
         "**The spread is the statistic that matters**"),
        ({"gn-chmean:32": [12.2, 12.0, 12.1], "gn-chstd:32": [13.9, 13.7, 13.8]},
         "**The mean is the statistic that matters**"),
        ({"gn-chmean:32": [12.9, 12.7, 12.8], "gn-chstd:32": [12.2, 12.0, 12.1]}, "**Both statistics matter**"),
        ({"gn-chmean:32": [13.9, 13.2, 14.4], "gn-chstd:32": [13.5, 14.2, 13.6]},
         "**Neither half alone moves GN's error beyond seed noise.**"),
        ({"gn-chmean:32": [12.0], "gn-chstd:32": [13.0]}, "One seed: the halves cannot be told from seed noise"),
        ({"gn-chmean:32": [12.0, 12.1]}, "Only one half ran"),
    ],
)  # fmt: skip
def test_split_reading_names_a_statistic_only_beyond_noise(tmp_path, errors, words):
    from groupnorm.report.groups_split import reading, split_cells

    n = max(len(es) for es in errors.values())
    base = {"gn:32": [13.8, 13.9, 13.7][:n], "in": [12.1, 12.0, 12.2][:n], "gn:8": [15.0] * n}
    rows = split_cells(split_records(tmp_path, {**base, **errors}))
    assert list(rows) == [32] and set(rows[32]) == {"gn", "in", *(k.split(":")[0] for k in errors)}
    text = reading(rows[32])
    assert words in text
    assert f"IN, both per channel: {-1.70 if n != 2 else -1.80:+.2f}" in text


def test_split_section_in_the_groups_report(tmp_path):
    recs = split_records(tmp_path, {"gn:32": [13.8, 13.9], "in": [12.1, 12.0], "gn-chstd:32": [12.2, 12.1]})
    for r in recs:
        r.metrics.extend({"epoch": e, "val_error": 30 - 1.5 * e, "train_error": 31 - 1.5 * e} for e in range(1, 9))
    from groupnorm.report.groups_split import section

    text = section(recs, tmp_path / "figures", "main")
    assert "| val error | 13.85 ± 0.07 | 12.15 ± 0.07 | 12.05 ± 0.07 |" in text
    assert "Provisional: 6 of 6 runs of this table fail the convergence check." in text  # 3 points in the last quarter
    assert (tmp_path / "figures" / "curves_split_main.png").read_bytes()[:4] == b"\x89PNG"
    assert section([r for r in recs if r.config["norm"] != "gn-chstd:32"], tmp_path, "x") == ""
