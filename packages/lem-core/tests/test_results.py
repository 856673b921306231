"""Result files: atomic writes, late aggregation from raw cycles, pooling, and the `lem results` commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import lem.testing.scripted as scripted
from lem.cli.main import cli
from lem.errors import ResultsError
from lem.results.files import aggregate_experiment, pool, read_json, write_atomic, write_json
from lem.testing import ScriptedRunner

TABLES = {
    "dataset": {"num_prompts": 3, "input_length": 4},
    "generation": {"max_output_tokens": 2},
    "measurement": {"cycles": 2, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"sleep": False},
}


@pytest.fixture
def run_dir(run_scripted: ScriptedRunner) -> Path:
    return run_scripted(scripted.experiment(TABLES, exp_id="a"), scripted.experiment(TABLES, exp_id="b")).run_dir


def test_write_atomic_keeps_the_old_file_when_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.json"
    write_atomic(target, "old")

    def boom(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_read_json_rejects_damaged_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{half")
    with pytest.raises(ResultsError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text('{"schema_version": 0}')
    with pytest.raises(ResultsError, match="schema_version"):
        read_json(tmp_path / "old.json")
    write_json(tmp_path / "ok.json", "thing", {"a": 1})
    assert read_json(tmp_path / "ok.json") == {"schema_version": 2, "kind": "thing", "a": 1}


def test_aggregate_recomputes_the_same_summary_from_raw_cycles(run_dir: Path) -> None:
    exp = run_dir / "a"
    before = read_json(exp / "summary.json")
    (exp / "summary.json").unlink()
    after = aggregate_experiment(exp)
    assert after["figures"] == before["figures"] and after["latency_pooled"] == before["latency_pooled"]
    # The cycle files' raw traces are the source of truth: change one and the summary follows.
    cycle = read_json(exp / "cycle-001.json")
    cycle["requests"][0]["events"][0][0] += 1_000_000_000
    write_json(exp / "cycle-001.json", "cycle", {k: v for k, v in cycle.items() if k not in ("schema_version", "kind")})
    changed = aggregate_experiment(exp)
    assert changed["figures"]["ttft_s.mean"]["values"][0] > before["figures"]["ttft_s.mean"]["values"][0] + 0.3


def test_pooling_refuses_mixed_backends(run_dir: Path) -> None:
    pooled = pool([run_dir / "a", run_dir / "b"])
    assert pooled["cycles"] == 4 and pooled["figures"]["output_tokens_per_s"]["n"] == 4
    setup = read_json(run_dir / "b" / "setup.json")
    setup["backend"] = "other"
    write_json(
        run_dir / "b" / "setup.json", "setup", {k: v for k, v in setup.items() if k not in ("schema_version", "kind")}
    )
    with pytest.raises(ResultsError, match="different backends"):
        pool([run_dir / "a", run_dir / "b"])
    assert pool([run_dir / "a", run_dir / "b"], allow_mixed_backends=True)["backends"] == ["other", "scripted"]


def test_results_commands(run_dir: Path) -> None:
    runner = CliRunner()
    root = str(run_dir.parent)
    listed = runner.invoke(cli, ["results", "list", root])
    assert listed.exit_code == 0 and f"{run_dir.name}/a" in listed.output and "scripted" in listed.output
    rows = json.loads(runner.invoke(cli, ["results", "list", root, "--json"]).output)
    assert {r["status"] for r in rows} == {"ok"} and rows[0]["output_tokens_per_s"] > 0
    shown = runner.invoke(cli, ["results", "show", f"{run_dir.name}/a", "--dir", root, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["kind"] == "summary"
    agg = runner.invoke(cli, ["results", "aggregate", run_dir.name, "--dir", root, "--pool", str(run_dir / "p.json")])
    assert agg.exit_code == 0 and "recomputed" in agg.output
    assert read_json(run_dir / "p.json")["cycles"] == 4
    missing = runner.invoke(cli, ["results", "show", "nope", "--dir", root])
    assert missing.exit_code == 2 and "no such run" in missing.output
    assert runner.invoke(cli, ["results", "list", str(run_dir / "absent")]).exit_code == 2
