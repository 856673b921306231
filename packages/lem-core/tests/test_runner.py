"""The experiment lifecycle in-process, on the scripted backend: every figure checked against its script."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.configfile.loading import deep_merge
from lem.errors import MeterUnavailable, ResultsError
from lem.figures.energy import energy_figures
from lem.run import cycles
from lem.run.live import window_json
from lem.run.progress import Progress
from lem.run.runner import run_experiment
from lem.testing import ScriptedRunner, registered
from lem.types import DeviceEnergy, EnergyWindow

pytestmark = pytest.mark.usefixtures("scripted_backend")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


BASE = {
    "dataset": {"num_prompts": 4, "input_length": 8},
    "generation": {"max_output_tokens": 3},
    "measurement": {"cycles": 2, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 1},
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _with(**tables: dict[str, Any]) -> dict[str, Any]:
    return deep_merge(BASE, tables)


def test_offline_batch_one_queues_into_ttft(run_scripted: ScriptedRunner) -> None:
    run_dir = run_scripted(scripted.experiment(_with())).run_dir
    exp = run_dir / "exp"
    names = {p.name for p in exp.iterdir()}
    assert {"experiment.toml", "environment.json", "setup.json", "cycle-001.json", "cycle-002.json",
            "summary.json"} <= names  # fmt: skip
    cycle = _read(exp / "cycle-001.json")
    assert cycle["schema_version"] == 2 and cycle["kind"] == "cycle"
    m = cycle["metrics"]
    # One slot: request i starts when i-1 ends; service = 4 + 2·2 = 8 ms; TTFT_i = 8i + 4 ms.
    ttfts = sorted([0.004, 0.012, 0.020, 0.028])
    assert m["ttft_s"]["mean"] == pytest.approx(sum(ttfts) / 4)
    assert m["ttft_s"]["p50"] == pytest.approx(0.016)
    assert m["e2e_s"]["max"] == pytest.approx(0.032)
    assert m["itl_s"]["n"] == 4 * 2 and m["itl_s"]["mean"] == pytest.approx(0.002)
    assert m["tpot_s"]["mean"] == pytest.approx(0.002)
    assert m["output_tokens"] == 12 and m["input_tokens"] == 32
    assert m["output_tokens_per_s"] * m["duration_s"] == pytest.approx(12)
    assert m["flops"]["method"] == "analytical" and m["flops"]["total"] > 0
    # No meter: energy figures are null with the reason, never 0.
    assert cycle["energy"]["total_j"] is None and "off" in cycle["energy"]["reason"]
    summary = _read(exp / "summary.json")
    assert summary["figures"]["ttft_s.p50"]["n"] == 2
    assert summary["figures"]["ttft_s.p50"]["mean"] == pytest.approx(0.016)
    assert summary["figures"]["energy.total_j"]["mean"] is None
    assert summary["prompts"]["count"] == 4 and summary["prompts"]["description"]
    assert any("rest on" in w for w in summary["warnings"])


def test_closed_loop_concurrency(run_scripted: ScriptedRunner) -> None:
    exp = scripted.experiment(_with(traffic={"mode": "concurrency", "concurrency": 2}))
    run_dir = run_scripted(exp).run_dir
    m = _read(run_dir / "exp" / "cycle-001.json")["metrics"]
    # Latency counts from submission: every request sees only its own service time.
    assert m["ttft_s"]["min"] == pytest.approx(0.004) and m["ttft_s"]["max"] == pytest.approx(0.004)
    assert m["e2e_s"]["mean"] == pytest.approx(0.008)


def test_constant_rate_slower_than_service_has_no_queueing(run_scripted: ScriptedRunner) -> None:
    exp = scripted.experiment(_with(traffic={"mode": "constant", "rate": 50.0}))  # 20 ms apart, 8 ms service
    run_dir = run_scripted(exp).run_dir
    m = _read(run_dir / "exp" / "cycle-002.json")["metrics"]
    assert m["ttft_s"]["max"] == pytest.approx(0.004)


class FakeMeter:
    """An EnergyMeter (lem.types protocol) whose windows are scripted: (duration s, joules) in order."""

    name = "fake"

    def __init__(self, windows: list[tuple[float, float]]) -> None:
        self.windows = list(windows)

    def start(self) -> None:
        pass

    def stop(self) -> EnergyWindow:
        dur, joules = self.windows.pop(0)
        dev = DeviceEnergy(0, "GPU-fake", joules, "counter", None, joules / dur, 2 * joules / dur)
        return EnergyWindow(dur, (dev,), ({"t_s": 0.0, "device": 0, "power_w": joules / dur},))

    def environment(self) -> list[dict[str, Any]]:
        return [{"index": 0, "name": "Fake GPU", "uuid": "GPU-fake"}]

    def close(self) -> None:
        pass


class FakeMeterPlugin:
    @hookimpl
    def measure_energy(self, meter: str) -> FakeMeter | None:
        if meter == "fake":
            # load 1 s / 50 J; idle 2 s / 200 J (100 W); cycles 4 s / 1000 J and 4 s / 800 J.
            return FakeMeter([(1.0, 50.0), (2.0, 200.0), (4.0, 1000.0), (4.0, 800.0)])
        if meter == "broken":
            raise MeterUnavailable("no driver on this test machine")
        return None


def test_energy_arithmetic_with_a_fake_meter(run_scripted: ScriptedRunner) -> None:
    exp = scripted.experiment(_with(measurement={"energy_meter": "fake", "idle_seconds": 0.01}))
    with registered(FakeMeterPlugin(), "fake-meter"):
        run_dir = run_scripted(exp).run_dir
    d = run_dir / "exp"
    e1 = _read(d / "cycle-001.json")["energy"]
    assert e1["total_j"] == 1000.0 and e1["idle_power_w"] == pytest.approx(100.0)
    assert e1["idle_j"] == pytest.approx(400.0) and e1["dynamic_j"] == pytest.approx(600.0)
    assert e1["j_per_output_token"] == pytest.approx(1000.0 / 12)
    assert e1["dynamic_j_per_output_token"] == pytest.approx(600.0 / 12)
    assert e1["mean_power_w"] == pytest.approx(250.0) and e1["peak_power_w"] == pytest.approx(500.0)
    assert e1["method"] == "counter"
    summary = _read(d / "summary.json")
    assert summary["figures"]["energy.total_j"]["mean"] == pytest.approx(900.0)
    assert summary["figures"]["energy.dynamic_j"]["values"] == pytest.approx([600.0, 400.0])
    assert summary["load"]["energy_window"]["devices"][0]["energy_j"] == 50.0
    assert (d / "timeline-001.csv").read_text().splitlines()[0] == "t_s,device,power_w"
    env = _read(d / "environment.json")
    assert env["gpus"][0]["name"] == "Fake GPU"


def test_a_named_meter_that_cannot_work_stops_the_run_before_any_model_loads(
    run_scripted: ScriptedRunner, tmp_path: Path
) -> None:
    exp = scripted.experiment(_with(measurement={"energy_meter": "broken"}))
    with registered(FakeMeterPlugin(), "fake-meter"), pytest.raises(MeterUnavailable, match="no driver on this test"):
        run_scripted(exp, check=False)
    assert not (tmp_path / "results").exists()  # stopped before a run directory was made


def test_a_named_meter_that_fails_in_the_worker_fails_before_the_load(tmp_path: Path) -> None:
    """Where the campaign's own check is skipped (another interpreter), the experiment stops before loading."""
    exp = scripted.experiment(_with(measurement={"energy_meter": "broken"}))
    with registered(FakeMeterPlugin(), "fake-meter"), pytest.raises(MeterUnavailable, match="no driver"):
        run_experiment(exp, tmp_path, "run", Progress(quiet=True))
    assert not (tmp_path / "environment.json").exists()


