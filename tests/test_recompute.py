"""Every figure of a run's ``summary.json``, recomputed from the raw files by code that is not lem's.

The real ``lem run`` (a subprocess, real worker processes) measures the pytorch backend on the built-in tiny
Llama on the CPU. This machine has no GPU: lem-energy-nvml reads a fake ``pynvml`` (the one it ships for tests,
``lem_energy_nvml.testing``) that stands in for two GPU boards, whose energy counters and
power readings a thread advances with the worker's CPU use, so the idle baseline is lower than the cycles'
power and the NVML counter, idle baseline and power timeline are all exercised.

Then this module recomputes, with its own code (plain Python and numpy; the recomputation imports nothing
from ``lem``, the files are read with ``json`` and ``csv``), every figure from the raw parts of the files —
per-request token timestamps, energy windows, the idle baseline, the timelines — following the definitions
of docs/results.md (and the docstrings it points to for FLOPs and steady state), and compares it with ``summary.json``:
``math.isclose(rel_tol=1e-9)``, exact for integers. Every leaf of the summary must be recomputed, or be a
label (text), or be listed in :data:`NOT_RECOMPUTED` with the reason: a figure lem adds without a
recomputation here fails the test by name.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
NS = 1e9

#: Stands in for GPU hardware: two fake boards; each one's power follows the worker's CPU use (a busy model
#: draws more than an idle one) and its energy counter (mJ) integrates that power.
FAKE_PYNVML = """
import sys, threading, time
from lem_energy_nvml.testing import FakeGpu, make_pynvml
GPUS = [FakeGpu(uuid=f"GPU-{i}aaaaaaa-0000-0000-0000-000000000000") for i in range(2)]
def burn():
    wall, cpu, carry = time.monotonic(), time.process_time(), [0.0, 0.0]
    while True:
        time.sleep(0.003)
        now, used = time.monotonic(), time.process_time()
        busy = (used - cpu) / (now - wall) if now > wall else 0.0
        for i, gpu in enumerate(GPUS):
            watts = 60.0 * (i + 1) + 150.0 * busy
            gpu.power_mw = int(watts * 1000)
            carry[i] += watts * (now - wall) * 1000
            step = int(carry[i])
            carry[i] -= step
            gpu.energy_mj += step
        wall, cpu = now, used
threading.Thread(target=burn, daemon=True).start()
sys.modules[__name__] = make_pynvml(GPUS)
"""

#: Open-loop traffic (latency from each seeded arrival), two metered devices, prompts of several lengths, and
#: an SLO every request meets (J per good request exists).
BASE = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"
seed = 7

[dataset]
num_prompts = 6
input_length_distribution = "uniform"
input_length_min = 6
input_length_max = 20

[generation]
max_output_tokens = 8
ignore_eos = true

[batching]
batch_size = 2

[traffic]
mode = "poisson"
rate = 200.0

[measurement]
cycles = 3
warmup_requests = 2
idle_seconds = 0.3
energy_meter = "nvml"
sampling_interval_ms = 10
devices = [0, 1]

[pytorch]
device = "cpu"

[hardware]
peak_memory_bandwidth_gbs = 25.0
peak_tflops = 0.75
peak_tflops_precision = "float32"

[slo]
ttft_ms = 60000
tpot_ms = 60000
percentile = 90
"""

#: Scored prompts ([quality], scorer "contains"): references the tiny model's output holds or cannot hold.
QUALITY_PROMPTS = [
    {"prompt": "energy per token of a small model", "answer": "e"},
    {"prompt": "joules", "answer": "no output holds this reference"},
    {"prompt": "a longer prompt about the power drawn by an accelerator while it decodes", "answer": "a"},
    {"prompt": "why", "answer": "neither this one"},
]

#: The precision features (and [quality] scoring, on a prompt file with references): a prefill-only pass, a
#: minimum window (several passes), a precision target (3 or 4 cycles), and an SLO no request can meet (goodput
#: 0, J per good request null with its reason). One pass of the prompt set takes 0.1-0.5 s here with the base
#: run beside it, and up to ~1 s on a busy CI machine: the window of 1.5 s still holds several passes there (0.6
#: s once held a single one in every cycle).
PRECISION = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"
seed = 11

[dataset]
source = "file"
path = "quality-prompts.jsonl"
num_prompts = 4
reference_field = "answer"

[quality]
scorer = "contains"

[generation]
max_output_tokens = 4
ignore_eos = true

[batching]
batch_size = 2

[measurement]
cycles = 3
warmup_requests = 1
idle_seconds = 0.3
energy_meter = "nvml"
sampling_interval_ms = 10
devices = [0, 1]
prefill_pass = true
min_window_s = 1.5
target_rel_ci = 0.6
max_cycles = 4

[pytorch]
device = "cpu"

