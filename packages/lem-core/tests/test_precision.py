"""Measurement precision (#13): minimum windows, precision targets, steady state, prefill/decode, per request, thermal.

The backend is the scripted one (exact, hand-computable timings); energy comes from a fake meter whose
power timeline is scripted (this machine has no GPU): it says so where it is used. The minimum window is
also run on the real PyTorch backend with a tiny random Llama.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.config import MeasurementConfig
from lem.configfile.loading import deep_merge, load
from lem.configfile.presets import BUILTIN_PRESETS
from lem.errors import ConfigError
from lem.figures.precision import check, rel_ci
from lem.figures.requests import RequestTrace
from lem.figures.steady import integrate, steady_bounds
from lem.plugins import backend_names
from lem.results.files import aggregate_experiment
from lem.run.cycles import precise
from lem.run.progress import Progress
from lem.testing import ScriptedRunner, registered
from lem.types import DeviceEnergy, EnergyWindow


class _TimelineMeter(scripted.ScriptedMeter):
    """A fake GPU meter (no GPU here): the scripted meter's counter, plus a scripted 10 ms power timeline.

    Power is ``busy_w`` for the first ``span_s`` of the window, temperature rises 1 °C per 100 ms, and
    the throttle reasons are ``throttle`` from ``throttle_from_s`` on (empty before: none).
    """

    name = "fake"
    span_s = 2.5
    throttle = ""
    throttle_from_s = 1.0

    def stop(self) -> EnergyWindow:
        window = super().stop()
        rows = []
        for i in range(int(self.span_s / 0.01) + 1):
            t = round(i * 0.01, 6)
            for d in self.devices:
                rows.append(
                    {
                        "t_s": t,
                        "device": d,
                        "power_w": self.busy_w,
                        "temperature_c": 40.0 + 10 * t,
                        "sm_clock_mhz": 1980,
                        "throttle_reasons": self.throttle if t >= self.throttle_from_s else "",
                    }
                )
        devices = tuple(
            DeviceEnergy(d.device, d.uuid, d.energy_j, "counter", None, d.mean_power_w, d.peak_power_w)
            for d in window.devices
        )
        return EnergyWindow(window.duration_s, devices, tuple(rows))


class _FakeMeterPlugin:
    @hookimpl
    def measure_energy(self, meter: str, devices: Sequence[int], config: Any) -> _TimelineMeter | None:
        if meter != "fake":
            return None
        opts = dict(config.options_for("scripted"))
        return _TimelineMeter(devices, float(opts.get("idle_w", 100.0)), float(opts.get("busy_w", 300.0)))


@pytest.fixture(autouse=True)
def _plugins(scripted_backend: ModuleType) -> Iterator[None]:
    with registered(_FakeMeterPlugin(), "fake-meter"):
        yield
    _TimelineMeter.throttle = ""


BASE: dict[str, dict[str, Any]] = {
    "dataset": {"num_prompts": 4, "input_length": 8},
    "generation": {"max_output_tokens": 3},
    "measurement": {"cycles": 2, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _with(**tables: dict[str, Any]) -> dict[str, Any]:
    return deep_merge(BASE, tables)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --- min_window_s -----------------------------------------------------------------------


def test_min_window_serves_the_prompt_set_again_until_the_window_is_long_enough(run_scripted: ScriptedRunner) -> None:
    # One slot, 4 requests of 3 tokens: a pass lasts 4 x (4 + 2 + 2) ms = 32 ms of real time (sleep on).
    exp = run_scripted(
        _with(measurement={"min_window_s": 0.1, "cycles": 1}, scripted={"sleep": True}), report=False
    ).experiment_dir()
    cycle = _read(exp / "cycle-001.json")
    passes = cycle["passes"]
    # At least as long as asked, and no pass more than needed: the last pass began before 0.1 s.
    # (How many passes that takes depends on the machine's load: ~32 ms a pass when idle.)
    assert passes >= 2 and cycle["window"]["duration_s"] >= 0.1
    last_pass_start = min(r["origin_ns"] for r in cycle["requests"][-4:])
    assert last_pass_start < 0.1e9
    ids = [r["id"] for r in cycle["requests"]]
    assert ids == list(range(4 * passes))  # new ids, pass after pass
    assert cycle["metrics"]["output_tokens"] == 3 * 4 * passes  # exact
    assert cycle["metrics"]["input_tokens"] == 8 * 4 * passes
    # The same prompts each pass.
    digests = {r["id"] % 4: r["input_tokens"] for r in cycle["requests"]}
    assert set(digests.values()) == {8}
    assert _read(exp / "summary.json")["workload"]["passes"] == [passes]


def test_without_min_window_one_pass(run_scripted: ScriptedRunner) -> None:
    exp = run_scripted(_with(), report=False).experiment_dir()
    assert _read(exp / "cycle-001.json")["passes"] == 1


@pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")
def test_min_window_on_the_pytorch_backend(tmp_path: Path) -> None:
    """The real PyTorch backend with a tiny random Llama on the CPU: passes, ids and token counts exact,
    and the prefill-only pass (no meter here: its energy is null, its requests and tokens are checked)."""
    path = tmp_path / "exp.toml"
    path.write_text(
        'model = "random:tiny-llama"\nbackend = "pytorch"\nprecision = "float32"\n'
        "[dataset]\nnum_prompts = 3\ninput_length = 8\n"
        "[generation]\nmax_output_tokens = 4\nignore_eos = true\n"
        "[batching]\nbatch_size = 2\n"
        "[measurement]\ncycles = 1\nidle_seconds = 0\nwarmup_requests = 2\nmin_window_s = 1.5\nprefill_pass = true\n"
    )
    out = tmp_path / "res"
    assert run_campaign(load(path), CampaignOptions(out_dir=out, in_process=True, quiet=True, report=False))
    (exp,) = [p for run in out.iterdir() if run.is_dir() for p in run.iterdir() if p.is_dir()]
    cycle = _read(exp / "cycle-001.json")
    passes = cycle["passes"]
    # A warm pass of 3 requests takes ~0.1-0.3 s here: several passes make the 1.5 s window.
    assert passes >= 2 and cycle["window"]["duration_s"] >= 1.5
    assert [r["id"] for r in cycle["requests"]] == list(range(3 * passes))
    assert cycle["metrics"]["output_tokens"] == 4 * 3 * passes
    assert all(len(r["token_ids"]) == 4 for r in cycle["requests"])
    # Greedy: every pass of the same prompt produced the same tokens.
    by_prompt: dict[int, set[tuple[int, ...]]] = {}
    for r in cycle["requests"]:
        by_prompt.setdefault(r["id"] % 3, set()).add(tuple(r["token_ids"]))
    assert all(len(v) == 1 for v in by_prompt.values())
    assert cycle["metrics"]["outputs_identical_across_passes"] is True
    # The cycle's output digest is its first pass's (cycles of different pass counts still compare).
    from lem.figures.digests import cycle_output_digest

    assert cycle["metrics"]["output_digest"] == cycle_output_digest(cycle["requests"][:3])
    # The prefill-only pass: the same requests, one token each, and it is the cycle's first token (greedy).
    pre = cycle["prefill"]
    assert pre["passes"] == passes and [r["id"] for r in pre["requests"]] == list(range(3 * passes))
    assert [r["token_ids"] for r in pre["requests"]] == [r["token_ids"][:1] for r in cycle["requests"]]
    assert cycle["energy"]["prefill_decode"]["prefill_input_tokens"] == cycle["metrics"]["input_tokens"]


# --- precision targets ----------------------------------------------------------------------


def test_rel_ci_is_the_half_width_over_the_mean() -> None:
    # mean 10, sample std sqrt(4/3), n 4: half-width t(3) x std / sqrt(4), over the mean.
    assert rel_ci([9.0, 11.0, 9.0, 11.0]) == pytest.approx(3.1824 * (4 / 3) ** 0.5 / 2 / 10, rel=1e-4)
    assert rel_ci([5.0]) is None


def test_check_uses_throughput_only_without_energy() -> None:
    blocks = [{"metrics": {"output_tokens_per_s": v}, "energy": {"j_per_output_token": None}} for v in (100, 101)]
    met, rels, applies = check(blocks, 0.5)
    assert applies == ["output_tokens_per_s"] and met and rels["energy.j_per_output_token"] is None
    with_energy = [{"metrics": {"output_tokens_per_s": 100}, "energy": {"j_per_output_token": v}} for v in (1, 3)]
    met, rels, applies = check(with_energy, 0.5)
    assert "energy.j_per_output_token" in applies and not met  # throughput exact, J/token far off


def test_progress_shows_the_current_relative_ci() -> None:
    stream = io.StringIO()
    cycles = [{"metrics": {"output_tokens_per_s": v}, "energy": {"j_per_output_token": None}} for v in (100, 102)]
    assert not precise(MeasurementConfig(target_rel_ci=0.001), cycles, Progress(stream=stream))
    line = stream.getvalue()
    assert "precision after 2 cycles" in line and "output_tokens_per_s ±" in line and "not yet" in line


def test_target_not_met_runs_to_max_cycles_and_says_so(run_scripted: ScriptedRunner) -> None:
    # Real-time throughput of a few-ms window varies far more than 1e-6: the target cannot be met.
    exp = run_scripted(_with(measurement={"target_rel_ci": 1e-6, "max_cycles": 4}), report=False).experiment_dir()
    summary = _read(exp / "summary.json")
    assert summary["cycles"] == 4 and len(list(exp.glob("cycle-*.json"))) == 4
    p = summary["precision"]
    assert p["met"] is False and p["met_after_cycles"] is None and p["cycles"] == 4
    assert p["applies_to"] == ["output_tokens_per_s"] and "throughput only" in p["note"]
    assert p["rel_ci95"]["output_tokens_per_s"] == summary["figures"]["output_tokens_per_s"]["rel_ci95"]
    assert any("precision target not met" in w for w in summary["warnings"])


def test_target_met_stops_early_with_energy(run_scripted: ScriptedRunner) -> None:
    """Scripted meter (no GPU): constant power, so J/token is the same in every cycle once windows are alike."""
    doc = _with(
        measurement={"target_rel_ci": 0.9, "max_cycles": 10, "energy_meter": "scripted", "cycles": 2},
        scripted={"sleep": True},
    )
    summary = _read(run_scripted(doc, report=False).experiment_dir() / "summary.json")
    p = summary["precision"]
    assert p["met"] is True and p["met_after_cycles"] == summary["cycles"] < 10
    assert p["applies_to"] == ["energy.j_per_output_token", "output_tokens_per_s"] and p["note"] is None
    assert all(v is not None and v <= 0.9 for v in p["rel_ci95"].values())


# --- steady state -------------------------------------------------------------------------------


def _trace(i: int, times_ms: Sequence[float]) -> RequestTrace:
    return RequestTrace(i, 8, 0, tuple((round(t * 1e6), 1) for t in times_ms), True)


def test_steady_bounds_continuous_batching() -> None:
    # Two slots: A 0-10, B 2-6, C 7-14 (admitted after B left), D 11-12 (after A left): 2 running from 2 ms;
    # the last start is D's at 11 ms, and the first drop below 2 after it is D's end at 12 ms.
    traces = [_trace(0, [0, 5, 10]), _trace(1, [2, 6]), _trace(2, [7, 10, 14]), _trace(3, [11, 12])]
    start, end, peak = steady_bounds(traces)  # type: ignore[misc]
    assert peak == 2 and start == 2_000_000 and end == 12_000_000


def test_steady_bounds_smaller_last_batch_ends_at_the_last_full_one() -> None:
    # Static batches of 2, then one request: the queue drains once the last full batch ends.
    traces = [_trace(0, [1, 5]), _trace(1, [1, 5]), _trace(2, [6, 9]), _trace(3, [6, 9]), _trace(4, [10, 12])]
    assert steady_bounds(traces) == (1_000_000, 9_000_000, 2)


def test_integrate_is_exact_for_piecewise_linear_power() -> None:
    points = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0)]
    assert integrate(points, 0.5, 1.5) == pytest.approx(0.5 * (150 + 200) / 2 + 0.5 * 200)
    assert integrate(points, -1.0, 0.0) == pytest.approx(100.0)  # held flat before the first sample


def _energy_doc(**extra: Any) -> dict[str, Any]:
    """2 slots, 4 requests of 100 tokens, 10 ms apart: scripted times span ~2 s (sleep off), fake meter."""
    return _with(
        generation={"max_output_tokens": 100},
        measurement={"energy_meter": "fake", "cycles": 2, **extra.pop("measurement", {})},
        scripted={"slots": 2, "itl_ms": 10.0, "busy_w": 200.0},
        **extra,
    )


def test_steady_state_window_energy_from_the_timeline(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU): a scripted 200 W timeline, so the steady-state energy is 200 W x its length."""
    exp = run_scripted(_energy_doc(), report=False).experiment_dir()
    cycle = _read(exp / "cycle-001.json")
    st = cycle["metrics"]["steady_state"]
    # Requests 0, 1: first token at 4 ms, last at 994 ms; requests 2, 3 start at 994 ms: 998 ms - 1988 ms.
    assert st["max_in_flight"] == 2
    assert st["start_s"] == pytest.approx(0.004) and st["end_s"] == pytest.approx(1.988)
    assert st["output_tokens"] == 400 - 2  # every token after the window opened
    assert st["output_tokens_per_s"] == pytest.approx(398 / 1.984)
    assert st["energy_j"] == pytest.approx(200.0 * 1.984, rel=1e-6)
    assert st["j_per_output_token"] == pytest.approx(200.0 * 1.984 / 398, rel=1e-6)
    assert "timeline integrated" in st["energy_method"] and "ML.ENERGY" in st["definition"]
    summary = _read(exp / "summary.json")
    assert summary["figures"]["steady_state.j_per_output_token"]["n"] == 2
    assert "counter is read only at the window's edges" in summary["methods"]["steady_state_energy"]


