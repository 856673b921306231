"""What ``lem results compare --json`` and ``lem results export`` print, recomputed from the raw files.

Three real ``lem run``s (subprocesses, the pytorch backend on the built-in tiny Llama on the CPU, energy from the
fake ``pynvml`` that tests/test_recompute.py sets up) differ the way users' experiments do: A is the baseline;
B batches 3 requests instead of 2 and serves the prompt set several times per window (``min_window_s``): the
same workload per pass; C changes the precision, the prompts, ``max_output_tokens`` and the ``[slo]``.

Every number printed is recomputed here from ``setup.json``, ``cycle-NNN.json``, ``timeline-NNN.csv`` and
``environment.json`` by tests/test_recompute.py's own code (numpy and plain Python, no ``lem`` import) and this
module's: compare's means, CI bounds, ratios, Welch t, Welch-Satterthwaite df, critical t and verdict, its
fairness warnings (each must fire when, and only when, its condition holds in the raw files); every cell of
export's experiment, cycle and request tables in CSV, JSONL and Parquet. A cell that is neither recomputed
nor traced to a raw file fails by name, as does a measurement that is missing but exported as 0 or "".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_recompute import (
    across_cycles,
    cycle_figures,
    digest,
    good,
    has_fake_pynvml,
    mean,
    read_experiment,
    recompute,
    request_figures,
    run_side_by_side,
    slo_of,
    t975,
)

REL = 1e-9

#: The figures compare shows (docs/results.md, Commands): ``(figure, unit, display scale)``; goodput's only
#: when an experiment has an ``[slo]``. A label that names its unit ("J/out tok") has no separate unit.
COMPARED = (
    ("output_tokens_per_s", "", 1.0),
    *((f"{lat}.{q}", "ms", 1e3) for lat in ("ttft_s", "itl_s", "tpot_s") for q in ("p50", "p99")),
    ("energy.j_per_output_token", "", 1.0),
    ("energy.dynamic_j_per_output_token", "", 1.0),
    ("energy.idle_j_per_output_token", "", 1.0),
    ("energy.mean_power_w", "W", 1.0),
    ("goodput.share", "%", 100.0),
    ("goodput.requests_per_s", "req/s", 1.0),
    ("goodput.j_per_good_request", "", 1.0),
    ("efficiency.memory_bandwidth_utilization", "%", 100.0),
    ("efficiency.flops_utilization", "%", 100.0),
    ("efficiency.roofline_decode_tokens_per_s", "", 1.0),
)

TEMPLATE = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "{precision}"
seed = {seed}

[dataset]
num_prompts = {prompts}
input_length_distribution = "uniform"
input_length_min = 6
input_length_max = 20

[generation]
max_output_tokens = {max_out}
ignore_eos = true

[batching]
batch_size = {batch}

[traffic]
mode = "poisson"
rate = 200.0

[measurement]
cycles = {cycles}
warmup_requests = 1
idle_seconds = 0.3
energy_meter = "nvml"
sampling_interval_ms = 10
devices = [0, 1]
min_window_s = {min_window}

[pytorch]
device = "cpu"

[slo]
ttft_ms = 60000
tpot_ms = {tpot_ms}
percentile = 90
"""
A = dict(precision="float32", seed=7, prompts=6, max_out=6, batch=2, cycles=3, min_window=0.0, tpot_ms=60000)
VARIANTS = {
    "a": A,
    "b": {**A, "batch": 3, "min_window": 3.0},
    "c": {**A, "precision": "bfloat16", "seed": 8, "prompts": 5, "max_out": 4, "cycles": 2, "tpot_ms": 50000},
}


