"""Gating of spoilt cycles (``measurement.validity``, ``settle_wait_s``) through real ``lem run``s.

Each run is the real ``lem`` command (a subprocess, real worker processes) measuring the pytorch backend on
the built-in tiny Llama on the CPU. This machine has no GPU: lem-energy-nvml reads the fake ``pynvml`` it ships
for tests (``lem_energy_nvml.testing``), one board whose energy counter a thread advances with the worker's
CPU use. The board is scripted (``FakeGpu.script``, run before every reading) by the cycle being measured,
which the script learns from the files lem has written: while ``cycle-001.json`` exists and
``cycle-002.json`` does not, cycle 2 is being measured (or waited for). So exactly the chosen cycles
throttle, heat up or see a busy host, whatever the timing of this machine.

The host's load is read from a fake ``/proc`` tree (``$LEM_PROC_ROOT``), because this machine really is
busy (other processes often use half its CPUs) and would spoil every cycle: the same script advances its
``stat`` counters, all as other processes' work during the cycles planned busy, all idle otherwise.

The figures of each summary are recomputed from the kept cycles' raw files by tests/test_recompute.py's
oracle, which imports nothing from ``lem``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_recompute import check, has_fake_pynvml, recompute

#: The fake board, scripted by :data:`PLAN` (filled in per run). Energy follows the worker's CPU use, as in
#: tests/test_recompute.py; throttle reasons, temperature and the fake /proc follow the cycle being measured.
BOARDS = """
import json, os, threading, time
from pathlib import Path

PLAN = json.loads(%r)
OUT = Path.cwd() / PLAN["out"]
PROC = Path(os.environ["LEM_PROC_ROOT"])
lock = threading.Lock()
state = {"hot_since": None, "busy": 0, "idle": 0, "written": 0.0}


def cycle_now():
    # The cycle being measured or waited for: one more than those whose files lem has written.
    return len(list(OUT.glob("*/exp/cycle-*.json"))) + 1


def write_proc(busy):
    state["busy" if busy else "idle"] += 1
    # cpu user nice system idle iowait irq softirq steal, for 2 CPUs; written whole, then renamed into place.
    text = "cpu  %%d 0 0 %%d 0 0 0 0\\ncpu0 0 0 0 0 0 0 0 0\\ncpu1 0 0 0 0 0 0 0 0\\n" %% (state["busy"], state["idle"])
    tmp = PROC / "stat.tmp"
    tmp.write_text(text)
    os.replace(tmp, PROC / "stat")


def script(gpu):
    with lock:
        c, now = cycle_now(), time.monotonic()
        throttled = PLAN["throttle"] == "always" or c in PLAN["throttle"]
        gpu.throttle_mask = 0x4 if throttled else 0x1  # sw_power_cap, else gpu_idle
        if PLAN["hot_s"] is not None and c >= 2:
            # From the end of cycle 1 on, the board is 20 degrees hotter for hot_s seconds.
            state["hot_since"] = state["hot_since"] or now
            gpu.temperature_c = 60 if now - state["hot_since"] < PLAN["hot_s"] else 40
        if now - state["written"] >= 0.005:
            state["written"] = now
            write_proc(c in PLAN["busy"])


GPUS = [FakeGpu(uuid="GPU-0aaaaaaa-0000-0000-0000-000000000000", temperature_c=40, script=script)]


def burn():
    wall, cpu, carry = time.monotonic(), time.process_time(), 0.0
    while True:
        time.sleep(0.003)
        now, used = time.monotonic(), time.process_time()
        busy = (used - cpu) / (now - wall) if now > wall else 0.0
        watts = 60.0 + 150.0 * busy
        GPUS[0].power_mw = int(watts * 1000)
        carry += watts * (now - wall) * 1000
        step = int(carry)
        carry -= step
        GPUS[0].energy_mj += step
        wall, cpu = now, used


threading.Thread(target=burn, daemon=True).start()
"""

#: One tiny offline experiment; ``{measurement}`` adds each run's gating keys. The throughput-outlier check is
#: off (10 = 1000%): this shared machine's throughput varies by far more than 25% between cycles.
TOML = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"
seed = 7

[dataset]
num_prompts = 4

[generation]
max_output_tokens = 8
ignore_eos = true

[measurement]
warmup_requests = 1
idle_seconds = 0.3
energy_meter = "nvml"
sampling_interval_ms = 10
max_throughput_deviation = 10.0
{measurement}

[pytorch]
device = "cpu"
"""