def test_steady_state_energy_null_with_reason_when_too_few_samples(run_scripted: ScriptedRunner) -> None:
    exp = run_scripted(_with(measurement={"energy_meter": "scripted"}), report=False).experiment_dir()
    summary = _read(exp / "summary.json")
    st = _read(exp / "cycle-001.json")["metrics"]["steady_state"]
    # The scripted meter's timeline has no sample inside a window of a few ms.
    assert st["energy_j"] is None and "power sample" in st["energy_reason"]
    fig = summary["figures"]["steady_state.j_per_output_token"]
    assert fig["mean"] is None and "power sample" in fig["reason"]


# --- prefill / decode, steps, per request -----------------------------------------------------------------


def test_prefill_pass_measures_prefill_and_decode_apart(run_scripted: ScriptedRunner) -> None:
    """Scripted meter (no GPU): its counter integrates 300 W while generating, 100 W otherwise."""
    doc = _with(measurement={"energy_meter": "scripted", "prefill_pass": True}, scripted={"sleep": True})
    exp = run_scripted(doc, report=False).experiment_dir()
    cycle = _read(exp / "cycle-001.json")
    pre = cycle["prefill"]
    assert [sum(n for _, n in r["events"]) for r in pre["requests"]] == [1, 1, 1, 1]  # one output token each
    assert [r["input_tokens"] for r in pre["requests"]] == [r["input_tokens"] for r in cycle["requests"]]
    e = cycle["energy"]
    split = e["prefill_decode"]
    pf_total = e["prefill_pass"]["total_j"]
    assert split["prefill_j"] == pytest.approx(pf_total) and split["prefill_input_tokens"] == 32
    assert split["prefill_j_per_input_token"] == pytest.approx(pf_total / 32)
    assert split["decode_j"] == pytest.approx(e["total_j"] - pf_total)
    assert split["decode_tokens"] == 12 - 4
    assert split["decode_j_per_output_token"] == pytest.approx((e["total_j"] - pf_total) / 8)
    assert split["method"].startswith("measured") and split["estimate"] is False
    # Per request: by token share, an estimate, adding up to the window's energy.
    per = e["per_request"]
    assert per["estimate"] is True and per["method"].startswith("estimate")
    assert sum(per["j"]) == pytest.approx(e["total_j"])
    summary = _read(exp / "summary.json")
    assert summary["figures"]["energy.decode_j_per_output_token"]["n"] == 2
    assert summary["per_request_energy"]["estimate"] is True and summary["per_request_energy"]["j"]["n"] == 8
    assert summary["warmup"]["prefill_pass_requests"] == 4


