"""lem.testing's campaign helpers, as plugin authors use them: the run_scripted fixture and run_experiments."""

from __future__ import annotations

import json

import pytest

import lem.testing.scripted as scripted
from lem.testing import ScriptedRunner

FAST = {
    "dataset": {"num_prompts": 2, "input_length": 4},
    "generation": {"max_output_tokens": 2},
    "measurement": {"cycles": 1, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"sleep": False},
}


def test_tables_run_as_one_experiment_and_each_call_is_a_new_run(run_scripted: ScriptedRunner) -> None:
    first = run_scripted(FAST)
    second = run_scripted(FAST, scripted.experiment(FAST, exp_id="named"))
    assert first.ok and second.ok and first.run_dir != second.run_dir
    assert first.run_dir.parent == second.run_dir.parent
    assert json.loads((first.experiment_dir() / "summary.json").read_text())["status"] == "ok"
    assert sorted(p.parent.name for p in second.run_dir.glob("*/experiment.toml")) == ["e0", "named"]


def test_a_failed_experiment_fails_the_test_with_its_reason_unless_asked(run_scripted: ScriptedRunner) -> None:
    failing = {**FAST, "scripted": {"sleep": False, "fail": "raise"}}
    with pytest.raises(AssertionError, match=r"\{'exp': 'RuntimeError: scripted failure at generate"):
        run_scripted(failing)
    run = run_scripted(failing, check=False)
    assert not run.ok and "scripted failure at generate" in run.failures()["exp"]
