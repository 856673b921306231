"""Goodput and the ``[slo]`` table: a hand computation, real runs on the scripted backend, the real CLI.

The scripted backend (lem.testing.scripted) serves requests with exact, configured latencies, so
every goodput figure of a real run can be computed by hand; the scripted meter stands in for a
GPU's energy counter (there is none on the CI machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lem.cli.main import cli
from lem.config import SloConfig
from lem.configfile.loading import deep_merge
from lem.figures.goodput import FAILED_AT_PERCENTILE, NO_GOOD, NO_SLO, NO_TPOT_UNDER_BEAM, checks, cycle_goodput
from lem.figures.requests import RequestTrace, request_metrics
from lem.results.compare import compare, gather
from lem.results.export import cycle_rows
from lem.testing import ScriptedRunner

MS = 1_000_000  # ns


# --- by hand -------------------------------------------------------------------------------


def _hand_requests() -> list[dict[str, Any]]:
    """Five requests, all arriving at 0 (events: (ms, tokens)); their latencies are worked out below."""
    spec: list[tuple[list[tuple[int, int]], str | None]] = [
        ([(10, 1), (20, 1), (30, 1)], None),  # TTFT 10, E2E 30, TPOT (30-10)/2 = 10
        ([(50, 1), (70, 1)], None),  # TTFT 50, E2E 70, TPOT 20
        ([(5, 1)], None),  # TTFT 5, E2E 5, one token: TPOT undefined, counted as met
        ([(8, 1)], "engine died"),  # failed: meets nothing, whatever its times
        ([(12, 2), (40, 1)], None),  # TTFT 12, E2E 40, TPOT (40-12)/2 = 14
    ]
    traces = [
        RequestTrace(i, 8, 0, tuple((t * MS, n) for t, n in events), True, None, err)
        for i, (events, err) in enumerate(spec)
    ]
    return [request_metrics(t) for t in traces]


def test_hand_computed_cycle() -> None:
    per = _hand_requests()
    config = SloConfig(ttft_ms=20, tpot_ms=15, percentile=60)
    energy = {"total_j": 30.0, "dynamic_j": 12.0, "reason": None}
    g = cycle_goodput(per, 2.0, energy, config)
    # Good: request 0 (10 <= 20, 10 <= 15), 2 (5, one token), 4 (12, 14). Not: 1 (TTFT 50), 3 (failed).
    assert g["slo"] == {"ttft_ms": 20.0, "tpot_ms": 15.0, "e2e_ms": None, "percentile": 60.0}
    assert (g["requests"], g["good_requests"]) == (5, 3)
    assert g["share"] == pytest.approx(3 / 5)
    assert g["requests_per_s"] == pytest.approx(3 / 2.0)
    assert g["j_per_good_request"] == pytest.approx(30.0 / 3)
    assert g["dynamic_j_per_good_request"] == pytest.approx(12.0 / 3)
    # p60 of 5 requests is the 3rd smallest (ceil(0.6 * 5) = 3). TTFT known: 5, 10, 12, 50 (the failed
    # one is slower than any target) -> 12 ms. TPOT known: 0 (one token), 10, 14, 20 -> 14 ms.
    ttft, tpot = g["checks"]["ttft_ms"], g["checks"]["tpot_ms"]
    assert (ttft["observed_ms"], ttft["within"], ttft["met"]) == (pytest.approx(12.0), 3, True)
    assert (tpot["observed_ms"], tpot["within"], tpot["met"]) == (pytest.approx(14.0), 3, True)
    assert g["met"] is True and set(g["checks"]) == {"ttft_ms", "tpot_ms"}
    # p80 is the 4th: TTFT 50 > 20 and TPOT 20 > 15, so neither holds; p100 is the failed request.
    strict = checks(per, {**g["slo"], "percentile": 80.0})
    assert strict["ttft_ms"]["observed_ms"] == pytest.approx(50.0) and strict["ttft_ms"]["met"] is False
    assert strict["tpot_ms"]["observed_ms"] == pytest.approx(20.0) and strict["tpot_ms"]["met"] is False
    worst = checks(per, {**g["slo"], "percentile": 100.0})["ttft_ms"]
    assert worst["observed_ms"] is None and worst["observed_reason"] == FAILED_AT_PERCENTILE and not worst["met"]


def test_hand_computed_edges() -> None:
    per = _hand_requests()
    # Limits are inclusive: E2E 30 meets e2e_ms = 30.
    assert cycle_goodput(per, 1.0, {"total_j": 1.0}, SloConfig(e2e_ms=30))["good_requests"] == 2  # E2E 30 and 5
    none = cycle_goodput(per, 1.0, {"total_j": 9.0}, SloConfig(ttft_ms=1))
    assert none["good_requests"] == 0 and none["requests_per_s"] == 0.0
    assert none["j_per_good_request"] is None and none["energy_reason"] == NO_GOOD
    no_energy = cycle_goodput(per, 1.0, {"total_j": None, "reason": "meter off"}, SloConfig(ttft_ms=20))
    assert no_energy["share"] == pytest.approx(3 / 5) and no_energy["j_per_good_request"] is None
    assert no_energy["energy_reason"] == "meter off"
    unset = cycle_goodput(per, 1.0, {"total_j": 9.0}, SloConfig(percentile=99.0))
    assert unset["slo"] is None and unset["share"] is None and unset["reason"] == NO_SLO
    beam = cycle_goodput(per, 1.0, {"total_j": 9.0}, SloConfig(tpot_ms=5), num_beams=2)
    assert beam["share"] is None and beam["reason"] == NO_TPOT_UNDER_BEAM


# --- real runs ------------------------------------------------------------------------------

BASE: dict[str, dict[str, Any]] = {
    "dataset": {"num_prompts": 4, "input_length": 8},
    "generation": {"max_output_tokens": 3},
    "measurement": {"cycles": 2, "idle_seconds": 0.05, "energy_meter": "scripted", "warmup_requests": 1},
    # One slot, no sleeping: request i starts when i-1 ends (8 ms each); TTFT 4, 12, 20, 28 ms,
    # E2E 8, 16, 24, 32 ms, TPOT 2 ms.
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _doc(**tables: dict[str, Any]) -> dict[str, Any]:
    return deep_merge(BASE, tables)


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_real_run_goodput_recorded_and_recomputed(run_scripted: ScriptedRunner) -> None:
    exp = run_scripted(_doc(slo={"ttft_ms": 15, "e2e_ms": 20, "tpot_ms": 2.5, "percentile": 50})).experiment_dir()
    assert "[slo]" in (exp / "experiment.toml").read_text()
    for c in (1, 2):
        cycle = _read(exp / f"cycle-{c:03d}.json")
        g, energy = cycle["metrics"]["goodput"], cycle["energy"]
        # TTFT <= 15 and E2E <= 20: the first two requests (TTFT 4, 12; E2E 8, 16); TPOT 2 <= 2.5 for all.
        assert (g["requests"], g["good_requests"], g["share"]) == (4, 2, 0.5)
        assert g["requests_per_s"] == pytest.approx(2 / cycle["window"]["duration_s"])
        assert energy["total_j"] > 0 and energy["dynamic_j"] is not None
        assert g["j_per_good_request"] == pytest.approx(energy["total_j"] / 2)
        assert g["dynamic_j_per_good_request"] == pytest.approx(energy["dynamic_j"] / 2)
        # p50 of 4 is the 2nd smallest: TTFT 12 <= 15, E2E 16 <= 20, TPOT 2 <= 2.5.
        obs = {k: v["observed_ms"] for k, v in g["checks"].items()}
        assert obs == {"ttft_ms": pytest.approx(12.0), "e2e_ms": pytest.approx(16.0), "tpot_ms": pytest.approx(2.0)}
        assert g["met"] is True
    summary = _read(exp / "summary.json")
    share = summary["figures"]["goodput.share"]
    assert share["values"] == [0.5, 0.5] and share["mean"] == 0.5 and share["ci95_low"] == 0.5
    jpg = summary["figures"]["goodput.j_per_good_request"]
    assert jpg["n"] == 2 and jpg["ci95_high"] >= jpg["mean"] >= jpg["ci95_low"]
    slo = summary["slo"]
    assert slo["slo"] == {"ttft_ms": 15.0, "tpot_ms": 2.5, "e2e_ms": 20.0, "percentile": 50.0}
    assert (slo["cycles_met"], slo["pooled_good_requests"], slo["pooled_requests"]) == (2, 4, 8)
    assert slo["pooled_met"] is True
    # Raw cycles are the source of truth: `lem results aggregate` recomputes the same figures.
    (exp / "summary.json").unlink()
    agg = CliRunner().invoke(cli, ["results", "aggregate", str(exp)])
    assert agg.exit_code == 0, agg.output
    again = _read(exp / "summary.json")
    names = [n for n in summary["figures"] if n.startswith("goodput.")]
    assert len(names) == 4
    assert {n: again["figures"][n] for n in names} == {n: summary["figures"][n] for n in names}
    assert again["slo"] == summary["slo"]
    rows = cycle_rows(exp)
    assert [r["goodput.share"] for r in rows] == [0.5, 0.5] and [r["goodput.good_requests"] for r in rows] == [2, 2]


def test_real_run_without_slo_or_energy(run_scripted: ScriptedRunner) -> None:
    no_energy = {"energy_meter": "none"}
    run_dir = run_scripted(
        _doc(measurement=no_energy),
        _doc(measurement=no_energy, slo={"ttft_ms": 15}),
        _doc(slo={"ttft_ms": 1}),
    ).run_dir
    plain, unmetered, strict = (_read(run_dir / f"e{i}" / "summary.json") for i in range(3))
    for name in ("goodput.share", "goodput.requests_per_s", "goodput.j_per_good_request"):
        assert plain["figures"][name]["mean"] is None and plain["figures"][name]["reason"] == NO_SLO
    assert plain["slo"] == {"slo": None, "reason": NO_SLO}
    # Without energy the share is measured and J per good request is null with the meter's reason.
    assert unmetered["figures"]["goodput.share"]["mean"] == 0.5
    jpg = unmetered["figures"]["goodput.j_per_good_request"]
    cycle = _read(run_dir / "e1" / "cycle-001.json")
    assert jpg["mean"] is None and jpg["reason"] == cycle["energy"]["reason"] and jpg["reason"]
    # No request within 1 ms: a share of 0, and J per good request null (never infinite).
    assert strict["figures"]["goodput.share"]["values"] == [0.0, 0.0]
    assert strict["figures"]["goodput.j_per_good_request"]["reason"] == NO_GOOD
    assert strict["slo"]["cycles_met"] == 0 and strict["slo"]["pooled_met"] is False


def test_compare_shows_goodput_only_with_an_slo(run_scripted: ScriptedRunner, tmp_path: Path) -> None:
    def figures(run_dir: Path) -> tuple[list[str], list[str]]:
        result = compare(gather([str(run_dir)], run_dir.parent, warn=lambda _: None))
        return [f["figure"] for f in result["figures"]], result["warnings"]

    names, _ = figures(run_scripted(_doc(), _doc(), out_dir=tmp_path / "plain").run_dir)
    assert not any(n.startswith("goodput.") for n in names)
    names, warnings = figures(
        run_scripted(_doc(slo={"ttft_ms": 15}), _doc(slo={"ttft_ms": 25}), out_dir=tmp_path / "slo").run_dir
    )
    assert {"goodput.share", "goodput.requests_per_s", "goodput.j_per_good_request"} <= set(names)
    assert any(w.startswith("SLO ([slo]) differs") for w in warnings)


# --- the config, through the real command --------------------------------------------------


def _validate(tmp_path: Path, slo: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "exp.toml"
    path.write_text(f'model = "random:tiny-llama"\nbackend = "pytorch"\n[slo]\n{slo}\n')
    return subprocess.run(
        [sys.executable, "-m", "lem", "config", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LEM_PLUGINS": "pytorch"},
    )


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        ("ttft_ms = -5", "slo.ttft_ms = -5.0: must be in (0, 3600000] milliseconds"),
        ("tpot_ms = 0", "slo.tpot_ms = 0.0: must be in (0, 3600000] milliseconds"),
        ("percentile = 0", "slo.percentile = 0.0: must be in (0, 100]"),
        ("percentile = 101.5", "slo.percentile = 101.5: must be in (0, 100]"),
        ("ttft = 200", "slo.ttft: unknown key"),
        ('e2e_ms = "fast"', "slo.e2e_ms"),
    ],
)
def test_bad_slo_is_one_line_and_exit_2(tmp_path: Path, slo: str, expected: str) -> None:
    result = _validate(tmp_path, slo)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_good_slo_validates_and_tpot_under_beam_search_warns(tmp_path: Path) -> None:
    ok = _validate(tmp_path, "ttft_ms = 200\ntpot_ms = 50\ne2e_ms = 5000\npercentile = 90")
    assert ok.returncode == 0, ok.stderr
    beam = _validate(tmp_path, "tpot_ms = 50\n[generation]\nnum_beams = 2")
    assert beam.returncode == 0 and "slo.tpot_ms" in beam.stderr and "beam search" in beam.stderr
    alone = _validate(tmp_path, "percentile = 90")
    assert alone.returncode == 0 and "slo.percentile" in alone.stderr and "no effect without a target" in alone.stderr


# --- a real backend ------------------------------------------------------------------------

PYTORCH = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"

[dataset]
num_prompts = 4
input_length = 12

[generation]
max_output_tokens = 4
ignore_eos = true

[measurement]
cycles = 2
idle_seconds = 0
warmup_requests = 1
energy_meter = "none"

[slo]
ttft_ms = 3600000
percentile = 50

[sweep]
"slo.e2e_ms" = [0.001, 3600000]
"""