def test_without_prefill_pass_the_split_is_null_with_the_reason(run_scripted: ScriptedRunner) -> None:
    summary = _read(
        run_scripted(_with(measurement={"energy_meter": "scripted"}), report=False).experiment_dir() / "summary.json"
    )
    fig = summary["figures"]["energy.prefill_j_per_input_token"]
    assert fig["mean"] is None and "prefill_pass = false" in fig["reason"]
    assert summary["per_request_energy"]["method"] == "estimate: the cycle's total energy shared by output tokens"


def test_step_attribution_is_an_estimate_that_adds_up(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU): 200 W for the 2.5 s of its timeline; steps split it into prefill/mixed/decode."""
    exp = run_scripted(_energy_doc(), report=False).experiment_dir()
    steps = _read(exp / "cycle-001.json")["energy"]["steps"]
    assert steps["estimate"] is True and steps["method"].startswith("estimate")
    parts = steps["prefill_j"] + steps["mixed_j"] + steps["decode_j"] + steps["after_last_token_j"]
    assert parts == pytest.approx(200.0 * 2.5, rel=1e-3)
    # The first step (first tokens of requests 0, 1 at 4 ms) is prefill; requests 2, 3 start at 998 ms.
    assert steps["prefill_j"] > 0 and steps["decode_j"] > steps["prefill_j"]


# --- thermal context -------------------------------------------------------------------------------------


def test_thermal_context_and_throttle_warning(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU): temperature rises 40 -> 65 °C; sw_power_cap from 1 s into the window."""
    _TimelineMeter.throttle = "sw_power_cap"
    exp = run_scripted(_energy_doc(), report=False).experiment_dir()
    cycle = _read(exp / "cycle-001.json")
    (dev,) = cycle["energy"]["thermal"]["devices"]
    assert dev["start"]["temperature_c"] == pytest.approx(40.0) and dev["end"]["temperature_c"] == pytest.approx(65.0)
    assert dev["start"]["sm_clock_mhz"] == 1980 and dev["start"]["throttle_reasons"] == []
    assert dev["end"]["throttle_reasons"] == ["sw_power_cap"] and dev["throttled"] is True
    assert any("GPU 0 throttled inside the window" in w for w in cycle["warnings"])
    summary = _read(exp / "summary.json")
    assert summary["thermal"]["throttled_cycles"] == [1, 2]
    assert any("throttled inside the window" in w for w in summary["warnings"])


