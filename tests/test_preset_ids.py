"""Moving the experiments onto one engine kept every preset's run ids: finished records stay valid.

tests/data/preset_run_ids.json was written by the engine before the move (commit 6bb5e15). Detection's
ids changed once, by design: its lr rule and warm-up became every task's (docs/results.md says so). Presets
changed on purpose since are re-recorded with the change that made them: batch-sizes quick and medium (the
optimiser's batch held fixed, issue 13); groups quick and medium (trained to convergence: 32 epochs, the quick
preset on 6 of the 14 settings, issue 13);
features quick (16 epochs, where its runs pass the convergence check, issue 13) and its new medium (3 seeds);
video quick, medium (new) and full (48 epochs, the quick preset on Table 8's 8-frame columns, issue 13).
"""

import dataclasses
import json
from pathlib import Path

import pytest

from groupnorm.experiments import batch_sizes, features, groups, video

RECORDED = json.loads((Path(__file__).parent / "data" / "preset_run_ids.json").read_text())


@pytest.mark.parametrize("module", [batch_sizes, features, groups, video], ids=lambda m: m.NAME)
def test_every_preset_keeps_its_run_ids(module):
    for name, preset in module.PRESETS.items():
        if name == "paper":  # a lab's data folder: the ids do not depend on where it is
            preset = dataclasses.replace(preset, data_dir="/data")
        ids = [c.id for c in module.configs(preset, log=lambda m: None)]
        assert ids == RECORDED[module.NAME][name], f"{module.NAME} {name}"