def test_scripted_meter_dynamic_energy_tracks_busy_time(run_scripted: ScriptedRunner) -> None:
    tables = _with(measurement={"energy_meter": "scripted", "idle_seconds": 0.05}, scripted={"sleep": True})
    run_dir = run_scripted(scripted.experiment(tables)).run_dir
    e = _read(run_dir / "exp" / "cycle-001.json")["energy"]
    assert e["idle_power_w"] == pytest.approx(100.0)
    # busy_w - idle_w = 200 W while generating, which is at most the whole window.
    assert 0 < e["dynamic_j"] <= 200.0 * e["duration_s"] + 1e-9


def test_cv_warmup_stops_when_latency_settles(run_scripted: ScriptedRunner) -> None:
    exp = scripted.experiment(_with(measurement={"warmup": "cv", "warmup_window": 3, "warmup_max_requests": 20}))
    run_dir = run_scripted(exp).run_dir
    warmup = _read(run_dir / "exp" / "setup.json")["warmup"]
    assert warmup["converged"] is True and warmup["requests"] == 3 and warmup["cv"] == pytest.approx(0.0)


def test_fixed_warmup_serves_whole_batches(run_scripted: ScriptedRunner) -> None:
    # One warm-up request at batch size 4 still warms a full batch of 4: the measured shape.
    exp = scripted.experiment(_with(measurement={"warmup_requests": 1}, batching={"batch_size": 4}))
    run_dir = run_scripted(exp).run_dir
    assert _read(run_dir / "exp" / "setup.json")["warmup"]["requests"] == 4