#: ``name: (measurement keys, plan of the board)``. ``throttle``: the cycles that throttle (or "always");
#: ``busy``: the cycles during which other processes use every CPU; ``hot_s``: seconds the board stays hot
#: after cycle 1 (``None``: never hot).
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "invalidate": ('cycles = 4\nvalidity = "invalidate"', {"throttle": [2], "busy": [3], "hot_s": None}),
    "retry": ('cycles = 3\nvalidity = "retry"', {"throttle": [2], "busy": [], "hot_s": None}),
    "retry_limit": (
        'cycles = 2\nvalidity = "retry"\nvalidity_retries = 1',
        {"throttle": "always", "busy": [], "hot_s": None},
    ),
    # warn (the default), and no settle wait: cycle 2 starts hot.
    "warn": ("cycles = 3", {"throttle": [2], "busy": [], "hot_s": 2.5}),
    "settles": ("cycles = 2\nsettle_wait_s = 10", {"throttle": [], "busy": [], "hot_s": 2.5}),
    "never_settles": ("cycles = 2\nsettle_wait_s = 2", {"throttle": [], "busy": [], "hot_s": 1e9}),
}


def _start(root: Path, name: str) -> subprocess.Popen[str]:
    measurement, plan = RUNS[name]
    out = f"res-{name}"
    shim, proc = root / f"shim-{name}", root / f"proc-{name}"
    shim.mkdir()
    proc.mkdir()
    (proc / "stat").write_text("cpu  0 0 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0\n")
    (proc / "loadavg").write_text("0.10 0.10 0.10 1/100 1234\n")
    from lem_energy_nvml.testing import write_pynvml  # only when lem-energy-nvml is installed (see the fixture)

    write_pynvml(shim, BOARDS % json.dumps({**plan, "out": out}))
    (root / f"{name}.toml").write_text(TOML.format(measurement=measurement))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        LEM_CACHE_DIR=str(root / f"cache-{name}"),  # runs build the tiny model at once: no shared cache
        LEM_PROC_ROOT=str(proc),
        PYTHONPATH=os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
        COLUMNS="200",
    )
    cmd = [sys.executable, "-m", "lem", "run", f"{name}.toml", "--out", out, "--no-report"]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Per run: its experiment dir, what the user saw (stdout + stderr) and the run's return code.

    Three runs at a time: the machine has two cores.
    """
    if not has_fake_pynvml():
        pytest.skip("needs lem-energy-nvml and its fake pynvml (lem_energy_nvml.testing)")
    root = tmp_path_factory.mktemp("validity")
    names = list(RUNS)
    out: dict[str, dict[str, Any]] = {}
    for batch in (names[:3], names[3:]):
        procs = {name: _start(root, name) for name in batch}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            [exp] = (root / f"res-{name}").glob("*/exp")
            out[name] = {"exp": exp, "root": root, "seen": stdout + stderr, "rc": proc.returncode}
    return out


def _summary(run: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads((run["exp"] / "summary.json").read_text())


def _cycle(run: Mapping[str, Any], c: int) -> dict[str, Any]:
    return json.loads((run["exp"] / f"cycle-{c:03d}.json").read_text())


def _show(run: Mapping[str, Any]) -> str:
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "lem", "results", "show", str(run["exp"].parent)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _recomputed(run: Mapping[str, Any]) -> None:
    problems = check(run["exp"])
    assert not problems, f"{len(problems)} figure(s) disagree with the recomputation:\n" + "\n".join(problems)


def _throttled_share(cycle: Mapping[str, Any]) -> float:
    [device] = cycle["energy"]["thermal"]["devices"]
    return float(device["throttled_share"])


def test_invalidate_keeps_a_spoilt_cycle_in_its_file_and_leaves_it_out_of_the_summary(
    runs: dict[str, dict[str, Any]],
) -> None:
    run = runs["invalidate"]
    assert run["rc"] == 0, run["seen"][-3000:]
    # Only the planned cycles are spoilt: cycle 2 throttled in every sample, cycle 3's host busy.
    assert [_throttled_share(_cycle(run, c)) for c in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.0]
    assert [_cycle(run, c)["host"]["others_share"] for c in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 0.0]
    s = _summary(run)
    assert (s["cycles"], s["cycles_included"]) == (4, 2)
    v = s["validity"]
    assert (v["mode"], v["spoilt_cycles"], v["excluded_cycles"], v["replaced_cycles"], v["included"]) == (
        "invalidate",
        [2, 3],
        [2, 3],
        [],
        2,
    )
    assert "throttled (sw_power_cap)" in v["reasons"]["2"][0]
    assert v["reasons"]["3"] == [
        "busy host: other processes used 100% of all CPUs (measurement.max_host_cpu_share 0.25)"
    ]
    # The summary's figures are the kept cycles' (1 and 4): n = 2, and every figure recomputes from them.
    assert s["figures"]["energy.j_per_output_token"]["n"] == 2
    kept = [_cycle(run, c)["energy"]["j_per_output_token"] for c in (1, 4)]
    assert s["figures"]["energy.j_per_output_token"]["values"] == kept
    _recomputed(run)
    # What the user sees: each spoilt cycle as it ends, the count at the end of the run and in `results show`.
    seen = run["seen"]
    assert "cycle 2 spoilt (invalidate): GPU 0 throttled (sw_power_cap)" in seen
    assert "cycle 3 spoilt (invalidate): busy host: other processes used 100% of all CPUs" in seen
    left_out = "2 of 4 cycle(s) spoilt and left out of the figures (measurement.validity = 'invalidate'): cycles 2, 3"
    assert left_out in " ".join(seen.split())
    shown = " ".join(_show(run).split())
    assert "cycles 4 (2 included; 2 spoilt, left out)" in shown
    assert "requests 8 ok, 0 failed in the 2 included cycle(s)" in shown
    assert left_out in shown


def test_retry_runs_a_replacement_for_the_spoilt_cycle(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["retry"]
    assert run["rc"] == 0, run["seen"][-3000:]
    # cycles = 3, cycle 2 spoilt and replaced: a fourth cycle ran, and three are in the figures.
    assert sorted(p.name for p in run["exp"].glob("cycle-*.json")) == [f"cycle-00{c}.json" for c in (1, 2, 3, 4)]
    assert [_throttled_share(_cycle(run, c)) for c in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.0]
    s = _summary(run)
    assert (s["cycles"], s["cycles_included"]) == (4, 3)
    v = s["validity"]
    assert (v["spoilt_cycles"], v["excluded_cycles"], v["replaced_cycles"]) == ([2], [2], [2])
    assert s["figures"]["output_tokens_per_s"]["n"] == 3
    _recomputed(run)
    assert "cycle 2 spoilt (retry): GPU 0 throttled (sw_power_cap)" in run["seen"]
    assert "cycle 4/3" in run["seen"]  # the replacement, shown as one past the cycles asked for


def test_the_retry_limit_stops_a_board_that_always_throttles(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["retry_limit"]
    # No crash: the run ends with its files written, says what happened, and exits 1 (no figure to show).
    assert run["rc"] == 1, run["seen"][-3000:]
    assert "Traceback" not in run["seen"]
    s = _summary(run)
    # cycles = 2 and one retry: cycle 1 replaced, cycles 2 and 3 counted but spoilt; nothing left to show.
    assert (s["cycles"], s["cycles_included"]) == (3, 0)
    v = s["validity"]
    assert (v["spoilt_cycles"], v["excluded_cycles"], v["replaced_cycles"]) == ([1, 2, 3], [1, 2, 3], [1])
    assert s["status"] == "degraded"
    assert "every cycle was spoilt" in s["status_reason"]
    assert s["figures"]["energy.j_per_output_token"] == {
        **s["figures"]["energy.j_per_output_token"],
        "mean": None,
        "n": 0,
    }
    assert "3 of 3 cycle(s) spoilt" in s["figures"]["energy.j_per_output_token"]["reason"]
    seen = " ".join(run["seen"].split())
    assert "3 of 3 cycle(s) spoilt and left out of the figures" in seen
    shown = " ".join(_show(run).split())
    assert "cycles 3 (0 included; 3 spoilt, left out)" in shown
    assert "not measured" not in shown.split("Energy")[1].split("Goodput")[0]


def test_warn_keeps_every_cycle_and_records_the_warning(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["warn"]
    assert run["rc"] == 0, run["seen"][-3000:]
    s = _summary(run)
    assert (s["cycles"], s["cycles_included"]) == (3, 3)
    v = s["validity"]
    assert (v["mode"], v["spoilt_cycles"], v["excluded_cycles"], v["replaced_cycles"]) == ("warn", [2], [], [])
    # Cycle 2 throttled, and started 20 °C hotter than cycle 1: no settle wait was asked for.
    reasons = v["reasons"]["2"]
    assert any("throttled (sw_power_cap)" in r for r in reasons)
    assert any(r.startswith("GPU 0 not settled: 60 °C at the cycle's start, 40 °C") for r in reasons)
    assert s["figures"]["energy.j_per_output_token"]["n"] == 3
    assert any(w.startswith("cycle 2: spoilt: GPU 0 throttled") for w in s["warnings"])
    assert not any("left out of the figures" in w for w in s["warnings"])
    _recomputed(run)
    assert "cycle 2 spoilt (warn)" in run["seen"]


def _settle_seconds(seen: str) -> float:
    [taken] = re.findall(r"settle\s+done in ([0-9.]+) s", seen)
    return float(taken)


def test_settle_wait_waits_until_the_temperature_comes_back(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["settles"]
    assert run["rc"] == 0, run["seen"][-3000:]
    second = _cycle(run, 2)
    # The board was hot for 2.5 s after cycle 1; cycle 2 started at cycle 1's temperature, so it waited
    # (without the wait it starts hot: the warn run), and no longer than the board took to cool.
    [device] = second["energy"]["thermal"]["devices"]
    assert device["start"]["temperature_c"] == 40
    assert not [n for n in second["notes"] if "settle" in n]
    assert _summary(run)["validity"]["spoilt_cycles"] == []
    assert 1.0 <= _settle_seconds(run["seen"]) < 10.0


def test_settle_wait_is_bounded_when_the_temperature_never_comes_back(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["never_settles"]
    assert run["rc"] == 0, run["seen"][-3000:]
    second = _cycle(run, 2)
    assert second["notes"] == [
        "temperature did not settle within measurement.settle_wait_s 2 s (GPU 0 +20 °C)",
    ]
    # Waited settle_wait_s, plus at most one probe of the temperature (1 s) and this machine's slack.
    assert 2.0 <= _settle_seconds(run["seen"]) <= 4.0
    s = _summary(run)
    assert any("did not settle" in w for w in s["warnings"])
    assert s["validity"]["spoilt_cycles"] == [2]  # warn: kept, and said


def test_compare_shows_each_energy_figures_uncertainty_budget(runs: dict[str, dict[str, Any]]) -> None:
    """``lem results compare``'s table: ``budget ±x%`` under each energy figure's cell, x from the raw files."""
    compared = [runs["warn"], runs["retry"]]
    env = {**os.environ, "COLUMNS": "250"}
    done = subprocess.run(
        [sys.executable, "-m", "lem", "results", "compare", *(str(r["exp"]) for r in compared)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # The budget each cell must show: tests/test_recompute.py's own recomputation (no lem code).
    expected = []
    for run in compared:
        budgets = recompute(run["exp"])["uncertainty"]["figures"]
        for name in (
            "energy.j_per_output_token",
            "energy.dynamic_j_per_output_token",
            "energy.idle_j_per_output_token",
        ):
            expected.append(f"budget ±{budgets[name]['combined']:.1%}")
            assert budgets[name]["not_covered"] == []
        expected.append(f"budget ±{budgets['energy.mean_power_w']['combined']:.1%}")
    shown = re.findall(r"budget ±[0-9.]+%", done.stdout)
    assert sorted(shown) == sorted(expected)
    assert "(partial budget)" not in done.stdout
    assert "budget ±: the energy figure's uncertainty budget" in " ".join(done.stdout.split())