def lem(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lem", *args], capture_output=True, text=True, env=env, timeout=120)
    if ok:
        assert proc.returncode == 0, f"lem {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"a"|"b"|"c": experiment dir}``: three real ``lem run``s side by side, under one results directory."""
    if not has_fake_pynvml():
        pytest.skip("needs lem-energy-nvml's fake pynvml (lem_energy_nvml.testing)")
    root = tmp_path_factory.mktemp("compare-export")
    made = run_side_by_side(root, {name: TEMPLATE.format(**values) for name, values in VARIANTS.items()}, "out")
    # One results directory holding the three runs: what `export` reads.
    (root / "results").mkdir(exist_ok=True)
    return {
        name: Path(shutil.move(exp.parent, root / "results" / exp.parent.name)) / "exp" for name, exp in made.items()
    }


# --- the raw facts of one experiment -----------------------------------------------------------------


def raw(exp: Path) -> dict[str, Any]:
    """What this module needs of an experiment, from its raw files only."""
    setup, cycles, timelines = read_experiment(exp)
    per_cycle = [cycle_figures(c, setup, timelines.get(c["cycle"])) for c in cycles]
    values = {name: [pc["figures"][name] for pc in per_cycle] for name in per_cycle[0]["figures"]}
    per_pass = {kind: {pc[f"{kind}_tokens"] / pc["passes"] for pc in per_cycle} for kind in ("input", "output")}
    return {
        "exp": exp,
        "setup": setup,
        "cycles": cycles,
        "per_cycle": per_cycle,
        "values": values,
        "per_pass": per_pass,
        "key": f"{setup['run_id']}/{setup['experiment_id']}",
        "slo": slo_of(setup["config"]),
        "output_digest": per_cycle[0]["digest"],
        "environment": json.loads((exp / "environment.json").read_text()),
    }


def close(got: Any, want: float | None, scale: float = 0.0) -> bool:
    """``got`` is ``want`` within a relative 1e-9 of ``want`` or of ``scale`` (the magnitude it came from)."""
    if want is None or got is None or isinstance(got, bool):
        return got is None and want is None
    return math.isclose(got, want, rel_tol=REL, abs_tol=REL * abs(scale))


# --- compare --------------------------------------------------------------------------------------------


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's two-sided test at 5% of mean(b) against mean(a); critical t at floor(Welch-Satterthwaite df)."""
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "df": None, "t_crit": None, "resolved": None, "reason": True}
    # Exact arithmetic: cycles with the same value have no spread at all (float means and variances can
    # leave one of 1e-17, and a t of 1e16).
    ma, mb = (sum(map(Fraction, x)) / len(x) for x in (a, b))
    va, vb = (sum((Fraction(v) - m) ** 2 for v in x) / (len(x) - 1) / len(x) for x, m in ((a, ma), (b, mb)))
    if va + vb == 0:
        return {"t": None, "df": None, "t_crit": None, "resolved": ma != mb, "reason": True}
    t = float(mb - ma) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # exact: floor() sees no rounding
    crit = t975(math.floor(df))
    return {"t": t, "df": float(df), "t_crit": crit, "resolved": abs(t) > crit, "reason": None}


def fairness(first: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, tuple[Any, Any] | None]:
    """Per documented fairness check: ``(first's, other's)`` when the raw files say the workloads differ."""

    def pair(a: Any, b: Any, known: bool = True) -> tuple[Any, Any] | None:
        return (a, b) if known and a != b else None

    fs, os_ = first["setup"], other["setup"]
    return {
        "model": pair(fs["model"], os_["model"]),
        "precision": pair(fs["config"]["precision"], os_["config"]["precision"]),
        "prompt-set digest": pair(fs["prompts"]["digest"], os_["prompts"]["digest"]),
        "input tokens per pass": pair(first["per_pass"]["input"], other["per_pass"]["input"]),
        "output tokens per pass": pair(first["per_pass"]["output"], other["per_pass"]["output"]),
        "SLO ([slo])": pair(first["slo"], other["slo"]),
        "generated-output digest": pair(
            first["output_digest"], other["output_digest"], None not in (first["output_digest"], other["output_digest"])
        ),
    }