[slo]
e2e_ms = 0.5
percentile = 50
"""

#: Two-sided 95% Student t quantiles t_{0.975, df}, df = 1..10, from the NIST/SEMATECH e-Handbook of
#: Statistical Methods, section 1.3.6.7.2 "Critical Values of the Student's t Distribution" (column 0.975).
#: The table has 3 decimals; :func:`t975` computes the quantile exactly and is checked against it.
NIST_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)

#: Summary leaves that are not figures of the measurement, with the reason (matched on the first path key).
NOT_RECOMPUTED = {
    "schema_version": "the file format's version, not a figure",
    "config": "the resolved input config (experiment.toml flattened): what was asked, not what was measured",
    "sweep_values": "the swept keys' values: inputs",
}
#: Blocks the summary copies from setup.json: raw measurements before the cycles (the load window, warm-up
#: latencies, the prompt-set digest) with nothing to recompute them from; compared with setup.json's own copy
#: (except the prompt statistics, which are recomputed).
COPIED_FROM_SETUP = ("load", "warmup", "prompts")
#: Every figure this oracle recomputes per cycle (the keys :func:`cycle_figures` gives; it checks they are
#: exactly these). Each row of lem's figure registry must be one of them: see the last test.
RECOMPUTED_FIGURES = (
    "output_tokens_per_s",
    "total_tokens_per_s",
    "requests_per_s",
    *(
        f"{lat}.{stat}"
        for lat in ("ttft_s", "itl_s", "tpot_s", "e2e_s")
        for stat in ("mean", "p50", "p90", "p95", "p99")
    ),
    "energy.total_j",
    "energy.idle_j",
    "energy.dynamic_j",
    "energy.j_per_output_token",
    "energy.dynamic_j_per_output_token",
    "energy.idle_j_per_output_token",
    "energy.output_tokens_per_j",
    "energy.mean_power_w",
    "energy.peak_power_w",
    "flops.total",
    "flops.achieved_flops_per_s",
    "goodput.share",
    "goodput.requests_per_s",
    "goodput.j_per_good_request",
    "goodput.dynamic_j_per_good_request",
    "steady_state.output_tokens_per_s",
    "steady_state.j_per_output_token",
    "energy.prefill_j_per_input_token",
    "energy.decode_j_per_output_token",
    "energy.decode_dynamic_j_per_output_token",
    "efficiency.memory_bandwidth_utilization",
    "efficiency.flops_utilization",
    "efficiency.roofline_decode_tokens_per_s",
    "efficiency.achieved_memory_bandwidth_gbs",
    "efficiency.decode_arithmetic_intensity",
    "efficiency.decode_flops_per_s",
    "quality.accuracy",
    "quality.correct_answers",
    "quality.correct_answers_per_s",
    "energy.j_per_correct_answer",
    "energy.dynamic_j_per_correct_answer",
)
REL_TOL = 1e-9
#: Differences of energies of ~100 J (total - idle) and sums of ~1e-3 s latencies carry rounding of ~1e-14
#: absolute: rel_tol alone would fail a figure that is exactly 0 in one computation and 1e-17 in the other.
ABS_TOL = 1e-12


# --- running lem ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"base": experiment dir, "precision": experiment dir}``, from two real ``lem run``s run side by side."""
    if not has_fake_pynvml():
        pytest.skip("needs lem-energy-nvml and its fake pynvml (lem_energy_nvml.testing)")
    root = tmp_path_factory.mktemp("recompute")
    (root / "quality-prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in QUALITY_PROMPTS))
    return run_side_by_side(root, {"base": BASE, "precision": PRECISION}, "res")


def has_fake_pynvml() -> bool:
    """lem-energy-nvml, and the fake pynvml it ships (``lem_energy_nvml.testing``), are installed."""
    return importlib.util.find_spec("lem_energy_nvml") is not None


def fake_nvml_shim(root: Path) -> Path:
    """``root/shim``, holding a ``pynvml.py`` that is the fake (two GPUs) for a subprocess that puts it first."""
    shim = root / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    return shim


def lem_env(cache: Path, shim: Path) -> dict[str, str]:
    """The environment of a ``lem`` subprocess: offline, its own model cache, the fake pynvml first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        LEM_CACHE_DIR=str(cache),
        PYTHONPATH=os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]),
    )
    return env


def run_side_by_side(root: Path, tomls: Mapping[str, str], out_prefix: str) -> dict[str, Path]:
    """``{name: experiment dir}``: one real ``lem run NAME.toml --out OUT_PREFIX-NAME`` per file, side by side,
    with the fake pynvml on the path (two GPUs) and a model cache of its own each."""
    shim = fake_nvml_shim(root)
    procs = {}
    for name, body in tomls.items():
        (root / f"{name}.toml").write_text(body)
        env = lem_env(root / f"cache-{name}", shim)  # runs build the tiny model at once: no shared cache
        cmd = [sys.executable, "-m", "lem", "run", f"{name}.toml", "--out", f"{out_prefix}-{name}", "--quiet"]
        procs[name] = subprocess.Popen(
            [*cmd, "--no-report"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"lem run {name}.toml failed:\n{stdout[-2000:]}\n{stderr[-3000:]}"
        [exp] = (root / f"{out_prefix}-{name}").glob("*/exp")
        out[name] = exp
    return out


# --- reading the raw files ----------------------------------------------------------------------------


def read_experiment(exp: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """``(setup, cycles in order, {cycle: timeline rows})`` as the files hold them."""
    setup = json.loads((exp / "setup.json").read_text())
    cycles = sorted((json.loads(p.read_text()) for p in exp.glob("cycle-*.json")), key=lambda c: c["cycle"])
    timelines = {}
    for c in cycles:
        path = exp / f"timeline-{c['cycle']:03d}.csv"
        if path.exists():
            with path.open(newline="") as f:
                timelines[c["cycle"]] = list(csv.DictReader(f))
    return setup, cycles, timelines


def power_points(rows: Sequence[Mapping[str, str]]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """Per ``(component, device)``: sample times and powers of a timeline, sorted by time."""
    by: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for row in rows:
        if row.get("power_w") not in (None, ""):
            key = (row.get("component") or "gpu", int(row["device"]))
            by.setdefault(key, []).append((float(row["t_s"]), float(row["power_w"])))
    return {k: (np.array([t for t, _ in sorted(v)]), np.array([p for _, p in sorted(v)])) for k, v in by.items()}


# --- statistics (our own) -----------------------------------------------------------------------------


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df``: Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df == 1:
        return 2 * theta / math.pi
    term = c if df % 2 else 1.0
    total = term
    for k in range(3 if df % 2 else 2, df - 1, 2):
        term *= c * c * (k - 1) / k
        total += term
    return 2 / math.pi * (theta + s * total) if df % 2 else s * total


def t975(df: int) -> float:
    """t_{0.975, df}, by bisection of :func:`t_two_sided_cdf` to double precision."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_cdf(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def dist(
    values: Sequence[float], keys: Sequence[str] = ("n", "mean", "std", "min", "max", "p50", "p90", "p95", "p99")
) -> dict[str, Any]:
    """A distribution as docs/results.md defines it: sample std, numpy's linear-interpolation percentiles."""
    if not values:
        return {k: (0 if k == "n" else None) for k in keys}
    a = np.asarray(values, dtype=float)
    every = {
        "n": len(values),
        "mean": mean(values),
        "std": float(np.std(a, ddof=1)) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
        **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 95, 99)},
    }
    return {k: every[k] for k in keys}


#: Figures that may honestly be negative (docs/results.md): energy above idle, which comes out below zero when
#: the idle baseline is above a window's mean power. An interval of theirs below zero is no impossible bound.
MAY_BE_NEGATIVE = (
    "energy.dynamic_j",
    "energy.dynamic_j_per_output_token",
    "goodput.dynamic_j_per_good_request",
    "energy.decode_dynamic_j_per_output_token",
    "energy.dynamic_j_per_correct_answer",
)


def across_cycles(values: Sequence[float | None], may_be_negative: bool = False) -> dict[str, Any]:
    """A headline figure over cycles: mean, sample std, Student-t 95% CI of the mean, its relative half-width."""
    present = [v for v in values if v is not None]
    out: dict[str, Any] = {"n": len(present), "missing": len(values) - len(present), "values": list(values)}
    out.update(dict.fromkeys(("mean", "std", "ci95_low", "ci95_high", "rel_ci95")))
    if not present:
        return out
    m = mean(present)
    out["mean"] = m
    if len(present) > 1:
        s = float(np.std(np.asarray(present, dtype=float), ddof=1))
        half = t975(len(present) - 1) * s / math.sqrt(len(present))
        out.update(std=s, ci95_low=m - half, ci95_high=m + half, rel_ci95=half / abs(m) if m else None)
        out["ci95_low_impossible"] = not may_be_negative and m - half < 0 <= min(present)
    return out


