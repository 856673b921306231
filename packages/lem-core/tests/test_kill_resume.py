"""Runs killed or interrupted at awkward instants, then the results commands and ``--resume``, with real
``lem run`` processes and real signals (the lock, Ctrl-C mid-experiment and a full disk: test_run_safety.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from test_run_safety import FAST, lem, start, stop, wait_for

from lem.config import MeasurementConfig
from lem.figures.precision import unfinished
from lem.results.files import cycle_paths, read_json, read_setup, setup_config

#: Two cycles 4 s apart: a kill after cycle 1 cuts the experiment short, and a resume is still quick.
TWO_CYCLES = FAST + "cycles = 2\ncooldown_seconds = 4\n"
# Loaded by every Python started with it on the path: the worker, once it has written its summary, takes
# 5 s to exit (an engine's slow shutdown), so a Ctrl-C can come after the summary and before its report.
SLOW_EXIT = """
import atexit, sys, time
if sys.orig_argv[1:3] == ["-m", "lem.campaign.worker"]:
    atexit.register(time.sleep, 5)
"""


def test_a_worker_whose_campaign_is_killed_stops_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "slow.toml").write_text(FAST + "cycles = 2\ncooldown_seconds = 30\n")
    proc = start(tmp_path, "slow.toml", "--out", "out")
    try:
        wait_for("out/*/exp/cycle-001.json", tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the campaign only: its worker is cooling down, and reports to no one
    # The worker writes to the same stderr: communicate() returns once the worker has exited too.
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    [exp_dir] = (tmp_path / "out").glob("*/exp")
    assert not (exp_dir / "summary.json").exists()


def test_aggregate_after_a_kill_leaves_the_cut_short_experiment_for_resume(tmp_path: Path) -> None:
    (tmp_path / "two.toml").write_text(TWO_CYCLES)
    proc = start(tmp_path, "two.toml", "--out", "out")
    try:
        cycle = wait_for("out/*/exp/cycle-001.json", tmp_path)
    finally:
        stop(proc)  # SIGKILL to the group, during the cool-down before cycle 2
    exp_dir = cycle.parent
    run_id = exp_dir.parent.name
    assert not (exp_dir / "cycle-002.json").exists()

    agg = lem(tmp_path, "results", "aggregate", str(exp_dir.parent))
    assert agg.returncode == 0 and "Traceback" not in agg.stderr, agg.stderr
    assert f"{exp_dir}: did not finish (1 of 2 cycles); skipped, no summary written" in agg.stderr
    assert f"--resume {run_id}" in agg.stderr
    # A summary of one cycle would read "ok" in the list and make --resume skip the experiment.
    assert not (exp_dir / "summary.json").exists()
    listed = json.loads(lem(tmp_path, "results", "list", "out", "--json").stdout)
    assert [row["status"] for row in listed] == ["incomplete"]

    started = time.time()
    again = lem(tmp_path, "run", "two.toml", "--out", "out", "--resume", run_id)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((exp_dir / "summary.json").read_text())
    assert summary["cycles"] == 2
    cycles = sorted(exp_dir.glob("cycle-*.json"))
    assert [p.name for p in cycles] == ["cycle-001.json", "cycle-002.json"]
    assert all(p.stat().st_mtime >= started for p in cycles)  # none kept from the killed attempt


def test_ctrl_c_after_the_summary_is_written_records_no_interruption(tmp_path: Path) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SLOW_EXIT)
    (tmp_path / "one.toml").write_text(FAST)
    proc = start(tmp_path, "one.toml", "--out", "out", PYTHONPATH=str(tmp_path / "hook"))
    try:
        summary = wait_for("out/*/exp/summary.json", tmp_path)
        time.sleep(0.5)  # the worker is in its slow exit; the campaign waits for it
    finally:
        _, err = stop(proc, signal.SIGINT)  # to the group, as a terminal's Ctrl-C
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    run_id = summary.parent.parent.name
    assert f"interrupted: experiment exp of run {run_id} had finished" in err
    # An interruption record beside the summary would contradict it, and no resume would ever remove it.
    assert not (summary.parent / "interrupted.json").exists()
    listed = json.loads(lem(tmp_path, "results", "list", "out", "--json").stdout)
    assert [row["status"] for row in listed] == ["ok"]


def test_the_stop_rule_replayed_tells_a_finished_experiment_from_a_cut_short_one() -> None:
    def blocks(*tok_s: float) -> list[dict[str, object]]:
        return [{"metrics": {"output_tokens_per_s": v}, "energy": {"j_per_output_token": None}} for v in tok_s]

    fixed = MeasurementConfig(cycles=3)
    assert unfinished(fixed, blocks(10, 11)) == "2 of 3 cycles"
    assert unfinished(fixed, blocks(10, 11, 12)) is None
    target = MeasurementConfig(cycles=2, target_rel_ci=0.05, max_cycles=4)
    assert unfinished(target, blocks(10.0, 10.01)) is None  # the target held after 2 cycles
    spread = blocks(10, 30, 10)
    assert unfinished(target, spread) == "3 cycles, neither the precision target met nor the limit of 4 reached"
    assert unfinished(target, [*spread, *blocks(30)]) is None  # the cycle limit
    # A schema-1 result: its experiment.toml, restructured, says how many cycles it asked for (all written).
    v1 = Path(__file__).parent / "data" / "results-v1" / "20261122-120000-0001" / "000-batch_size=1-v1aaaa"
    config, _ = setup_config(read_setup(v1))
    v1_cycles = [read_json(p) for p in cycle_paths(v1)]
    assert unfinished(config.measurement, v1_cycles) is None
    assert unfinished(config.measurement, v1_cycles[:2]) == "2 of 3 cycles"


def test_sigterm_interrupts_like_ctrl_c_and_the_run_resumes(tmp_path: Path) -> None:
    """A batch scheduler's stop (SIGTERM to `lem run` alone): recorded as an interruption, exit 130, resumable."""
    (tmp_path / "slow.toml").write_text(TWO_CYCLES)
    proc = start(tmp_path, "slow.toml", "--out", "out")
    try:
        wait_for("out/*/exp/cycle-001.json", tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted: experiment exp" in err and "--resume" in err, err[-3000:]
    [exp_dir] = (tmp_path / "out").glob("*/exp")
    doc = json.loads((exp_dir / "interrupted.json").read_text())
    assert "SIGTERM" in doc["reason"] and doc["cycles_written"] == 1
    resumed = lem(tmp_path, "run", "slow.toml", "--out", "out", "--resume", exp_dir.parent.name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (exp_dir / "summary.json").exists() and not (exp_dir / "interrupted.json").exists()