def check_compare(result: Mapping[str, Any], exps: Sequence[Path]) -> list[str]:
    """One line per number or warning of ``compare --json`` that the raw files do not give."""
    facts = [raw(e) for e in exps]
    problems = []
    got = [(e["key"], e["backend"], e["model"], e["cycles"]) for e in result["experiments"]]
    want = [(f["key"], f["setup"]["backend"], f["setup"]["model"], len(f["cycles"])) for f in facts]
    if got != want:
        problems.append(f"experiments: lem {got}, recomputed {want}")
    has_slo = any(f["slo"] for f in facts)
    shown = [(name, unit, scale) for name, unit, scale in COMPARED if has_slo or not name.startswith("goodput.")]
    if [(f["figure"], f["unit"], f["scale"]) for f in result["figures"]] != shown:
        problems.append(f"figures: lem {[f['figure'] for f in result['figures']]}, documented {shown}")
    for fig in result["figures"]:
        name = fig["figure"]
        stats = [across_cycles(f["values"][name]) for f in facts]
        present = [[v for v in f["values"][name] if v is not None] for f in facts]
        for i, (cell, s) in enumerate(zip(fig["experiments"], stats, strict=True)):
            where = f"{name}[{i}]"
            half = 0.0 if s["ci95_high"] is None else s["ci95_high"] - s["mean"]
            ratio = None if s["mean"] is None or not stats[0]["mean"] else s["mean"] / stats[0]["mean"]
            for stat, value, scale in (
                ("n", s["n"], 0),
                ("mean", s["mean"], 0),
                ("ci95_low", s["ci95_low"], abs(s["mean"] or 0) + half),
                ("ci95_high", s["ci95_high"], abs(s["mean"] or 0) + half),
                ("ratio", ratio, 0),
            ):
                if not close(cell[stat], value, scale):
                    problems.append(f"{where}.{stat}: lem {cell[stat]!r}, recomputed {value!r}")
            if s["n"] and cell["reason"] is not None:  # a reason says why a figure is null
                problems.append(f"{where}.reason: {cell['reason']!r} for a measured figure")
            if cell["key"] != facts[i]["key"]:
                problems.append(f"{where}.key: lem {cell['key']!r}, recomputed {facts[i]['key']!r}")
            if i == 0:
                continue
            w, lw = welch(present[0], present[i]), cell["welch"]
            # t is a difference of means over its standard error: its rounding is that of the means over se.
            se = None if w["t"] in (None, 0.0) else (mean(present[i]) - mean(present[0])) / w["t"]
            t_scale = 0.0 if se is None else (abs(mean(present[0])) + abs(mean(present[i]))) / abs(se)
            for stat, scale in (("t", t_scale), ("df", 0.0), ("t_crit", 0.0)):
                if not close(lw[stat], w[stat], scale):
                    problems.append(f"{where}.welch.{stat}: lem {lw[stat]!r}, recomputed {w[stat]!r}")
            if lw["resolved"] is not w["resolved"]:
                problems.append(f"{where}.welch.resolved: lem {lw['resolved']!r}, recomputed {w['resolved']!r}")
            if bool(lw["reason"]) is not bool(w["reason"]):
                problems.append(
                    f"{where}.welch.reason: lem {lw['reason']!r}, expected {'one' if w['reason'] else None}"
                )
    expected = {
        (what, other["key"]): differ
        for other in facts[1:]
        for what, differ in fairness(facts[0], other).items()
        if differ is not None
    }
    seen = set()
    for line in result["warnings"]:
        what = line.split(" differs: ")[0]
        other = next((f for f in facts[1:] if f", {f['key']} has " in line), None)
        key = (what, other["key"] if other else None)
        seen.add(key)
        if key not in expected:
            problems.append(f"warning without a difference in the raw files: {line}")
            continue
        a, b = expected[key]
        if what.endswith("per pass") and len(a) == len(b) == 1:  # the counts shown are the raw files' counts
            shown_ = [str(int(x)) if x == int(x) else str(x) for x in (*a, *b)]
            if f"has {shown_[0]}, " not in line or not line.endswith(f" has {shown_[1]}"):
                problems.append(f"warning shows other counts than {shown_}: {line}")
        if what.endswith("digest") and not (a in line and b in line):
            problems.append(f"warning shows other digests than {a}, {b}: {line}")
    problems += [f"no warning although the raw files differ: {what} of {k}" for what, k in expected.keys() - seen]
    problems += check_marginal(result["marginal_energy"], facts)
    return problems


