"""The stop rule the runner and the summary share, the limit a run had, honest flags, the typed stored config.

Real ``lem run`` subprocesses serve a tiny random Llama on the CPU with the PyTorch backend (no energy meter
here: the precision target applies to throughput). The negative-decode flag is checked on a scripted run
(the scripted meter stands in for a GPU) whose raw cycle file is edited so that its prefill pass took more
energy than the cycle, then re-aggregated by the real ``lem results aggregate`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lem.config import MeasurementConfig
from lem.figures.precision import precision_block, stopping_point, stops_after
from lem.plugins import backend_names
from lem.results.files import read_setup, setup_config
from lem.testing import ScriptedRunner

V1_EXP = Path(__file__).parent / "data" / "results-v1" / "20261122-120000-0001" / "000-batch_size=1-v1aaaa"

needs_pytorch = pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")

#: Poisson arrivals (3 requests at 15/s: ~0.2 s of schedule), a prefill pass, a precision target.
TINY = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"
seed = 3

[dataset]
num_prompts = 3
input_length = 8

[generation]
max_output_tokens = 3
ignore_eos = true

[traffic]
mode = "poisson"
rate = 15.0

[measurement]
cycles = {cycles}
idle_seconds = 0
warmup_requests = 1
energy_meter = "none"
prefill_pass = {prefill}
target_rel_ci = {target}
"""