def digest(x: Any) -> str:
    return hashlib.sha256(json.dumps(x, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


# --- per request, per cycle ---------------------------------------------------------------------------


def request_figures(r: Mapping[str, Any]) -> dict[str, Any]:
    """TTFT, E2E, TPOT, ITLs and output tokens of one raw request (docs/results.md, Conventions for latency)."""
    events, origin = r["events"], r["origin_ns"]
    tokens = sum(n for _, n in events)
    ttft = e2e = tpot = None
    itl: list[float] = []
    if events:
        itl += [0.0] * (events[0][1] - 1)  # the extra tokens of the first event arrived with the first token
        for (t0, _), (t1, n) in itertools.pairwise(events):
            itl += [(t1 - t0) / NS / n] * n
        if origin is not None:
            ttft = (events[0][0] - origin) / NS
            e2e = (events[-1][0] - origin) / NS
            tpot = (e2e - ttft) / (tokens - 1) if tokens >= 2 else None
    ok = r["error"] is None
    return {
        "tokens": tokens,
        "ttft_s": ttft,
        "e2e_s": e2e,
        "tpot_s": tpot,
        "itl_s": itl,
        "ok": ok,
        "error": r["error"],
        "completed": ok and r["finished"],
        "finished": r["finished"],
        "input": r["input_tokens"],
    }


def latencies(per: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """TTFT, ITL, TPOT, E2E distributions over the requests that did not fail."""
    ok = [r for r in per if r["ok"]]
    out = {k: dist([r[k] for r in ok if r[k] is not None]) for k in ("ttft_s", "tpot_s", "e2e_s")}
    out["itl_s"] = dist([x for r in ok for x in r["itl_s"]])
    return out


def flops(cfg: Mapping[str, Any], sizes: Sequence[tuple[int, int]]) -> int:
    """Forward FLOPs of (input, output) requests: the analytical count documented in lem/figures/flops.py's docstring.

    A matmul m x k by k x n costs 2mkn. Per token and layer: Q, K, V, O projections (grouped-query) and a
    gated MLP (Llama: gate, up, down); causal attention 4 x heads x head_dim per context position; the LM head
    once per output token. Prefill: the n inputs (position i attends to i) and the first output token; decode
    step k = 1..m-1 attends to n + k positions.
    """
    assert cfg["model_type"] == "llama", "this recomputation knows the Llama shape only (gated MLP)"
    h, layers, heads, vocab = (
        cfg["hidden_size"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["vocab_size"],
    )
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    weights = layers * (2 * h * heads * hd * 2 + 2 * h * kv * hd * 2 + 3 * 2 * h * cfg["intermediate_size"])
    attention = 4 * layers * heads * hd
    head = 2 * h * vocab
    total = 0
    for n, m in sizes:
        total += n * weights + attention * sum(range(1, n + 1)) + (head if m > 0 else 0)
        total += sum(weights + head + attention * (n + k) for k in range(1, m))
    return total


def llama_bytes(cfg: Mapping[str, Any], width: float) -> tuple[float, float]:
    """``(weight bytes a decode step reads, KV bytes per context position)`` of a Llama at ``width`` bytes per
    element (docs/results.md, Distance from the hardware's limit): every layer's Q, K, V, O and gated MLP
    matrices and the LM head; keys and values of every layer."""
    h, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * cfg["intermediate_size"]
    return (layers * per_layer + h * cfg["vocab_size"]) * width, 2 * layers * kv * hd * width


def span_union(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of a union of intervals: merge them in order."""
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return sum(b - a for a, b in merged)


def roofline(reqs: Sequence[Mapping[str, Any]], setup: Mapping[str, Any]) -> dict[str, Any]:
    """The roofline figures of one cycle (docs/results.md, Distance from the hardware's limit), from the raw
    request rows, the model's config and ``[hardware]`` (these runs are on the CPU: no table entry applies)."""
    cfg, config = setup["model_info"]["model_config"], setup["config"]
    width = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}[config["precision"]]  # bytes per weight and cache value
    assert cfg["model_type"] == "llama"
    weights, per_pos = llama_bytes(cfg, width)
    spans = [(r["events"][0][0] / NS, r["events"][-1][0] / NS) for r in reqs if sum(n for _, n in r["events"]) > 1]
    decode_s = span_union(spans)
    tokens = [(r["input_tokens"], sum(n for _, n in r["events"])) for r in reqs]
    decode_tokens = sum(max(0, m - 1) for _, m in tokens)
    concurrency = sum(b - a for a, b in spans) / decode_s
    moved = decode_tokens / concurrency * weights + per_pos * sum(n + k for n, m in tokens for k in range(1, m))
    total = flops(cfg, tokens)
    decode_flops = total - sum(flops(cfg, [(n, 1)]) for n, m in tokens if m > 0)
    bw, tf = config.get("hardware.peak_memory_bandwidth_gbs"), config.get("hardware.peak_tflops")
    # Prefill: time some request awaited its first token while none decoded; null when a first token came
    # while another request was mid-decode.
    overlap = any(
        o["events"][1][0] < r["events"][0][0] < o["events"][-1][0]
        for r in reqs
        for o in reqs
        if o is not r and r["events"] and len(o["events"]) > 1
    )
    waits = [(r["origin_ns"] / NS, r["events"][0][0] / NS) for r in reqs if r["events"] and r["origin_ns"] is not None]
    prefill_s = None if overlap else span_union(waits + spans) - decode_s
    tf_ok = tf is not None and config.get("hardware.peak_tflops_precision", "bfloat16") == config["precision"]
    # In the registry's order, as the summary lists figures (and flags them).
    return {
        "efficiency.memory_bandwidth_utilization": None if bw is None else moved / decode_s / 1e9 / bw,
        "efficiency.flops_utilization": (total - decode_flops) / prefill_s / (tf * 1e12)
        if tf_ok and prefill_s
        else None,
        "efficiency.roofline_decode_tokens_per_s": None if bw is None else decode_tokens * bw * 1e9 / moved,
        "efficiency.achieved_memory_bandwidth_gbs": moved / decode_s / 1e9,
        "efficiency.decode_arithmetic_intensity": decode_flops / moved,
        "efficiency.decode_flops_per_s": decode_flops / decode_s,
    }


def hardware_block(config: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's ``hardware`` block on the CPU: the [hardware] values, or nulls."""
    bw, tf = config.get("hardware.peak_memory_bandwidth_gbs"), config.get("hardware.peak_tflops")
    return {
        "device_name": None,
        "devices": config["sharding.tensor_parallel_size"],
        "peak_memory_bandwidth_gbs": bw,
        "peak_memory_bandwidth_source": None if bw is None else "[hardware] peak_memory_bandwidth_gbs",
        "peak_tflops": tf,
        "peak_tflops_source": None if tf is None else "[hardware] peak_tflops",
        "measured_copy_bandwidth_gbs": None,
    }


def idle_watts(setup: Mapping[str, Any]) -> dict[tuple[str, int], float] | None:
    """Idle power per device: the idle window's energy / its duration."""
    window = (setup.get("idle") or {}).get("window")
    if not window or window["duration_s"] <= 0:
        return None
    return {(d.get("component") or "gpu", d["device"]): d["energy_j"] / window["duration_s"] for d in window["devices"]}


def window_energy(window: Mapping[str, Any] | None, idle_w: Mapping[tuple[str, int], float] | None) -> dict[str, Any]:
    """Total, idle and dynamic J of a meter window (idle J = idle W x the window's meter duration)."""
    if window is None:
        return {"total_j": None, "idle_j": None, "duration_s": None}
    devices = window["devices"]
    total = math.fsum(d["energy_j"] for d in devices)
    idle = None
    if idle_w is not None:
        idle = math.fsum(idle_w[(d.get("component") or "gpu", d["device"])] * window["duration_s"] for d in devices)
    methods = sorted({d["method"] for d in devices})
    return {
        "total_j": total,
        "idle_j": idle,
        "duration_s": window["duration_s"],
        "method": methods[0] if len(methods) == 1 else "mixed: " + ", ".join(methods),
    }


def peak_power(rows: Sequence[Mapping[str, str]]) -> float | None:
    """The highest total power of the devices: each interpolated linearly to every sample instant of any."""
    series = power_points(rows)
    if not series:
        return None
    instants = np.unique(np.concatenate([t for t, _ in series.values()]))
    return float(max(sum(float(np.interp(x, t, p)) for t, p in series.values()) for x in instants))


def integrate(t: np.ndarray, p: np.ndarray, a: float, b: float) -> float:
    """J of a piecewise-linear power curve, flat beyond its samples, from a to b (trapezoids)."""
    knots = np.concatenate([[a], t[(t > a) & (t < b)], [b]])
    power = np.interp(knots, t, p)
    return float(np.sum(np.diff(knots) * (power[:-1] + power[1:]) / 2))


def steady_state(
    requests: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, str]] | None, offset_s: float
) -> dict[str, Any]:
    """Steady-state tok/s and J/token (docs/results.md, Precision...; ML.ENERGY's definition).

    A request runs from its first to its last token (both instants included); the window opens at the first
    instant the number running reaches its maximum and closes at the first instant the number drops below it
    at or after the last request's first token, else at the last drop before. Tokens inside: after the opening,
    up to the closing. Energy: the power timeline integrated over it (>= 5 samples per device inside).
    """
    none = {"output_tokens_per_s": None, "j_per_output_token": None}
    spans = [(r["events"][0][0], r["events"][-1][0]) for r in requests if r["events"]]
    if not spans:
        return none
    instants = sorted({x for span in spans for x in span})
    running = {x: sum(1 for s, e in spans if s <= x <= e) for x in instants}
    peak = max(running.values())
    start = min(x for x in instants if running[x] == peak)
    ends = {e for _, e in spans}
    drops = [x for x in instants if x in ends and running[x] == peak]
    last_start = max(s for s, _ in spans)
    later = [x for x in drops if x >= last_start]
    end = later[0] if later else max((x for x in drops if x < last_start), default=None)
    tokens = 0 if end is None else sum(n for r in requests for t, n in r["events"] if start < t <= end)
    if end is None or end <= start or tokens == 0:
        return none
    out: dict[str, Any] = {"output_tokens_per_s": tokens / ((end - start) / NS), "j_per_output_token": None}
    if rows is not None:
        a, b = start / NS + offset_s, end / NS + offset_s
        series = power_points(rows)
        if all(((t >= a) & (t <= b)).sum() >= 5 for t, _ in series.values()):
            out["j_per_output_token"] = sum(integrate(t, p, a, b) for t, p in series.values()) / tokens
    return out


def slo_of(config: Mapping[str, Any]) -> dict[str, Any] | None:
    targets = {k: config.get(f"slo.{k}") for k in ("ttft_ms", "tpot_ms", "e2e_ms")}
    if all(v is None for v in targets.values()):
        return None
    return {**targets, "percentile": config.get("slo.percentile", 99.0)}


def latency_ms(r: Mapping[str, Any], target: str) -> float | None:
    """The latency a target bounds, ms; None for a failed or unfinished request. One token: TPOT counts as 0."""
    if not r["ok"] or not r["finished"] or r["ttft_s"] is None:
        return None
    value = r[target.replace("_ms", "_s")]
    if value is None and target == "tpot_ms" and r["tokens"] == 1:
        return 0.0
    return None if value is None else value * 1e3


def good(r: Mapping[str, Any], slo: Mapping[str, Any]) -> bool:
    return all(
        (v := latency_ms(r, k)) is not None and v <= slo[k]
        for k in ("ttft_ms", "tpot_ms", "e2e_ms")
        if slo[k] is not None
    )


def slo_checks(per: Sequence[Mapping[str, Any]], slo: Mapping[str, Any]) -> dict[str, Any]:
    """Per target: the nearest-rank percentile over all requests (failed ones slower than any target)."""
    out = {}
    n = len(per)
    for target in ("ttft_ms", "tpot_ms", "e2e_ms"):
        if slo[target] is None:
            continue
        known = [v for r in per if (v := latency_ms(r, target)) is not None]
        ranked = sorted(known) + [math.inf] * (n - len(known))
        # The smallest latency that at least `percentile` % of the n requests are within, in exact arithmetic.
        need = Fraction(slo["percentile"]) * n / 100
        observed = next(v for i, v in enumerate(ranked, start=1) if i >= need)
        observed = None if observed == math.inf else observed
        within = sum(1 for v in known if v <= slo[target])
        out[target] = {
            "target_ms": slo[target],
            "percentile": slo["percentile"],
            "within": within,
            "share_within": within / n,
            "observed_ms": observed,
            "met": observed is not None and observed <= slo[target],
        }
    return out


def failure_reasons(per: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """``{reason: failed requests}``, the most frequent first."""
    counts: dict[str, int] = {}
    for r in per:
        if r["error"] is not None:
            counts[r["error"]] = counts.get(r["error"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def cycle_figures(
    cycle: Mapping[str, Any], setup: Mapping[str, Any], rows: Sequence[Mapping[str, str]] | None
) -> dict[str, Any]:
    """Every per-cycle value a headline figure takes, plus what the summary's other blocks need."""
    reqs = sorted(cycle["requests"], key=lambda r: r["id"])
    per = [request_figures(r) for r in reqs]
    dur = cycle["window"]["duration_s"]
    out_tokens = sum(r["tokens"] for r in per)
    in_tokens = sum(r["input"] for r in per)
    f: dict[str, Any] = {
        "output_tokens_per_s": out_tokens / dur,
        "total_tokens_per_s": (in_tokens + out_tokens) / dur,
        "requests_per_s": sum(r["completed"] for r in per) / dur,
    }
    lat = latencies(per)
    for name in ("ttft_s", "itl_s", "tpot_s", "e2e_s"):  # docs/results.md's order (flags list figures in it)
        for stat in ("mean", "p50", "p90", "p95", "p99"):
            f[f"{name}.{stat}"] = lat[name][stat]
    idle_w = idle_watts(setup)
    e = window_energy(cycle.get("energy_window"), idle_w)
    total, idle = e["total_j"], e["idle_j"]
    dynamic = None if total is None or idle is None else total - idle
    f["energy.total_j"] = total
    f["energy.idle_j"] = idle
    f["energy.dynamic_j"] = dynamic
    f["energy.j_per_output_token"] = None if total is None else total / out_tokens
    f["energy.dynamic_j_per_output_token"] = None if dynamic is None else dynamic / out_tokens
    # docs/energy.md: J/token = idle share (idle W x time per token) + dynamic share.
    f["energy.idle_j_per_output_token"] = None if idle is None else idle / out_tokens
    f["energy.output_tokens_per_j"] = None if not total else out_tokens / total
    f["energy.mean_power_w"] = None if total is None else total / e["duration_s"]
    f["energy.peak_power_w"] = None if rows is None else peak_power(rows)
    f["flops.total"] = flops(setup["model_info"]["model_config"], [(r["input"], r["tokens"]) for r in per])
    f["flops.achieved_flops_per_s"] = f["flops.total"] / dur
    slo = slo_of(setup["config"])
    good_n = None
    if slo is not None:
        good_n = sum(good(r, slo) for r in per)
        f["goodput.share"] = good_n / len(per)
        f["goodput.requests_per_s"] = good_n / dur
        f["goodput.j_per_good_request"] = total / good_n if total is not None and good_n else None
        f["goodput.dynamic_j_per_good_request"] = dynamic / good_n if dynamic is not None and good_n else None
    else:
        f.update(
            dict.fromkeys(
                (
                    "goodput.share",
                    "goodput.requests_per_s",
                    "goodput.j_per_good_request",
                    "goodput.dynamic_j_per_good_request",
                )
            )
        )
    steady = steady_state(reqs, rows, cycle["window"].get("timeline_offset_s", 0.0))
    f["steady_state.output_tokens_per_s"] = steady["output_tokens_per_s"]
    f["steady_state.j_per_output_token"] = steady["j_per_output_token"]
    # Prefill and decode, measured by the prefill-only pass; decode tokens are those after each request's first.
    decode_tokens = sum(max(0, r["tokens"] - 1) for r in per)
    prefill = cycle.get("prefill")
    pf = window_energy(prefill["energy_window"], idle_w) if prefill else None
    split = pf is not None and pf["total_j"] is not None and total is not None
    f["energy.prefill_j_per_input_token"] = (
        pf["total_j"] / sum(r["input_tokens"] for r in prefill["requests"]) if split else None
    )
    decode_j = total - pf["total_j"] if split else None
    decode_dyn = (
        (total - idle) - (pf["total_j"] - pf["idle_j"])
        if split and idle is not None and pf["idle_j"] is not None
        else None
    )
    # docs/results.md: a decode energy below zero (total, or above idle) cannot be a measurement: null, flagged.
    negative_decode = (decode_j is not None and decode_j < 0) or (decode_dyn is not None and decode_dyn < 0)
    nulled = []
    if decode_j is not None and decode_j < 0:
        decode_j = decode_dyn = None
        nulled = ["energy.decode_dynamic_j_per_output_token", "energy.decode_j_per_output_token"]
    elif decode_dyn is not None and decode_dyn < 0:
        decode_dyn = None
        nulled = ["energy.decode_dynamic_j_per_output_token"]
    f["energy.decode_j_per_output_token"] = None if decode_j is None else decode_j / decode_tokens
    f["energy.decode_dynamic_j_per_output_token"] = None if decode_dyn is None else decode_dyn / decode_tokens
    # Per-request energy (an estimate by token share): prefill J by input tokens + decode J by decode tokens.
    if split and decode_j is not None and decode_tokens:
        per_j = [
            pf["total_j"] * r["input"] / in_tokens + (total - pf["total_j"]) * max(0, r["tokens"] - 1) / decode_tokens
            for r in per
        ]
    elif total is not None:
        per_j = [total * r["tokens"] / out_tokens for r in per]
    else:
        per_j = []
    f.update(roofline(reqs, setup))
    verdicts = [contains(r) for r in reqs] if setup["config"].get("quality.scorer") == "contains" else None
    if verdicts is not None:
        assert [r["correct"] for r in reqs] == verdicts  # each row's own verdict, as docs/quality.md defines it
        right = sum(verdicts)
        f["quality.accuracy"] = right / len(verdicts)
        f["quality.correct_answers"] = right
        f["quality.correct_answers_per_s"] = right / dur
        f["energy.j_per_correct_answer"] = total / right if total is not None and right else None
        f["energy.dynamic_j_per_correct_answer"] = dynamic / right if dynamic is not None and right else None
    else:
        f.update(dict.fromkeys(n for n in RECOMPUTED_FIGURES if "correct" in n or n.startswith("quality.")))
    assert set(f) == set(RECOMPUTED_FIGURES), f"RECOMPUTED_FIGURES is out of date: {set(f) ^ set(RECOMPUTED_FIGURES)}"
    passes = cycle.get("passes", 1)
    size = len(reqs) // passes
    throttling = {"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"}
    throttled = any(set((row.get("throttle_reasons") or "").split("|")) & throttling for row in rows or ())
    # docs/energy.md: per GPU the share of its samples with a throttle reason, and its first sample's temperature.
    by_gpu: dict[int, list[Mapping[str, str]]] = {}
    for row in rows or ():
        by_gpu.setdefault(int(row["device"]), []).append(row)
    throttled_share = {
        d: sum(bool(set((r.get("throttle_reasons") or "").split("|")) & throttling) for r in rs) / len(rs)
        for d, rs in by_gpu.items()
    }
    start_temp = {
        d: float(min(rs, key=lambda r: float(r["t_s"]))["temperature_c"])
        for d, rs in by_gpu.items()
        if min(rs, key=lambda r: float(r["t_s"])).get("temperature_c") not in (None, "")
    }
    window = cycle.get("energy_window") or {}
    pairs = [d for d in window.get("devices", ()) if d["method"] == "counter" and d.get("integrated_j") is not None]
    counter_j = math.fsum(d["energy_j"] for d in pairs)
    rel_diff = (math.fsum(d["integrated_j"] for d in pairs) - counter_j) / counter_j if pairs else None
    periods = [d["update_period_s"] for d in pairs if d.get("update_period_s")]
    # Edges aligned to the counter's updates carry their own, smaller time bound (edge_lag_s).
    lags = [d.get("edge_lag_s") or d["update_period_s"] for d in pairs if d.get("update_period_s")]
    steps = [d.get("resolution_j") for d in window.get("devices", ())]
    return {
        "rel_diff": rel_diff,
        "update_periods": window["duration_s"] / max(periods) if periods else None,
        "resolution_term": math.fsum(steps) / total if total and steps and None not in steps else None,
        "period_term": max(lags) / window["duration_s"] if lags and len(lags) == len(steps) else None,
        "throttled_share": throttled_share,
        "start_temp": start_temp,
        "host": cycle.get("host"),
        "idle_over_dynamic": abs(idle / dynamic) if idle is not None and dynamic else None,
        "figures": f,
        "per": per,
        "per_request_j": per_j,
        "requests": len(per),
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "failed": sum(not r["ok"] for r in per),
        "passes": passes,
        # The cycle's output digest is its first pass's (docs/results.md, Digests; metrics.passes).
        "digest": digest([r["token_ids"] for r in reqs[:size]])
        if all(r["token_ids"] is not None for r in reqs[:size])
        else None,
        "dynamic": dynamic,
        "negative_decode": negative_decode,
        "nulled": nulled,
        "method": e.get("method"),
        "slo_met": None if slo is None else all(c["met"] for c in slo_checks(per, slo).values()),
        "throttled": throttled,
    }


def _norm(text: str) -> str:
    """docs/quality.md's default normalisation: whitespace collapsed, end punctuation stripped, case folded."""
    import string

    return " ".join(text.split()).strip(string.punctuation + "“”‘’«»。，！？ \t\n").casefold()


def contains(row: Mapping[str, Any]) -> bool:
    """Scorer ``contains``: the normalised reference appears in the normalised output."""
    return _norm(row["reference"]) in _norm(row["output_text"])


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval at 95% (z from the normal quantile, via the error function's inverse)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def quality_block(cycles: Sequence[Mapping[str, Any]], prompts: int, config: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's quality: a prompt is right when most of its requests (every kept cycle, every pass) are."""
    scorer = config.get("quality.scorer")
    if scorer is None:
        return {"scorer": None}
    if not cycles:  # every cycle spoilt and left out: nothing to score (the reason is a label)
        return {"scorer": scorer}
    right, seen = [0] * prompts, [0] * prompts
    for c in cycles:
        for r in c["requests"]:
            right[r["id"] % prompts] += contains(r)
            seen[r["id"] % prompts] += 1
    outcomes = [2 * k > n for k, n in zip(right, seen, strict=True)]
    low, high = wilson(sum(outcomes), prompts)
    return {
        "scorer": scorer,
        "prompts": prompts,
        "prompts_scored": prompts,
        "prompts_correct": sum(outcomes),
        "accuracy": sum(outcomes) / prompts,
        "wilson95_low": low,
        "wilson95_high": high,
        "per_prompt": outcomes,
    }


# --- the summary ----------------------------------------------------------------------------------------


def recompute(exp: Path) -> dict[str, Any]:
    """The expected summary, from the raw files of one experiment directory."""
    setup, cycles, timelines = read_experiment(exp)
    config = setup["config"]
    every_cycle = [cycle_figures(c, setup, timelines.get(c["cycle"])) for c in cycles]
    spoilt = [bool(why) for why in spoilt_cycles(config, every_cycle)]
    mode = config["measurement.validity"]
    replaced = [i for i, bad in enumerate(spoilt) if bad][: config["measurement.validity_retries"]]
    keep = [i for i in range(len(cycles)) if mode == "warn" or not spoilt[i]]
    per_cycle = [every_cycle[i] for i in keep]
    names = list(per_cycle[0]["figures"])
    figures = {
        name: across_cycles([pc["figures"][name] for pc in per_cycle], name in MAY_BE_NEGATIVE) for name in names
    }
    every = [r for pc in per_cycle for r in pc["per"]]
    first = sorted(cycles[0]["requests"], key=lambda r: r["id"])[
        : len(cycles[0]["requests"]) // cycles[0].get("passes", 1)
    ]
    prompt_tokens = [r["input_tokens"] for r in first]
    idle_w = idle_watts(setup)
    slo = slo_of(config)
    slo_block: dict[str, Any] = {"slo": slo}
    if slo is not None:
        pooled_good = sum(good(r, slo) for r in every)
        checks = slo_checks(every, slo)
        slo_block.update(
            cycles=len(per_cycle),
            cycles_met=sum(pc["slo_met"] is True for pc in per_cycle),
            pooled_good_requests=pooled_good,
            pooled_requests=len(every),
            pooled_share=pooled_good / len(every),
            pooled_checks=checks,
            pooled_met=all(c["met"] for c in checks.values()),
        )
    precision = None
    target = config.get("measurement.target_rel_ci")
    if target is not None:
        asked = config.get("measurement.target_figures") or ("energy.j_per_output_token", "output_tokens_per_s")
        applies = tuple(k for k in ("energy.j_per_output_token", "output_tokens_per_s") if k in asked)
        assert mode == "warn", "this oracle replays the stop rule of measurement.validity = 'warn' only"

        def rel(n: int) -> dict[str, float | None]:
            return {k: across_cycles([pc["figures"][k] for pc in per_cycle[:n]])["rel_ci95"] for k in applies}

        def met(n: int) -> bool:
            return all(v is not None and v <= target for v in rel(n).values())

        # docs/results.md: the limit is max_cycles, by default max(20, 10 x cycles); the run stops at the first
        # count (>= cycles, >= 2) where the target holds, else at the limit.
        first = config["measurement.cycles"]
        limit = config.get("measurement.max_cycles") or max(20, 10 * first)
        stopped = next((n for n in range(1, len(cycles) + 1) if n >= limit or (n >= max(2, first) and met(n))), None)
        met_at_stop = stopped is not None and stopped >= max(2, first) and met(stopped)
        rels = rel(len(cycles))
        precision = {
            "target_rel_ci": target,
            "max_cycles": limit,
            "cycles": len(cycles),
            "met": met(len(cycles)),
            "met_after_cycles": stopped if met_at_stop else None,
            "stopped_after_cycles": stopped,
            "applies_to": list(applies),
            "rel_ci95": rels,
            "met_by": [k for k in applies if rels[k] is not None and rels[k] <= target],
        }
    digests = [pc["digest"] for pc in every_cycle]
    # Lists of cycle numbers name every cycle, spoilt or not; the figures are the kept cycles'.
    pairs = list(zip(cycles, every_cycle, strict=True))
    negative_dynamic = [c["cycle"] for c, pc in pairs if pc["dynamic"] is not None and pc["dynamic"] < 0]
    negative_decode = [c["cycle"] for c, pc in pairs if pc["negative_decode"]]
    method_cycles: dict[str, int] = {}
    for pc in every_cycle:
        if pc["method"]:
            method_cycles[pc["method"]] = method_cycles.get(pc["method"], 0) + 1
    numbers = [c["cycle"] for c in cycles]
    diffs = [
        (c["cycle"], pc["rel_diff"]) for c, pc in zip(cycles, every_cycle, strict=True) if pc["rel_diff"] is not None
    ]
    largest = max(diffs, key=lambda cd: abs(cd[1])) if diffs else (None, None)
    threshold = config["measurement.cross_check_threshold"]
    expected = {
        "status": "ok",
        "cycles": len(cycles),
        "cycles_included": len(per_cycle),
        "validity": {
            "mode": mode,
            "spoilt_cycles": [n for n, bad in zip(numbers, spoilt, strict=True) if bad],
            "excluded_cycles": [n for i, n in enumerate(numbers) if i not in keep],
            "replaced_cycles": [numbers[i] for i in replaced] if mode == "retry" else [],
            "included": len(per_cycle),
            # Each spoilt cycle's reasons are text (labels); none spoilt: an empty table.
            **({} if any(spoilt) else {"reasons": {}}),
        },
        "cross_check": {
            "threshold": threshold,
            "largest_rel_diff": largest[1],
            "largest_in_cycle": largest[0],
            "exceeding_cycles": [n for n, d in diffs if abs(d) > threshold],
            "short_window_cycles": [
                c["cycle"]
                for c, pc in zip(cycles, every_cycle, strict=True)
                if pc["update_periods"] is not None and pc["update_periods"] < 3
            ],
        },
        "uncertainty": uncertainty(setup, per_cycle, figures),
        "host_load": [c.get("host") for c in cycles],
        "figures": figures,
        "latency_pooled": latencies(every),
        "slo": slo_block,
        # Like every figure, the outcomes are the kept cycles' (a spoilt cycle left out is left out here too).
        "quality": quality_block([cycles[i] for i in keep], len(prompt_tokens), config),
        "failed_requests": sum(pc["failed"] for pc in per_cycle),
        "failure_reasons": failure_reasons(every),
        "workload": {
            k: [pc[v] for pc in per_cycle]
            for k, v in (
                ("requests", "requests"),
                ("input_tokens", "input_tokens"),
                ("output_tokens", "output_tokens"),
                ("failed_requests", "failed"),
                ("passes", "passes"),
            )
        },
        "precision": precision,
        "per_request_energy": {"estimate": True, "j": dist([j for pc in per_cycle for j in pc["per_request_j"]])},
        "thermal": {"throttled_cycles": [c["cycle"] for c, pc in pairs if pc["throttled"]]},
        "output_digest": digests[0],
        "outputs_identical_across_cycles": None if None in digests else len(set(digests)) == 1,
        "flags": {
            "negative_dynamic_energy_cycles": negative_dynamic,
            "negative_dynamic_energy": {
                "cycles": negative_dynamic,
                "count": len(negative_dynamic),
                "figures": ["energy.dynamic_j", "energy.dynamic_j_per_output_token"] if negative_dynamic else [],
            },
            "negative_decode_energy": {
                "cycles": negative_decode,
                "count": len(negative_decode),
                "figures": sorted({name for pc in every_cycle for name in pc["nulled"]}),
            },
            "ci95_low_impossible": [n for n, fig in figures.items() if fig.get("ci95_low_impossible")],
        },
        "methods": {"energy_cycles": method_cycles},
        "idle_power_w": None if idle_w is None else math.fsum(idle_w.values()),
        "hardware": hardware_block(config),
        **{block: setup[block] for block in COPIED_FROM_SETUP},
    }
    # The prompt set's size and token statistics do follow from the raw requests (the first pass of a cycle).
    expected["prompts"] = {
        **setup["prompts"],
        "count": len(prompt_tokens),
        "stats": dist(prompt_tokens, ("n", "mean", "std", "min", "p50", "p90", "p99", "max")),
    }
    return expected


def spoilt_cycles(config: Mapping[str, Any], per_cycle: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """docs/energy.md, gating: per cycle in run order, what spoilt it (throttled, unsettled, busy host, outlier)."""
    out, previous, clean = [], {}, []
    for pc in per_cycle:
        why = [
            f"throttled {d}" for d, v in pc["throttled_share"].items() if v > config["measurement.max_throttle_share"]
        ]
        step = config["measurement.max_temperature_step_c"]
        why += [f"unsettled {d}" for d, t in pc["start_temp"].items() if d in previous and abs(t - previous[d]) > step]
        previous.update(pc["start_temp"])
        host = pc["host"] or {}
        for key, limit in (("others_share", "max_host_cpu_share"), ("load_per_cpu", "max_load_per_cpu")):
            if host.get(key) is not None and host[key] > config[f"measurement.{limit}"]:
                why.append(f"busy {key}")
        if host.get("steal_share") is not None and host["steal_share"] > config["measurement.max_steal_share"]:
            why.append("steal")
        tps = pc["figures"]["output_tokens_per_s"]
        if len(clean) >= 2:
            median = float(np.median(clean))
            if abs(tps - median) / median > config["measurement.max_throughput_deviation"]:
                why.append("outlier")
        if not why:
            clean.append(tps)
        out.append(why)
    return out


def uncertainty(
    setup: Mapping[str, Any], per_cycle: Sequence[Mapping[str, Any]], figures: Mapping[str, Any]
) -> dict[str, Any]:
    """docs/energy.md: each energy figure's budget, the sum of its relative bounds (the largest over cycles)."""

    def largest(key: str) -> float | None:
        values = [pc[key] for pc in per_cycle]
        return None if None in values else max(abs(v) for v in values)

    spread = ((setup.get("idle") or {}).get("power_spread") or {}).get("rel_spread")
    ratios = [pc["idle_over_dynamic"] for pc in per_cycle]
    idle_terms = {
        "none": 0.0,
        "idle": spread,
        "dynamic": None if spread is None or None in ratios else spread * max(ratios),
    }
    kinds = {
        "energy.total_j": "none",
        "energy.j_per_output_token": "none",
        "energy.output_tokens_per_j": "none",
        "energy.mean_power_w": "none",
        "energy.idle_j": "idle",
        "energy.idle_j_per_output_token": "idle",
        "energy.dynamic_j": "dynamic",
        "energy.dynamic_j_per_output_token": "dynamic",
    }
    out: dict[str, Any] = {"figures": {}}
    for name, kind in kinds.items():
        if figures[name]["mean"] is None:
            continue
        terms = {
            "resolution": largest("resolution_term"),
            "update_period": largest("period_term"),
            "cross_check": largest("rel_diff"),
            "idle_baseline": idle_terms[kind],
            "run_to_run": figures[name]["rel_ci95"],
        }
        out["figures"][name] = {
            **terms,
            "combined": math.fsum(v for v in terms.values() if v is not None),
            "not_covered": [k for k, v in terms.items() if v is None],
        }
    return out


# --- comparing ------------------------------------------------------------------------------------------


def flatten(doc: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every leaf of a JSON document by its path (an empty object or list is a leaf)."""
    if isinstance(doc, dict) and doc:
        return {k: v for key, value in doc.items() for k, v in flatten(value, (*path, key)).items()}
    if isinstance(doc, list) and doc:
        return {k: v for i, value in enumerate(doc) for k, v in flatten(value, (*path, i)).items()}
    return {path: doc}


def show(path: Sequence[Any]) -> str:
    """``figures/e2e_s.mean/values[1]``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f"/{p}" if out else str(p))
    return out


def is_label(path: Sequence[Any], value: Any) -> bool:
    """Text (ids, reasons, methods, warnings, digests' kinds), or an empty/null label: not a figure."""
    if isinstance(value, str):
        return True
    keys = [p for p in path if isinstance(p, str)]
    label = any(
        k in ("methods", "warnings", "notes") or k.endswith(("reason", "note", "method", "definition", "description"))
        for k in keys
    )
    return label and value in (None, [], {})


def same(got: Any, want: Any, abs_tol: float = ABS_TOL) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return type(got) is type(want) and got == want
    if isinstance(got, int) and isinstance(want, int):
        return got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        return math.isclose(got, want, rel_tol=REL_TOL, abs_tol=abs_tol)
    return bool(got == want)


def compare(summary: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """One line per figure of ``summary`` that the recomputation disagrees with, misses, or lacks."""
    got, want = flatten(summary), flatten(expected)
    problems = []
    for path, value in got.items():
        if path in want:
            # A spread of values equal but for rounding is rounding itself: ~1e-16 of the mean, in either computation.
            mean = got.get((*path[:-1], "mean")) if path[-1] == "std" else None
            tol = max(ABS_TOL, 1e-13 * abs(mean)) if isinstance(mean, (int, float)) else ABS_TOL
            if not same(value, want[path], tol):
                problems.append(f"{show(path)}: lem {value!r}, recomputed {want[path]!r}")
        elif path[0] in NOT_RECOMPUTED or is_label(path, value):
            continue
        else:
            problems.append(f"{show(path)} = {value!r}: not recomputed here (add it, or list it in NOT_RECOMPUTED)")
    problems += [f"{show(p)}: recomputed but absent from summary.json" for p in want.keys() - got.keys()]
    return problems


def check(exp: Path) -> list[str]:
    return compare(json.loads((exp / "summary.json").read_text()), recompute(exp))


# --- the tests ------------------------------------------------------------------------------------------


def test_t_quantiles_agree_with_the_nist_table() -> None:
    """Our t quantile (A&S 26.7.3/4, bisected) rounds to the published table, and has the closed forms of df 1, 2."""
    assert [round(t975(df), 3) for df in range(1, 11)] == list(NIST_T975)
    assert math.isclose(t975(1), math.tan(0.475 * math.pi), rel_tol=1e-12)
    assert math.isclose(t975(2), 0.95 / math.sqrt(2 * 0.975 * 0.025), rel_tol=1e-12)


@pytest.mark.parametrize("variant", ["base", "precision"])
def test_every_summary_figure_is_recomputed_from_the_raw_files(runs: dict[str, Path], variant: str) -> None:
    exp = runs[variant]
    summary = json.loads((exp / "summary.json").read_text())
    # The runs exercise what they are meant to: energy from the (fake) counter, an idle baseline, a timeline,
    # two devices, an SLO; the precision variant its prefill pass and several passes per window.
    assert summary["methods"]["energy_cycles"] == {"counter": summary["cycles"]}
    assert summary["figures"]["energy.dynamic_j"]["n"] == summary["cycles"]
    assert summary["figures"]["energy.peak_power_w"]["n"] == summary["cycles"]
    assert summary["figures"]["goodput.share"]["n"] == summary["cycles"]
    mbu = summary["figures"]["efficiency.memory_bandwidth_utilization"]
    if variant == "precision":
        # Each cycle has its decode figure, or null because a busy host made its prefill pass cost more than
        # the cycle (the split is then impossible and says so): never a silent gap.
        splits = [json.loads(c.read_text())["energy"]["prefill_decode"] for c in sorted(exp.glob("cycle-*.json"))]
        missing = [s for s in splits if s["decode_dynamic_j_per_output_token"] is None]
        assert all("negative decode energy" in s["reason"] for s in missing), missing
        decode = summary["figures"]["energy.decode_dynamic_j_per_output_token"]
        assert decode["n"] == summary["cycles"] - len(missing) > 0
        assert max(summary["workload"]["passes"]) > 1 and summary["precision"] is not None
        # No [hardware] and no accelerator: the utilisation is null with the reason, never a guess.
        assert mbu["n"] == 0 and "CPU" in mbu["reason"] and "[hardware]" in mbu["reason"]
    else:  # [hardware] gives the peaks: the figures exist on the CPU
        assert mbu["n"] == summary["cycles"] and summary["figures"]["efficiency.flops_utilization"]["n"] > 0
    problems = check(exp)
    assert not problems, f"{len(problems)} figure(s) of {exp.name}/summary.json disagree:\n" + "\n".join(problems)


def _copy(exp: Path, tmp_path: Path) -> Path:
    run = tmp_path / exp.parent.name
    shutil.copytree(exp.parent, run)
    return run / exp.name


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_a_perturbed_raw_file_is_detected_and_lem_agrees_once_it_reaggregates(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """The recomputation can fail: one token timestamp moved 5 ms later, one counter reading 1 J higher."""
    exp = _copy(runs["base"], tmp_path)

    def later(doc: dict[str, Any]) -> None:
        doc["requests"][3]["events"][-1][0] += 5_000_000

    def more(doc: dict[str, Any]) -> None:
        doc["energy_window"]["devices"][1]["energy_j"] += 1.0

    _edit(exp / "cycle-002.json", later)
    _edit(exp / "cycle-003.json", more)
    problems = check(exp)
    named = {p.split(":")[0] for p in problems}
    for figure in (
        "figures/e2e_s.mean/values[1]",
        "latency_pooled/e2e_s/mean",
        "figures/energy.total_j/values[2]",
        "figures/energy.j_per_output_token/mean",
    ):
        assert figure in named, f"{figure} not detected; found:\n" + "\n".join(problems)
    assert "figures/energy.total_j/values[1]" not in named  # an untouched cycle's figure is not blamed

    # lem recomputes its summary from the edited raw files: then the two agree again.
    reaggregate(exp)
    problems = check(exp)
    assert not problems, "\n".join(problems)


def reaggregate(exp: Path) -> None:
    """``lem results aggregate``: lem recomputes the summary from the (edited) raw files."""
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "results", "aggregate", str(exp)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_quality_counts_only_the_cycles_validity_gating_kept(runs: dict[str, Path], tmp_path: Path) -> None:
    """A spoilt cycle left out of the figures is left out of the quality block too (its outcomes, its Wilson).

    The scored run is made to have spoilt cycles: ``measurement.validity = "invalidate"`` in its stored config
    (without the precision target, whose stop rule this oracle replays under ``warn`` only), a calm host in the
    first cycle and a busy one in every other, and in those cycles the unanswerable prompt answered right.
    Counted over every cycle that prompt would be right in most of its requests; over the kept cycle it is wrong.
    """
    exp = _copy(runs["precision"], tmp_path)

    def invalidate(doc: dict[str, Any]) -> None:
        doc["config"].update({"measurement.validity": "invalidate", "measurement.target_rel_ci": None})

    def spoil(doc: dict[str, Any]) -> None:
        doc["host"] = {**(doc.get("host") or {}), "others_share": 0.99}
        for r in doc["requests"]:
            if r["id"] % len(QUALITY_PROMPTS) == 1:
                r["output_text"], r["correct"] = r["reference"], True

    def calm(doc: dict[str, Any]) -> None:  # the first cycle kept, however busy this machine is
        host = doc.get("host") or {}
        doc["host"] = {**host, **{k: 0.0 for k in ("others_share", "load_per_cpu", "steal_share") if k in host}}

    def asked(path: Path) -> int:  # requests of prompt 1 in a cycle (passes vary with the machine's load)
        return sum(r["id"] % len(QUALITY_PROMPTS) == 1 for r in json.loads(path.read_text())["requests"])

    _edit(exp / "setup.json", invalidate)
    paths = sorted(exp.glob("cycle-*.json"))
    # The kept cycle is the one that asked prompt 1 least, so the spoilt ones outnumber it whatever the passes.
    kept = min(paths, key=asked)
    _edit(kept, calm)
    later = [p for p in paths if p != kept]
    assert later, "the scored run has more than one cycle"
    for path in later:
        _edit(path, spoil)
    reaggregate(exp)
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["cycles_included"] == 1 and summary["validity"]["excluded_cycles"] == [
        int(p.stem.split("-")[1]) for p in later
    ]
    assert summary["figures"]["quality.accuracy"]["n"] == 1
    assert summary["quality"]["per_prompt"][1] is False  # every cycle's requests would have made it True
    everything = quality_block(
        [json.loads(p.read_text()) for p in sorted(exp.glob("cycle-*.json"))], 4, {"quality.scorer": "contains"}
    )
    assert everything["per_prompt"][1] is True and everything["accuracy"] != summary["quality"]["accuracy"]
    problems = check(exp)
    assert not problems, "\n".join(problems)


def test_a_figure_lem_adds_without_a_recomputation_fails_by_name(runs: dict[str, Path]) -> None:
    exp = runs["base"]
    summary = json.loads((exp / "summary.json").read_text())
    expected = recompute(exp)
    summary["figures"]["energy.new_figure_j"] = dict(summary["figures"]["energy.total_j"])
    summary["latency_pooled"]["ttft_s"]["p999"] = 1.0
    del summary["workload"]["passes"]
    problems = compare(summary, expected)
    assert any(p.startswith("figures/energy.new_figure_j/mean = ") and "not recomputed" in p for p in problems)
    assert any(p.startswith("latency_pooled/ttft_s/p999 = 1.0: not recomputed") for p in problems)
    assert "workload/passes[0]: recomputed but absent from summary.json" in problems


def test_every_registry_figure_has_a_recomputation_here() -> None:
    """A figure added to lem's registry without a recomputation in this oracle fails here, by name.

    The only import of lem in this module: the registry is what is checked, not a tool of the recomputation.
    """
    from lem.figures.registry import FIGURES

    missing = [f.name for f in FIGURES if f.name not in RECOMPUTED_FIGURES]
    assert not missing, f"registry figures without a recomputation in tests/test_recompute.py: {missing}"


# --- bytes per decode step, for other architectures ------------------------------------------------------
# lem counts them from the architecture's shapes (lem.figures.flops); here they are counted from the tensors
# of real models: the 2-D weight matrices of the decoder layers plus the output projection (embedding lookups,
# norms and biases are left out by definition), or the bytes of a GGUF file's tensors.


def _layer_matrices(model: Any, layers: Any) -> int:
    return sum(p.numel() for p in layers.parameters() if p.dim() == 2) + model.get_output_embeddings().weight.numel()


def _lem_step_bytes(model_config: Mapping[str, Any], info: Mapping[str, Any], **config: Any) -> tuple[float, float]:
    from lem.config import ExperimentConfig
    from lem.figures.hardware import step_bytes

    got = step_bytes({"model_config": model_config, "info": info}, ExperimentConfig(model="m", **config))
    assert got is not None
    return got


def test_step_bytes_of_a_dense_gqa_llama_8b_shape_match_its_tensors() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lem.architectures import config_dict

    cfg = config_dict("llama-3.1-8b")
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    weights, kv = _lem_step_bytes(model.config.to_dict(), {}, precision="bfloat16")
    assert weights == 2 * _layer_matrices(model, model.model.layers)
    assert kv == 2 * 32 * 8 * 128 * 2  # K and V, 32 layers, 8 KV heads of 128, 2 bytes
    assert 14.5e9 < weights < 15.1e9  # 8B parameters less the 1 GB embedding table that a step does not read


def test_step_bytes_of_a_tied_gpt2_match_its_tensors() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lem.architectures import config_dict

    cfg = {**config_dict("tiny-gpt2"), "tie_word_embeddings": True}
    model = GPT2LMHeadModel(GPT2Config(**cfg))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    weights, kv = _lem_step_bytes(model.config.to_dict(), {}, precision="float32")
    assert weights == 4 * _layer_matrices(model, model.transformer.h)
    assert kv == 2 * 2 * 128 * 4


def test_step_bytes_of_a_quantized_gguf_match_its_file(tmp_path: Path) -> None:
    pytest.importorskip("lem_backend_llamacpp")
    import gguf

    from lem.architectures import config_dict
    from lem.configfile.loading import config_from_dict
    from lem_backend_llamacpp import convert

    table = {"quantization": "q8_0", "cache_dir": str(tmp_path)}
    config = config_from_dict({"model": "random:tiny-llama", "backend": "llamacpp", "llamacpp": table})
    path = convert.gguf_for(config).path
    elements, embd = convert.tensor_elements(path)
    info = {"tensor_elements": elements, "token_embd": embd, "kv_cache_types": {"k": "F16", "v": "F16"}}
    weights, kv = _lem_step_bytes(config_dict("tiny-llama"), info)
    tensors = gguf.GGUFReader(str(path)).tensors
    names = {t.name for t in tensors}
    assert "output.weight" in names  # untied: the token embedding is not read whole per step
    assert weights == sum(int(t.n_bytes) for t in tensors if t.name != "token_embd.weight")
    assert {t.tensor_type.name for t in tensors if t.name.endswith("attn_q.weight")} == {"Q8_0"}
    assert kv == 2 * 2 * 2 * 32 * 2  # f16 cache: 2 layers, 2 KV heads of 32