def test_resume_skips_finished_experiments(run_scripted: ScriptedRunner) -> None:
    a = scripted.experiment(_with(), exp_id="a")
    b = scripted.experiment(_with(), exp_id="b")
    run_dir = run_scripted(a, b, check=False).run_dir
    first = (run_dir / "a" / "summary.json").stat().st_mtime_ns
    (run_dir / "b" / "summary.json").unlink()
    (run_dir / "b" / ".cycle-009.json.x.tmp").write_text("{half")  # left by a killed run
    again = run_scripted(a, b, resume_id=run_dir.name).run_dir
    assert again == run_dir
    assert (run_dir / "a" / "summary.json").stat().st_mtime_ns == first
    assert (run_dir / "b" / "summary.json").exists() and not list((run_dir / "b").glob(".*.tmp"))
    changed = scripted.experiment(_with(generation={"max_output_tokens": 4}), exp_id="a")
    with pytest.raises(ResultsError, match=r"different config \(generation.max_output_tokens: \d+ then, 4 now\)"):
        run_scripted(changed, b, resume_id=run_dir.name, check=False)


def test_resume_accepts_a_stored_config_that_lacks_keys_added_with_their_defaults(run_scripted: ScriptedRunner) -> None:
    # An older lem wrote experiment.toml without keys a later version added: those read as their defaults.
    import tomli_w
    import tomllib

    a = scripted.experiment(_with(), exp_id="a")
    b = scripted.experiment(_with(), exp_id="b")
    run_dir = run_scripted(a, b, check=False).run_dir
    stored = run_dir / "b" / "experiment.toml"
    doc = tomllib.loads(stored.read_text())
    dropped = doc["measurement"].pop("prefill_pass")  # as if the key were newer than the run
    stored.write_text(tomli_w.dumps(doc))
    assert dropped is a.config.measurement.prefill_pass is type(a.config.measurement)().prefill_pass
    (run_dir / "b" / "summary.json").unlink()
    again = run_scripted(a, b, resume_id=run_dir.name).run_dir
    assert again == run_dir and (run_dir / "b" / "summary.json").exists()


def test_failure_is_recorded_and_the_campaign_goes_on(run_scripted: ScriptedRunner) -> None:
    bad = scripted.experiment(_with(scripted={"fail": "raise"}), exp_id="bad")
    good = scripted.experiment(_with(), exp_id="good")
    run = run_scripted(bad, good, as_json=True, check=False)
    assert not run.ok
    run_dir = run.run_dir
    failure = _read(run_dir / "bad" / "failure.json")
    assert "scripted failure at generate" in failure["reason"] and "Traceback" in failure["detail"]
    assert (run_dir / "good" / "summary.json").exists()