def test_pytorch_run_goodput_from_its_own_latencies(tmp_path: Path) -> None:
    """`lem run` on the PyTorch backend (tiny random Llama, CPU), an SLO swept: none and every request meets it."""
    from lem.plugins import backend_names

    if "pytorch" not in backend_names():
        pytest.skip("lem-backend-pytorch is not installed")
    (tmp_path / "exp.toml").write_text(PYTORCH)
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "res", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    by_e2e = {s["config"]["slo.e2e_ms"]: s for s in json.loads(proc.stdout)["experiments"]}
    tight, loose = by_e2e[0.001], by_e2e[3600000.0]
    assert tight["figures"]["goodput.share"]["values"] == [0.0, 0.0]
    assert tight["figures"]["goodput.j_per_good_request"]["reason"]  # no energy here, and no good request
    assert loose["figures"]["goodput.share"]["values"] == [1.0, 1.0]
    assert loose["slo"]["slo"] == {"ttft_ms": 3600000.0, "tpot_ms": None, "e2e_ms": 3600000.0, "percentile": 50.0}
    # Independently from the raw rows: every request finished, so goodput = 4 requests / window.
    (exp,) = [p.parent for p in (tmp_path / "res").glob("*/*/summary.json") if _read(p) == loose]
    for c in (1, 2):
        cycle = _read(exp / f"cycle-{c:03d}.json")
        assert all(r["finished"] and r["error"] is None for r in cycle["requests"])
        expected = len(cycle["requests"]) / cycle["window"]["duration_s"]
        assert loose["figures"]["goodput.requests_per_s"]["values"][c - 1] == pytest.approx(expected)