def marginal_expected(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The sweep's marginal J/out tok: an ordinary least-squares line of each cycle's mean power on its output
    tok/s (numpy's polyfit), the slope's 95% interval with t975(n - 2); ``None`` below 3 points or 2 experiments."""
    pairs = [
        [(x, y) for x, y in zip(f["values"]["output_tokens_per_s"], f["values"]["energy.mean_power_w"], strict=True)]
        for f in facts
    ]
    pts = [(x, y) for exp in pairs for x, y in exp if x is not None and y is not None]
    used = sum(1 for exp in pairs if any(x is not None and y is not None for x, y in exp))
    if len(pts) < 3 or used < 2:
        return None
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    se = math.sqrt(
        float(np.sum((y - intercept - slope * x) ** 2)) / (len(pts) - 2) / float(np.sum((x - x.mean()) ** 2))
    )
    half = t975(len(pts) - 2) * se
    return {
        "slope": float(slope),
        "low": float(slope - half),
        "high": float(slope + half),
        "fixed": float(intercept),
        "points": len(pts),
        "experiments": used,
    }


def check_marginal(got: Mapping[str, Any], facts: Sequence[Mapping[str, Any]]) -> list[str]:
    want = marginal_expected(facts)
    if want is None:
        return [] if got["marginal_j_per_output_token"] is None else [f"marginal energy: lem {got}, expected no fit"]
    half = want["high"] - want["slope"]
    problems = []
    for key, value, scale in (
        ("marginal_j_per_output_token", want["slope"], abs(want["slope"]) + half),
        ("ci95_low", want["low"], abs(want["slope"]) + half),
        ("ci95_high", want["high"], abs(want["slope"]) + half),
        ("fixed_power_w", want["fixed"], abs(want["fixed"])),
        ("points", want["points"], 0.0),
        ("experiments", want["experiments"], 0.0),
    ):
        # polyfit solves by SVD, lem by sums of squares: they agree to float rounding of the fit's own scale.
        if not (got[key] is not None and math.isclose(got[key], value, rel_tol=1e-6, abs_tol=1e-6 * scale)):
            problems.append(f"marginal energy {key}: lem {got[key]!r}, recomputed {value!r}")
    return problems


def run_compare(*exps: Path) -> dict[str, Any]:
    proc = lem("results", "compare", *map(str, exps), "--json")
    result = json.loads(proc.stdout)
    for line in result["warnings"]:  # the same warnings reach stderr
        assert f"lem: warning: {line}" in proc.stderr
    return result


def _rewrite(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def derive(exp: Path, into: Path, name: str) -> Path:
    """A copy of an experiment's run directory named ``name`` (its files keep their run id): raw files to edit."""
    run = into / name
    shutil.copytree(exp.parent, run)
    return run / exp.name


def test_compare_is_recomputed_from_the_raw_files(runs: dict[str, Path]) -> None:
    exps = [runs["a"], runs["b"], runs["c"]]
    result = run_compare(*exps)
    problems = check_compare(result, exps)
    assert not problems, "\n".join(problems)
    assert result["marginal_energy"]["marginal_j_per_output_token"] is not None  # the fit was checked, not skipped
    # The runs exercise what they are meant to: B serves several passes per window with A's workload; C differs
    # from A in precision, prompts, output tokens, SLO and outputs.
    b = raw(runs["b"])
    assert max(pc["passes"] for pc in b["per_cycle"]) > 1
    assert b["per_pass"] == raw(runs["a"])["per_pass"]
    whats = {w.split(" differs: ")[0] for w in result["warnings"]}
    assert {"precision", "prompt-set digest", "output tokens per pass", "SLO ([slo])"} <= whats
    # --strict: each warning is one error line and the exit status is 1.
    strict = lem("results", "compare", *map(str, exps), "--strict", ok=False)
    assert strict.returncode == 1
    assert sum(w in strict.stderr for w in result["warnings"]) == len(result["warnings"])
    assert "Traceback" not in strict.stderr


def test_t_quantiles_of_the_verdicts_agree_with_mpmath() -> None:
    """t975 (test_recompute's bisection of A&S 26.7.3/4) against mpmath's regularized incomplete beta."""
    mpmath = pytest.importorskip("mpmath")
    for df in (1, 2, 3, 4, 7, 12, 30):
        tail = mpmath.betainc(df / 2, 0.5, 0, df / (df + t975(df) ** 2), regularized=True)
        assert abs(float(tail) - 0.05) < 1e-12, df


def test_compare_edge_cases_one_cycle_no_spread_and_a_renamed_model(runs: dict[str, Path], tmp_path: Path) -> None:
    """Derived from the real runs: C cut to 1 cycle (n/a), A and B with every cycle the same (no spread, exact
    verdict; against A: one-sided spread, df = n - 1), A's raw files under another model name (model warning)."""
    one = derive(runs["c"], tmp_path, "c-one-cycle")
    for p in (*one.glob("cycle-00[2-9].json"), *one.glob("timeline-00[2-9].csv")):
        p.unlink()
    flat = {}
    for name in ("a", "b"):
        flat[name] = derive(runs[name], tmp_path, f"{name}-flat")
        first = json.loads((flat[name] / "cycle-001.json").read_text())
        for p in flat[name].glob("cycle-00[2-9].json"):
            p.write_text(json.dumps({**first, "cycle": int(p.stem.split("-")[1])}))
            shutil.copy(flat[name] / "timeline-001.csv", p.with_name(p.stem.replace("cycle", "timeline") + ".csv"))
    renamed = derive(runs["a"], tmp_path, "a-renamed")
    _rewrite(renamed / "setup.json", lambda d: d.update(model="random:tiny-llama-copy"))
    lem("results", "aggregate", str(one), str(flat["a"]), str(flat["b"]), str(renamed))

    exps = [runs["a"], one, renamed]
    result = run_compare(*exps)
    assert not (problems := check_compare(result, exps)), "\n".join(problems)
    cells = [fig["experiments"] for fig in result["figures"]]
    assert all(c[1]["welch"]["resolved"] is None and c[1]["ci95_low"] is None for c in cells)
    assert sum(w.startswith("model differs: ") for w in result["warnings"]) == 1
    # Every figure with values (the roofline figures are null on the CPU without [hardware]) is unresolved.
    valued = [c for c in cells if c[0]["mean"] is not None]
    assert valued and all(c[2]["welch"]["resolved"] is False and c[2]["welch"]["t"] in (0, None) for c in valued)

    exps = [flat["a"], flat["b"], runs["a"]]
    result = run_compare(*exps)
    assert not (problems := check_compare(result, exps)), "\n".join(problems)
    cells = [fig["experiments"] for fig in result["figures"]]
    assert all(c[1]["welch"]["t"] is None and c[1]["welch"]["reason"] for c in cells)
    assert any(c[2]["welch"]["df"] == len(raw(runs["a"])["cycles"]) - 1 for c in cells)


def test_a_wrong_compare_figure_or_warning_is_caught(runs: dict[str, Path]) -> None:
    exps = [runs["a"], runs["c"]]
    result = run_compare(*exps)
    assert not check_compare(result, exps)
    cell = result["figures"][0]["experiments"][1]
    cell["welch"]["df"] += 0.5
    cell["welch"]["resolved"] = not cell["welch"]["resolved"]
    result["figures"][7]["experiments"][0]["ci95_high"] *= 1 + 1e-6
    dropped = result["warnings"].pop(0)
    result["warnings"].append(f"model differs: {raw(runs['a'])['key']} has x, {raw(runs['c'])['key']} has y")
    problems = check_compare(result, exps)
    for needle in (
        "output_tokens_per_s[1].welch.df",
        "output_tokens_per_s[1].welch.resolved",
        "energy.j_per_output_token[0].ci95_high",
        "no warning although the raw files differ: " + dropped.split(" differs: ")[0],
        "warning without a difference in the raw files: model differs",
    ):
        assert any(p.startswith(needle) for p in problems), f"{needle} not caught:\n" + "\n".join(problems)


# --- export ---------------------------------------------------------------------------------------------

#: environment.json's facts on the experiment row: ``column: path in environment.json``.
ENV_FACTS = {
    "env.cuda_driver_api_version": ("cuda", "cuda_driver_api_version"),
    "env.cuda_visible_devices": ("cuda", "cuda_visible_devices"),
    "env.cpu_model": ("cpu", "model"),
    "env.cpu_logical_cores": ("cpu", "logical_cores"),
    "env.ram_bytes": ("ram_bytes",),
    "env.python": ("python", "version"),
    "env.hostname": ("hostname",),
}


def dig(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        doc = (doc or {}).get(key)
    return doc


def experiment_expected(f: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment row, from the raw files: identity, recomputed counts and figures, config, environment."""
    exp, setup, per_cycle, env = f["exp"], f["setup"], f["per_cycle"], f["environment"]
    summary = recompute(exp)
    methods = sorted({pc["method"] for pc in per_cycle if pc["method"]})
    gpus = env.get("gpus") or []
    row: dict[str, Any] = {
        "key": f["key"],
        "run_id": setup["run_id"],
        "experiment_id": setup["experiment_id"],
        "status": "ok",
        "backend": setup["backend"],
        "model": setup["model"],
        "cycles": len(per_cycle),
        "failed_requests": summary["failed_requests"],
        "prompts.digest": setup["prompts"]["digest"],
        "output_digest": summary["output_digest"],
        "outputs_identical_across_cycles": summary["outputs_identical_across_cycles"],
        "energy_method": methods[0] if len(methods) == 1 else ("mixed: " + ", ".join(methods) if methods else None),
        "energy_reason": None if all(c.get("energy_window") for c in f["cycles"]) else "(a reason)",
        "failure_reason": None,
        **{f"config.{k}": v for k, v in setup["config"].items()},
        **{f"{name}.{stat}": fig[stat] for name, fig in summary["figures"].items() for stat in STATS},
        "env.gpu_count": len(gpus),
        "env.gpu_names": "; ".join(g["name"] for g in gpus) or None,
        "env.driver_version": dig(env, ("cuda", "driver_version")) or (gpus[0].get("driver_version") if gpus else None),
        **{col: dig(env, path) for col, path in ENV_FACTS.items()},
    }
    packages = env["packages"]
    row.update({f"version.{k}": v for k, v in {**packages["lem"], **packages["libraries"]}.items() if v is not None})
    return row


STATS = ("mean", "std", "ci95_low", "ci95_high")


def identity(f: Mapping[str, Any]) -> dict[str, Any]:
    """A cycle or request row's ``key``, ``run_id`` and ``experiment_id``: the experiment's, from setup.json."""
    return {"key": f["key"], "run_id": f["setup"]["run_id"], "experiment_id": f["setup"]["experiment_id"]}


def cycle_expected(f: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cycle, pc in zip(f["cycles"], f["per_cycle"], strict=True):
        rows.append(
            {
                **identity(f),
                "cycle": cycle["cycle"],
                "requests": pc["requests"],
                "completed_requests": sum(r["completed"] for r in pc["per"]),
                "failed_requests": pc["failed"],
                "input_tokens": pc["input_tokens"],
                "output_tokens": pc["output_tokens"],
                "duration_s": cycle["window"]["duration_s"],
                "output_digest": pc["digest"],
                "energy_method": pc["method"],
                "energy_reason": None if cycle.get("energy_window") else "(a reason)",
                "goodput.good_requests": None if f["slo"] is None else sum(good(r, f["slo"]) for r in pc["per"]),
                "goodput.met": pc["slo_met"],
                **pc["figures"],
            }
        )
    return rows


def request_expected(f: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cycle in f["cycles"]:
        for r in sorted(cycle["requests"], key=lambda r: r["id"]):
            m = request_figures(r)
            rows.append(
                {
                    **identity(f),
                    "cycle": cycle["cycle"],
                    "request": r["id"],
                    "input_tokens": m["input"],
                    "output_tokens": m["tokens"],
                    "ttft_s": m["ttft_s"],
                    "e2e_s": m["e2e_s"],
                    "tpot_s": m["tpot_s"],
                    "finished": m["finished"],
                    "error": m["error"],
                    "output_digest": None if r["token_ids"] is None else digest(r["token_ids"]),
                }
            )
    return rows


EXPECTED = {"experiment": lambda f: [experiment_expected(f)], "cycle": cycle_expected, "request": request_expected}
ROW_ID = {"experiment": ("key",), "cycle": ("key", "cycle"), "request": ("key", "cycle", "request")}


def cell_matches(got: Any, want: Any, fmt: str, scale: float = 0.0) -> bool:
    """A cell as the format holds it against the recomputed value (CSV: text; nulls are empty, lists JSON)."""
    if want == "(a reason)":  # a missing measurement's reason: any non-empty text
        return isinstance(got, str) and got != ""
    if fmt == "csv":
        if want is None:
            return got == ""
        if isinstance(want, bool) or isinstance(want, str):
            return got == str(want)
        if isinstance(want, (list, dict)):
            return json.loads(got) == want
        return got != "" and close(float(got), float(want), scale)
    if fmt == "parquet" and isinstance(want, (list, dict)):
        return isinstance(got, str) and json.loads(got) == want
    if want is None or isinstance(want, (bool, str, list, dict)):
        return type(got) is type(want) and got == want
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    return got == want if isinstance(want, int) and fmt == "jsonl" else close(float(got), float(want), scale)


def read_export(root: Path, level: str, fmt: str, tmp_path: Path) -> list[dict[str, Any]]:
    if fmt == "parquet":
        pq = pytest.importorskip("pyarrow.parquet")
        out = tmp_path / f"{level}.parquet"
        lem("results", "export", str(root), "--format", fmt, "--level", level, "--out", str(out))
        return list(pq.read_table(out).to_pylist())
    text = lem("results", "export", str(root), "--format", fmt, "--level", level).stdout
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines()]


def check_export(table: Sequence[Mapping[str, Any]], exps: Sequence[Path], level: str, fmt: str) -> list[str]:
    """One line per row or cell of an export table that the raw files do not give."""
    want = [row for e in exps for row in EXPECTED[level](raw(e))]
    problems = [] if len(table) == len(want) else [f"{len(table)} rows, the raw files give {len(want)}"]
    ident = ROW_ID[level]

    def row_id(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row[k]) for k in ident)

    by_id = {row_id(row): row for row in want}
    columns = set().union(*(row.keys() for row in want))
    for row in table:
        expected = by_id.get(row_id(row))
        if expected is None:
            problems.append(f"row {row_id(row)}: not in the raw files")
            continue
        if fmt != "csv" and set(row) != set(table[0]):
            problems.append(f"row {row_id(row)}: its columns differ from the first row's")
        for col, got in row.items():
            where = f"{level}/{fmt} {row_id(row)} {col}"
            # A spread of values equal but for rounding is rounding: judged against the mean's magnitude.
            mean = expected.get(col.removesuffix(".std") + ".mean") if col.endswith(".std") else None
            scale = abs(mean) if isinstance(mean, (int, float)) and not isinstance(mean, bool) else 0.0
            if col not in columns:
                problems.append(f"{where} = {got!r}: neither recomputed nor traced to a raw file")
            elif col not in expected:  # a column only other rows have (a package another run recorded)
                if got not in ("", None):
                    problems.append(f"{where} = {got!r}: this experiment has no such value")
            elif not cell_matches(got, expected[col], fmt, scale):
                problems.append(f"{where}: lem {got!r}, recomputed {expected[col]!r}")
        problems += [f"{level}/{fmt} {row_id(row)} {col}: missing" for col in expected.keys() - row.keys()]
    return problems


@pytest.mark.parametrize("level", ["experiment", "cycle", "request"])
def test_every_exported_cell_is_recomputed_from_the_raw_files(
    runs: dict[str, Path], level: str, tmp_path: Path
) -> None:
    root = runs["a"].parent.parent
    exps = sorted(runs.values())
    for fmt in ("csv", "jsonl", "parquet"):
        table = read_export(root, level, fmt, tmp_path)
        problems = check_export(table, exps, level, fmt)
        assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    # The tables hold missing measurements (no prefill pass: its J figures are null, never 0 or "").
    if level != "request":
        name = "energy.prefill_j_per_input_token" + (".mean" if level == "experiment" else "")
        assert all(row[name] is None for row in table)


def test_an_edited_raw_value_changes_the_recomputation_and_lem_follows_once_it_reaggregates(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """A last token 1 s later (cycle 2: the longest ITL), a counter reading 1 J higher (cycle 3), in a copy of A.

    The copy's run directory has another name; its rows keep the run id its files record, at every level.
    """
    original = raw(runs["a"])
    exp = derive(runs["a"], tmp_path / "results", "a-edited")

    def later(doc: dict[str, Any]) -> None:
        doc["requests"][3]["events"][-1][0] += 1_000_000_000

    _rewrite(exp / "cycle-002.json", later)
    _rewrite(
        exp / "cycle-003.json",
        lambda d: d["energy_window"]["devices"][1].update(energy_j=d["energy_window"]["devices"][1]["energy_j"] + 1.0),
    )
    edited = raw(exp)
    # The recomputation moves by exactly what was edited, and nothing else.
    [before] = [r for r in request_expected(original) if (r["cycle"], r["request"]) == (2, 3)]
    [after] = [r for r in request_expected(edited) if (r["cycle"], r["request"]) == (2, 3)]
    assert math.isclose(after["e2e_s"] - before["e2e_s"], 1.0, rel_tol=1e-9)
    assert math.isclose(edited["values"]["energy.total_j"][2] - original["values"]["energy.total_j"][2], 1.0)
    assert edited["values"]["energy.total_j"][:2] == original["values"]["energy.total_j"][:2]
    assert edited["values"]["itl_s.p99"][1] > original["values"]["itl_s.p99"][1]

    # summary.json still holds the old figures: compare (which reads it) and the experiment row disagree with
    # the raw files, by name; the cycle and request rows are computed from the raw files and agree at once.
    exps = [exp, runs["b"]]
    problems = check_compare(run_compare(*exps), exps)
    for needle in ("energy.j_per_output_token[0].mean", "itl_s.p99[0].mean", "energy.j_per_output_token[1].ratio"):
        assert any(p.startswith(needle) for p in problems), f"{needle} not caught:\n" + "\n".join(problems)
    root = exp.parent.parent
    stale = check_export(read_export(root, "experiment", "jsonl", tmp_path), [exp], "experiment", "jsonl")
    assert any("energy.total_j.mean" in p for p in stale) and any("e2e_s.p99.mean" in p for p in stale), stale
    for level in ("cycle", "request"):
        assert not check_export(read_export(root, level, "jsonl", tmp_path), [exp], level, "jsonl")

    lem("results", "aggregate", str(exp))
    assert not (problems := check_compare(run_compare(*exps), exps)), "\n".join(problems)
    assert not check_export(read_export(root, "experiment", "csv", tmp_path), [exp], "experiment", "csv")


def test_a_wrong_or_missing_exported_cell_is_caught(runs: dict[str, Path], tmp_path: Path) -> None:
    root, exps = runs["a"].parent.parent, sorted(runs.values())
    table = read_export(root, "cycle", "jsonl", tmp_path)
    assert not check_export(table, exps, "cycle", "jsonl")
    table[0]["energy.prefill_j_per_input_token"] = 0  # a missing measurement as 0
    table[1]["output_digest"] = ""  # ... or as an empty string
    table[2]["energy.total_j"] *= 1 + 1e-6
    table[3]["surprise"] = 1.0
    problems = check_export(table[:-1], exps, "cycle", "jsonl")
    for needle in ("prefill_j_per_input_token: lem 0", "output_digest: lem ''", "energy.total_j: lem", "surprise"):
        assert any(needle in p for p in problems), f"{needle} not caught:\n" + "\n".join(problems)
    assert any(p.endswith(f"rows, the raw files give {len(table)}") for p in problems)
    csv_table = read_export(root, "experiment", "csv", tmp_path)
    csv_table[0]["energy.decode_j_per_output_token.std"] = "0"
    assert any(
        "decode_j_per_output_token.std: lem '0'" in p for p in check_export(csv_table, exps, "experiment", "csv")
    )