def test_json_output_and_table(run_scripted: ScriptedRunner, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run_scripted(scripted.experiment(_with()), as_json=True).run_dir
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["run_id"] == run_dir.name and doc["experiments"][0]["kind"] == "summary"
    run_scripted(scripted.experiment(_with()), check=False)
    out = capsys.readouterr().out
    assert "output tok/s" in out and out.rstrip().splitlines()[-1].startswith("results: ")


def test_progress_lines_on_stderr_unless_quiet(
    run_scripted: ScriptedRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    run_scripted(scripted.experiment(_with()), quiet=False, check=False)
    err = capsys.readouterr().err
    for stage in ("load", "warm-up", "cycle 1/2", "cycle 2/2"):
        assert stage in err
    run_scripted(scripted.experiment(_with()), quiet=True, check=False)
    assert capsys.readouterr().err == ""


def test_live_progress_line_on_a_terminal() -> None:
    import io

    from lem.run.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    beats: list[int] = []
    stream = Tty()
    p = Progress(stream=stream, heartbeat=lambda: beats.append(1))
    p.stage("cycle 1/1", total=4)
    p.advance(2)
    p.end("12.0 tok/s")
    text = stream.getvalue()
    assert "\r" in text and "[" in text and text.endswith("12.0 tok/s\n") and beats


def test_cooldown_and_thermal_floor(run_scripted: ScriptedRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cycles, "THERMAL_PROBE_S", 0.01)
    monkeypatch.setattr(cycles, "THERMAL_WAIT_MAX_S", 0.05)
    # The scripted meter reports 40 °C: a floor of 50 °C is met at once, one of 30 °C never is.
    cool = _with(measurement={"energy_meter": "scripted", "cooldown_seconds": 0.01, "thermal_floor_c": 50.0})
    run_dir = run_scripted(scripted.experiment(cool)).run_dir
    assert not any("thermal" in w for w in _read(run_dir / "exp" / "summary.json")["warnings"])
    hot = _with(measurement={"energy_meter": "scripted", "thermal_floor_c": 30.0})
    run_dir = run_scripted(scripted.experiment(hot), check=False).run_dir
    assert _read(run_dir / "exp" / "cycle-002.json")["notes"] == ["GPU stayed above thermal_floor_c 30.0 °C for 0 s"]
    assert any(w.startswith("cycle 2: GPU stayed above") for w in _read(run_dir / "exp" / "summary.json")["warnings"])


def test_a_window_of_two_devices_keeps_the_peak_of_their_summed_timeline() -> None:
    devices = (
        DeviceEnergy(0, "GPU-0", 900.0, "counter", None, 300.0, 500.0),
        DeviceEnergy(1, "GPU-1", 900.0, "counter", None, 300.0, 500.0),
    )
    timeline = (
        {"t_s": 0.0, "device": 0, "power_w": 500.0},
        {"t_s": 0.01, "device": 1, "power_w": 100.0},
        {"t_s": 1.0, "device": 0, "power_w": 100.0},
        {"t_s": 1.01, "device": 1, "power_w": 500.0},
    )
    saved = window_json(EnergyWindow(3.0, devices, timeline))
    # the highest total is at either edge: 500 W on one device while the other is held at its 100 W
    assert saved is not None and saved["peak_power_w"] == pytest.approx(600.0)
    energy, _ = energy_figures(saved, None, None, None, output_tokens=10)
    assert energy["peak_power_w"] == saved["peak_power_w"]  # not the 1000 W sum of the two peaks
    one = window_json(EnergyWindow(3.0, devices[:1], timeline))
    assert one is not None and "peak_power_w" not in one  # one device: its own peak is exact


def test_a_model_spread_at_load_gets_all_its_devices_metered(run_scripted: ScriptedRunner) -> None:
    # Like device_map = "auto": the devices are known only once the model has loaded.
    doc = _with(measurement={"energy_meter": "scripted", "idle_seconds": 0.05}, scripted={"devices": [0, 1]})
    run_dir = run_scripted(scripted.experiment(doc)).run_dir
    setup = _read(run_dir / "exp" / "setup.json")
    assert setup["load"]["metered_devices"] == [0]
    assert [d["device"] for d in setup["load"]["energy_window"]["devices"]] == [0]
    assert setup["metered_devices"] == [0, 1]
    assert [d["device"] for d in setup["idle"]["window"]["devices"]] == [0, 1]
    cycle = _read(run_dir / "exp" / "cycle-001.json")
    assert [d["device"] for d in cycle["energy"]["devices"]] == [0, 1]
    assert cycle["energy"]["total_j"] == pytest.approx(sum(d["energy_j"] for d in cycle["energy"]["devices"]))
    assert any("load energy covers devices [0] only" in w for w in setup["warnings"])
    env = _read(run_dir / "exp" / "environment.json")
    assert [g["index"] for g in env["gpus"]] == [0, 1]


def test_pinned_measurement_devices_are_kept_and_the_mismatch_warned(run_scripted: ScriptedRunner) -> None:
    doc = _with(measurement={"energy_meter": "scripted", "devices": [0]}, scripted={"devices": [0, 1]})
    run_dir = run_scripted(scripted.experiment(doc)).run_dir
    setup = _read(run_dir / "exp" / "setup.json")
    assert setup["metered_devices"] == [0]
    assert [d["device"] for d in _read(run_dir / "exp" / "cycle-001.json")["energy"]["devices"]] == [0]
    assert any("measurement.devices = [0] are metered" in w for w in setup["warnings"])