def test_gpu_idle_is_not_throttling(run_scripted: ScriptedRunner) -> None:
    _TimelineMeter.throttle = "gpu_idle"
    cycle = _read(run_scripted(_energy_doc(), report=False).experiment_dir() / "cycle-001.json")
    assert cycle["energy"]["thermal"]["devices"][0]["throttled"] is False
    assert not any("throttled" in w for w in cycle["warnings"])


# --- recomputation --------------------------------------------------------------------------------------


def test_aggregate_reproduces_every_new_figure(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU). `lem results aggregate` recomputes from cycle files and timeline CSVs alone."""
    _TimelineMeter.throttle = "sw_thermal"
    doc = _energy_doc(measurement={"prefill_pass": True, "target_rel_ci": 0.5, "max_cycles": 3})
    exp = run_scripted(doc, report=False).experiment_dir()
    written = _read(exp / "summary.json")
    again = aggregate_experiment(exp)
    for key in ("figures", "precision", "per_request_energy", "thermal", "methods", "workload", "warnings"):
        assert json.loads(json.dumps(again[key])) == written[key], key
    assert written["figures"]["steady_state.j_per_output_token"]["mean"] is not None
    assert written["figures"]["energy.prefill_j_per_input_token"]["mean"] is not None
    # Each cycle's recorded blocks match their recomputation too.
    from lem.figures.summary import compute_cycle
    from lem.results.files import setup_config
    from lem.results.timelines import cycle_timelines

    setup = _read(exp / "setup.json")
    config, notes = setup_config(setup)
    assert notes == []
    cycles = [_read(p) for p in sorted(exp.glob("cycle-*.json"))]
    timelines = cycle_timelines(exp, cycles)
    for c in cycles:
        metrics, energy, warnings = compute_cycle(c, setup, config, timelines.get(c["cycle"]))
        assert json.loads(json.dumps(metrics))["steady_state"] == c["metrics"]["steady_state"]
        for key in ("prefill_decode", "steps", "per_request", "thermal"):
            assert json.loads(json.dumps(energy[key])) == c["energy"][key], key
        assert warnings == c["warnings"]


# --- configuration ------------------------------------------------------------------------------------


def _problems(tmp_path: Path, measurement: str) -> list[str]:
    path = tmp_path / "exp.toml"
    path.write_text(f'model = "random:tiny-llama"\nbackend = "pytorch"\n[measurement]\n{measurement}\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    return [p.format() for p in info.value.problems]


@pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")
@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("min_window_s = -1.0", "measurement.min_window_s = -1.0"),
        ("target_rel_ci = 0.0", "measurement.target_rel_ci = 0.0"),
        ("target_rel_ci = 1.5", "measurement.target_rel_ci = 1.5"),
        ("target_rel_ci = 0.02\nmax_cycles = 1", "measurement.max_cycles = 1"),
        ("target_rel_ci = 0.02\ncycles = 5\nmax_cycles = 3", "measurement.max_cycles = 3"),
    ],
)
def test_bad_precision_keys(tmp_path: Path, toml: str, key: str) -> None:
    lines = _problems(tmp_path, toml)
    assert any(key in line for line in lines), lines


def test_benchmark_preset_sets_a_minimum_window_and_the_prefill_pass() -> None:
    m = BUILTIN_PRESETS["benchmark"]["measurement"]
    assert m["min_window_s"] >= 5 and m["prefill_pass"] is True


def test_cycle_limit() -> None:
    from lem.config import MeasurementConfig

    assert MeasurementConfig(cycles=3).cycle_limit == 3
    assert MeasurementConfig(cycles=3, target_rel_ci=0.02).cycle_limit == 30
    assert MeasurementConfig(cycles=3, target_rel_ci=0.02, max_cycles=7).cycle_limit == 7


def test_export_rows_and_a_damaged_timeline(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU). Exported cycle rows carry the timeline's figures; a damaged CSV only nulls them."""
    from lem.results.export import cycle_rows

    exp = run_scripted(_energy_doc(), report=False).experiment_dir()
    (row, _) = cycle_rows(exp)
    assert row["steady_state.j_per_output_token"] == pytest.approx(200.0 * 1.984 / 398, rel=1e-6)
    (exp / "timeline-001.csv").write_text("t_s,device,power_w\nnot,a,number\n")
    summary = aggregate_experiment(exp)
    fig = summary["figures"]["steady_state.j_per_output_token"]
    assert fig["values"][0] is None and fig["values"][1] is not None
    assert any("timeline-001.csv: damaged meter timeline" in w and "t_s = 'not'" in w for w in summary["warnings"])


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"t_s,device,power_w\n\xff\xfe\x00 cut", ("timeline-001.csv", "damaged meter timeline", "not UTF-8 text")),
        (b"t_s,device,power_w\n0.0,0,\n0.1,0,lots\n", ("timeline-001.csv", "line 3: power_w = 'lots'")),
    ],
    ids=["not text", "text for a number"],
)
def test_aggregate_and_export_name_a_damaged_timeline_and_null_only_its_figures(
    run_scripted: ScriptedRunner, tmp_path: Path, content: bytes, words: tuple[str, ...]
) -> None:
    """Fake meter (no GPU). The real CLI: one line naming the file, exit 0, the counter's figures kept."""
    from click.testing import CliRunner

    from lem.cli.main import cli

    exp = run_scripted(_energy_doc(), report=False).experiment_dir()
    before = _read(exp / "summary.json")["figures"]
    (exp / "timeline-001.csv").write_bytes(content)
    done = CliRunner().invoke(cli, ["results", "aggregate", str(exp)], catch_exceptions=False)
    assert done.exit_code == 0 and all(w in done.stderr for w in words), done.stderr
    after = _read(exp / "summary.json")["figures"]
    assert before["steady_state.j_per_output_token"]["values"][0] is not None
    assert after["steady_state.j_per_output_token"]["values"] == [
        None,
        before["steady_state.j_per_output_token"]["values"][1],
    ]
    assert after["energy.j_per_output_token"] == before["energy.j_per_output_token"]  # from the counter
    out = tmp_path / "cycles.csv"
    done = CliRunner().invoke(
        cli, ["results", "export", str(exp), "--level", "cycle", "--format", "csv", "--out", str(out)]
    )
    assert done.exit_code == 0 and "damaged meter timeline" in done.stderr and out.exists(), done.output


def test_lem_results_aggregate_command_reproduces_the_summary(run_scripted: ScriptedRunner) -> None:
    """Fake meter (no GPU); the real `lem results aggregate` in a subprocess, from the raw files alone."""
    import subprocess
    import sys

    exp = run_scripted(
        _energy_doc(measurement={"prefill_pass": True, "min_window_s": 0.0}), report=False
    ).experiment_dir()
    written = _read(exp / "summary.json")
    (exp / "summary.json").unlink()
    proc = subprocess.run(
        [sys.executable, "-c", "from lem.cli.main import main; main()", "results", "aggregate", str(exp.parent)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    again = _read(exp / "summary.json")
    for key in ("figures", "per_request_energy", "thermal", "methods", "warnings", "precision"):
        assert again[key] == written[key], key