def _lem(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run(
        [sys.executable, "-m", "lem", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


def _run(tmp_path: Path, name: str, **values: Any) -> Path:
    (tmp_path / f"{name}.toml").write_text(TINY.format(**values))
    proc = _lem(tmp_path, "run", f"{name}.toml", "--out", name, "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [exp] = (tmp_path / name).glob("*/exp")
    return exp


def _read(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _blocks(exp: Path) -> list[dict[str, Any]]:
    return [_read(p) for p in sorted(exp.glob("cycle-*.json"))]


# --- the stop rule and the limit ------------------------------------------------------------------


@needs_pytorch
def test_max_cycles_unset_runs_to_the_default_limit_and_the_summary_states_it(tmp_path: Path) -> None:
    """A target no run can meet, ``max_cycles`` unset: the run stops at the default limit, and says which."""
    exp = _run(tmp_path, "limit", cycles=1, prefill="true", target=1e-9)
    summary = _read(exp / "summary.json")
    limit = MeasurementConfig(cycles=1, target_rel_ci=1e-9).cycle_limit
    assert limit == 20  # the documented default: max(20, 10 x cycles)
    ran = len(list(exp.glob("cycle-*.json")))
    p = summary["precision"]
    assert ran == summary["cycles"] == limit
    assert p["max_cycles"] == limit and p["stopped_after_cycles"] == ran and p["stopped_by"] == "limit"
    assert p["met"] is False and p["met_after_cycles"] is None
    assert any("precision target not met" in w for w in summary["warnings"])

    # The prefill-only pass under Poisson traffic serves its requests all at once: every origin is the
    # cycle's start, while the measured requests arrive on the Poisson schedule.
    for raw in _blocks(exp):
        measured = [r["origin_ns"] for r in raw["requests"]]
        assert measured[0] == 0 and len(set(measured)) == len(measured)  # seeded gaps, none zero
        assert [r["origin_ns"] for r in raw["prefill"]["requests"]] == [0, 0, 0]
        assert all(sum(n for _, n in r["events"]) == 1 for r in raw["prefill"]["requests"])


@needs_pytorch
def test_the_runner_stops_where_the_summary_says_the_rule_stops(tmp_path: Path) -> None:
    """A reachable target: the runner's cycle count is the one precision_block (and aggregate) replays."""
    exp = _run(tmp_path, "target", cycles=2, prefill="false", target=0.9)
    summary = _read(exp / "summary.json")
    blocks = _blocks(exp)
    p = summary["precision"]
    config, notes = setup_config(read_setup(exp))
    assert notes == [] and config.measurement.target_rel_ci == 0.9 and config.measurement.max_cycles is None
    m = config.measurement
    assert len(blocks) == p["stopped_after_cycles"] == stopping_point(m, blocks) == summary["cycles"]
    assert p["max_cycles"] == m.cycle_limit == 20
    # Stopped by the target below the limit (the tiny model's throughput varies far less than ±90%).
    assert p["stopped_by"] == "target" and p["met_after_cycles"] == len(blocks) < 20
    # The rule is the one function: it had not stopped one cycle earlier, it stops now.
    assert stops_after(m, blocks) and not stops_after(m, blocks[:-1])
    assert precision_block(m, blocks) == {**p, "rel_ci95": pytest.approx(p["rel_ci95"])}
    # `lem results aggregate` replays the same rule from the files alone.
    proc = _lem(tmp_path, "results", "aggregate", str(exp))
    assert proc.returncode == 0, proc.stderr
    assert _read(exp / "summary.json")["precision"] == p


def test_without_a_target_the_rule_is_the_cycle_count() -> None:
    m = MeasurementConfig(cycles=3)
    blocks = [{"metrics": {"output_tokens_per_s": v}, "energy": {}} for v in (1.0, 2.0, 3.0)]
    assert [stops_after(m, blocks[:n]) for n in (1, 2, 3)] == [False, False, True]
    assert stopping_point(m, blocks[:2]) is None and stopping_point(m, blocks) == 3
    assert precision_block(m, blocks) is None


# --- negative decode energy ----------------------------------------------------------------------------


def test_a_cycle_whose_prefill_pass_took_more_energy_is_flagged_and_left_out(
    run_scripted: ScriptedRunner, tmp_path: Path
) -> None:
    """Scripted meter (stands in for a GPU). Cycle 2's prefill window is edited to 3x the cycle's energy."""
    doc = {
        "dataset": {"num_prompts": 3, "input_length": 8},
        "generation": {"max_output_tokens": 4},
        "measurement": {"cycles": 3, "idle_seconds": 0.05, "energy_meter": "scripted", "prefill_pass": True},
        "scripted": {"ttft_ms": 3.0, "itl_ms": 2.0},
    }
    exp = run_scripted(doc, report=False).experiment_dir()
    before = _read(exp / "summary.json")
    assert before["flags"]["negative_decode_energy"] == {
        "cycles": [],
        "count": 0,
        "figures": [],
        "handling": before["flags"]["negative_decode_energy"]["handling"],
    }
    path = exp / "cycle-002.json"
    raw = _read(path)
    cycle_j = sum(d["energy_j"] for d in raw["energy_window"]["devices"])
    for d in raw["prefill"]["energy_window"]["devices"]:
        d["energy_j"] = 3 * cycle_j / len(raw["prefill"]["energy_window"]["devices"])
    path.write_text(json.dumps(raw))

    proc = _lem(tmp_path, "results", "aggregate", str(exp))
    assert proc.returncode == 0, proc.stderr
    summary = _read(exp / "summary.json")
    flag = summary["flags"]["negative_decode_energy"]
    assert flag["cycles"] == [2] and flag["count"] == 1
    assert flag["figures"] == ["energy.decode_dynamic_j_per_output_token", "energy.decode_j_per_output_token"]
    assert any(w.startswith("negative decode energy in 1 of 3 cycle(s)") for w in summary["warnings"])
    # The cycle's decode figures are null (not averaged in), the raw value kept apart, the block flagged.
    fig = summary["figures"]["energy.decode_j_per_output_token"]
    assert fig["values"][1] is None and fig["n"] == 2
    assert fig["mean"] == pytest.approx((fig["values"][0] + fig["values"][2]) / 2)
    assert summary["figures"]["energy.prefill_j_per_input_token"]["n"] == 3  # the prefill pass was measured

    from lem.figures.summary import compute_cycle

    setup = read_setup(exp)
    split = compute_cycle(_read(path), setup, setup_config(setup)[0])[1]["prefill_decode"]
    assert split["flags"] == ["negative_decode_energy"]
    assert split["decode_j"] is None and split["decode_j_per_output_token"] is None
    assert split["decode_dynamic_j"] is None and split["decode_dynamic_j_per_output_token"] is None
    assert split["negative"]["decode_j"] == pytest.approx(cycle_j - 3 * cycle_j)
    assert split["reason"].startswith("negative decode energy: the prefill-only pass took")
    # The per-request estimate falls back to the total by output tokens, still adding up.
    energy = compute_cycle(_read(path), setup, setup_config(setup)[0])[1]
    assert energy["per_request"]["method"] == "estimate: the cycle's total energy shared by output tokens"
    assert sum(energy["per_request"]["j"]) == pytest.approx(energy["total_j"])


def test_negative_dynamic_energy_keeps_its_values_and_names_its_figures(run_scripted: ScriptedRunner) -> None:
    """Scripted meter (stands in for a GPU): an idle baseline edited to 100x its energy."""
    doc = {
        "dataset": {"num_prompts": 3, "input_length": 8},
        "generation": {"max_output_tokens": 3},
        "measurement": {"cycles": 2, "idle_seconds": 0.05, "energy_meter": "scripted"},
    }
    exp = run_scripted(doc, report=False).experiment_dir()
    setup = _read(exp / "setup.json")
    for d in setup["idle"]["window"]["devices"]:
        d["energy_j"] *= 100
    (exp / "setup.json").write_text(json.dumps(setup))
    from lem.results.files import aggregate_experiment

    summary = aggregate_experiment(exp)
    flag = summary["flags"]["negative_dynamic_energy"]
    assert flag["cycles"] == [1, 2] == summary["flags"]["negative_dynamic_energy_cycles"] and flag["count"] == 2
    assert flag["figures"] == ["energy.dynamic_j", "energy.dynamic_j_per_output_token"]
    assert summary["figures"]["energy.dynamic_j"]["n"] == 2 and summary["figures"]["energy.dynamic_j"]["mean"] < 0


# --- the stored config, typed, for schema 1 too ------------------------------------------------------------


def test_schema_1_config_is_restructured_from_experiment_toml(tmp_path: Path) -> None:
    config, notes = setup_config(read_setup(V1_EXP))
    assert notes == []
    assert (config.backend, config.batching.batch_size, config.measurement.cycles) == ("scripted", 1, 3)
    assert config.measurement.target_rel_ci is None and config.slo.percentile == 99.0  # defaults from lem.config
    # A key this lem does not know (another version wrote it) keeps the default and is named; the rest reads.
    copy = tmp_path / "run" / V1_EXP.name
    shutil.copytree(V1_EXP.parent, copy.parent)
    toml = (copy / "experiment.toml").read_text()
    toml = toml.replace("cycles = 3\n", "cycles = 3\nfuture_knob = 1\n").replace("num_beams = 1", 'num_beams = "one"')
    (copy / "experiment.toml").write_text(toml)
    config, notes = setup_config(read_setup(copy))
    assert config.measurement.cycles == 3 and config.generation.num_beams == 1
    assert any("measurement.future_knob: unknown key" in n for n in notes)
    assert any(n.startswith("stored config: generation.num_beams: expected int") for n in notes)
    proc = _lem(tmp_path, "results", "aggregate", str(copy))
    assert proc.returncode == 0, proc.stderr
    summary = _read(copy / "summary.json")
    assert summary["cycles"] == 3 and summary["figures"]["output_tokens_per_s"]["n"] == 3
    assert any("future_knob" in w for w in summary["warnings"])
