"""Worker isolation: real worker processes that raise, os._exit, hang or get SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.campaign.job import carried_plugins, experiment_of, from_json, job_for, to_json
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.campaign.worker import run_in_worker
from lem.configfile.loading import LoadedFile
from lem.errors import LemError
from lem.results.files import experiment_status
from lem.testing import registered

FAST = {
    "dataset": {"num_prompts": 2, "input_length": 4},
    "generation": {"max_output_tokens": 2},
    "measurement": {"cycles": 1, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"sleep": False},
}


def _exp(exp_id: str, **scripted_opts: Any) -> Any:
    return scripted.experiment({**FAST, "scripted": {**FAST["scripted"], **scripted_opts}}, exp_id=exp_id)


# The scripted backend, registered for each test: a module plugin travels to the worker by name
# (lem.campaign.job.carried_plugins).
pytestmark = pytest.mark.usefixtures("scripted_backend")


def test_crashes_are_recorded_and_the_next_experiment_runs(tmp_path: Path) -> None:
    exps = (
        _exp("raises", fail="raise", fail_at="load"),
        _exp("exits", fail="exit"),
        _exp("fine"),
    )
    ok = run_campaign(LoadedFile("t.toml", exps, ()), CampaignOptions(out_dir=tmp_path, quiet=True))
    assert ok is False
    (run_dir,) = list(tmp_path.iterdir())
    raised = json.loads((run_dir / "raises" / "failure.json").read_text())
    assert "scripted failure at load" in raised["reason"] and "Traceback" in raised["detail"]
    exited = json.loads((run_dir / "exits" / "failure.json").read_text())
    assert "exited with status 3" in exited["reason"] and exited["exit_code"] == 3
    assert json.loads((run_dir / "fine" / "summary.json").read_text())["status"] == "ok"
    # Listed as failed, with the worker's reason: a failure.json has no figures, and is not "damaged" for that.
    listed = {e: experiment_status(run_dir / e) for e in ("raises", "exits", "fine")}
    assert {e: row["status"] for e, row in listed.items()} == {"raises": "failed", "exits": "failed", "fine": "ok"}
    assert "scripted failure at load" in listed["raises"]["reason"]


def test_a_hung_worker_is_killed_and_reported(tmp_path: Path) -> None:
    exp = _exp("hangs", fail="hang", fail_at="load")
    # measurement.stall_timeout_s is what the worker's watchdog uses.
    exp = attrs.evolve(exp, config=attrs.evolve(exp.config, measurement=attrs.evolve(
        exp.config.measurement, stall_timeout_s=1.5)))  # fmt: skip
    (tmp_path / "hangs").mkdir()
    start = time.monotonic()
    outcome = run_in_worker(job_for(exp, tmp_path / "hangs", "run", quiet=True))
    assert not outcome.ok and "no progress for 1.5 s (measurement.stall_timeout_s)" in (outcome.reason or "")
    assert time.monotonic() - start < 30


class _FlatMeterPlugin:
    """A plugin that is an object, not a module: it travels to a worker as ``test_worker:FLAT_METER``."""

    @hookimpl
    def measure_energy(self, meter: str, devices: Any, config: Any) -> Any:
        return scripted.ScriptedMeter(devices, 50.0, 50.0) if meter == "flat" else None


FLAT_METER = _FlatMeterPlugin()


def test_the_job_is_plain_json_that_gives_back_the_experiment(tmp_path: Path) -> None:
    exp = attrs.evolve(_exp("json", itl_ms=3.0), sweep_values={"generation.max_output_tokens": 2})
    job = job_for(exp, tmp_path / "json", "run-1", quiet=True, prefix="[1/2] ", validate=True)
    doc = json.loads(to_json(job))
    assert doc["experiment_id"] == "json" and doc["exp_dir"] == str(tmp_path / "json") and doc["validate"] is True
    assert ["scripted", "lem.testing.scripted"] in doc["plugins"]  # a module travels by name
    assert from_json(to_json(job)) == job
    again = experiment_of(from_json(to_json(job)))
    assert again.config == exp.config and again.id == "json" and again.sweep_values == exp.sweep_values
    with pytest.raises(LemError, match="worker job: not a job lem wrote"):
        from_json('{"experiment_id": "x"}')


def test_an_object_plugin_travels_by_its_module_level_name_and_a_local_one_stays() -> None:
    local = _FlatMeterPlugin()
    with registered(FLAT_METER, "flat-meter"), registered(local, "local-meter"):
        carried = dict(carried_plugins())
    assert carried["flat-meter"] == f"{__name__}:FLAT_METER" and carried["scripted"] == "lem.testing.scripted"
    assert "local-meter" not in carried  # no module-level name reaches it: it cannot travel


def test_a_worker_registers_an_object_plugin_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker imports this test module by name, as pytest did: it needs this folder on its path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    exp = _exp("flat")
    exp = attrs.evolve(exp, config=attrs.evolve(exp.config, measurement=attrs.evolve(
        exp.config.measurement, energy_meter="flat")))  # fmt: skip
    with registered(FLAT_METER, "flat-meter"):
        assert run_campaign(
            LoadedFile("t.toml", (exp,), ()), CampaignOptions(out_dir=tmp_path, quiet=True, report=False)
        )
    (run_dir,) = list(tmp_path.iterdir())
    energy = json.loads((run_dir / "flat" / "cycle-001.json").read_text())["energy"]
    assert energy["total_j"] > 0 and [d["uuid"] for d in energy["devices"]] == ["SCRIPTED-0"]


SLOW_RUN = """
import sys
import lem.testing.scripted as scripted
from lem.configfile.loading import LoadedFile
from lem.errors import LemError
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.testing import registered

tables = {
    "dataset": {"num_prompts": 4, "input_length": 4},
    "generation": {"max_output_tokens": 20},
    "measurement": {"cycles": 50, "idle_seconds": 0.0, "energy_meter": "scripted", "warmup_requests": 0},
    "scripted": {"itl_ms": 10.0},
}
with registered(scripted, "scripted"):
    run_campaign(
        LoadedFile("t.toml", (scripted.experiment(tables),), ()),
        CampaignOptions(out_dir=sys.argv[1], quiet=True),
    )
"""


def test_sigkill_mid_cycle_leaves_no_half_written_file(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(tmp_path)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*/exp/cycle-002.json")):
            assert time.monotonic() < deadline and proc.poll() is None, "the run never reached cycle 2"
            time.sleep(0.05)
        time.sleep(0.13)  # somewhere inside a later cycle (each takes ~0.8 s)
        os.killpg(proc.pid, signal.SIGKILL)  # the campaign and its worker, at once
    finally:
        proc.wait(30)
    (exp_dir,) = list(tmp_path.glob("*/exp"))
    for path in exp_dir.iterdir():
        if path.name.startswith("."):
            continue  # a temporary file: never read as a result
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".csv":
            assert text.endswith("\n")
    assert not (exp_dir / "summary.json").exists()
    from lem.results.files import experiment_status

    assert experiment_status(exp_dir)["status"] == "incomplete"


def test_the_worker_exits_when_its_campaign_dies(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*/exp/cycle-001.json")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.kill()  # only the campaign: its worker must notice and stop
    finally:
        proc.wait(30)
    (exp_dir,) = list(tmp_path.glob("*/exp"))
    time.sleep(1.5)
    count = len(list(exp_dir.glob("cycle-*.json")))
    time.sleep(2.0)  # a live worker would have written ~2 more cycles by now
    assert len(list(exp_dir.glob("cycle-*.json"))) == count


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="child subreapers are a Linux feature")
@pytest.mark.parametrize("how", ["hang", "exit"])
def test_a_killed_workers_own_processes_are_ended(tmp_path: Path, how: str, capfd: pytest.CaptureFixture[str]) -> None:
    # The scripted backend starts a child at load, as an engine would; the worker then hangs (and is
    # SIGKILLed by the stall watchdog) or os._exits: it never gets to end that child itself.
    pid_file = tmp_path / "child.pid"
    exp = _exp("orphan", fail=how, fail_at="load", child_pid_file=str(pid_file))
    exp = attrs.evolve(exp, config=attrs.evolve(exp.config, measurement=attrs.evolve(
        exp.config.measurement, stall_timeout_s=1.5)))  # fmt: skip
    (tmp_path / "orphan").mkdir()
    outcome = run_in_worker(job_for(exp, tmp_path / "orphan", "run", quiet=True))
    assert not outcome.ok
    child = int(pid_file.read_text())
    assert not _alive(child)
    assert f"the worker left 1 process(es) of its own behind (pids {child}); ended them" in capfd.readouterr().err
