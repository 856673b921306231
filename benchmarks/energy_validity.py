"""Energy you can defend, on a GPU: the counter cross-check, a J/token target, gating (docs/energy.md).

Two real ``lem run``s on the 8B shape (``random:llama-3.1-8b``, random bf16 weights, nothing downloaded),
windows of at least ``--window`` s (10: at 5 s the 100 ms power samples and the counter's ~100 ms steps were
a few percent of a window) after ``--warmup`` warm-up requests:

1. ``pytorch-optimized``, batch 8, ``target_rel_ci = 0.01`` on J/output token only
   (``measurement.target_figures``): per cycle the counter J, the power timeline integrated and their
   difference, throttling and temperature; whether J/token's relative CI reached ≤1% and the wall time
   from ``lem run``'s start;
2. eager (no preset), batch 8, ``validity = "invalidate"`` with ``max_throttle_share`` raised to
   ``--eager-throttle-share``: J/token's CV over every cycle against its CV over the cycles gating kept.

One command, < 10 minutes on an H100 or H200, compact output::

    python benchmarks/energy_validity.py                   # on the GPU machine
    python benchmarks/energy_validity.py --model random:tiny-llama --device cpu --meter none   # checks it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOML = """
model = "{model}"
backend = "pytorch"
precision = "bfloat16"
load_format = "random"
{preset}
[dataset]
num_prompts = 32
input_length = 256
[generation]
max_output_tokens = 128
ignore_eos = true
[batching]
batch_size = 8
[measurement]
cycles = {cycles}
warmup_requests = {warmup}
idle_seconds = 5
energy_meter = "{meter}"
min_window_s = {window}
{extra}
[pytorch]
device = "{device}"
"""


def run(root: Path, name: str, body: str, limit_s: float) -> tuple[Path | None, float, str]:
    (root / f"{name}.toml").write_text(body)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "lem", "run", f"{name}.toml", "--out", name, "--quiet", "--no-report"]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=limit_s)
        tail = (proc.stdout + proc.stderr)[-1500:] if proc.returncode else ""
    except subprocess.TimeoutExpired:
        tail = f"timed out after {limit_s:.0f} s"
    found = list((root / name).glob("*/*/summary.json"))
    return (found[0].parent if found else None), time.monotonic() - t0, tail


def cycles(exp: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in exp.glob("cycle-*.json")), key=lambda c: c["cycle"])


def cv(values: list[float]) -> str:
    return f"{statistics.stdev(values) / statistics.mean(values):.2%}" if len(values) > 1 else "n/a"


def per_cycle(exp: Path) -> None:
    print(
        "cyc  dur_s  counter_J  integr_J   diff    short  lag_ms  throttled  T_start-T_end  host_others  J/tok   spoilt"
    )
    summary = json.loads((exp / "summary.json").read_text())
    spoilt = set((summary.get("validity") or {}).get("spoilt_cycles", []))
    for c in cycles(exp):
        e, x = c["energy"], c["energy"]["cross_check"]
        devs = e["thermal"]["devices"]
        thr = ",".join(f"{d['throttled_share']:.0%}" for d in devs) or "-"
        temps = ",".join(f"{d['start']['temperature_c']}-{d['end']['temperature_c']}" for d in devs) or "-"
        host = (c.get("host") or {}).get("others_share")
        fmt = lambda v, s: "-" if v is None else format(v, s)  # noqa: E731
        lags = [d.get("edge_lag_s") for d in (c.get("energy_window") or {}).get("devices", [])]
        lag = ",".join("-" if v is None else f"{v * 1000:.0f}" for v in lags) or "-"
        print(
            f"{c['cycle']:>3} {fmt(e['duration_s'], '6.2f')} {fmt(x['counter_j'], '10.1f')}"
            f" {fmt(x['integrated_j'], '9.1f')}"
            f" {fmt(x['rel_diff'], '+7.2%')} {x['short_window']!s:>6} {lag:>7} {thr:>10} {temps:>14}"
            f" {fmt(host, '11.1%')}"
            f" {fmt(e['j_per_output_token'], '7.4f')} {'yes' if c['cycle'] in spoilt else ''}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:llama-3.1-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--meter", default="nvml")
    p.add_argument("--window", type=float, default=10.0, help="measurement.min_window_s (s)")
    p.add_argument("--warmup", type=int, default=64, help="measurement.warmup_requests")
    p.add_argument("--max-cycles", type=int, default=16, help="the J/token target's cycle limit")
    p.add_argument("--eager-throttle-share", type=float, default=0.3, help="eager run's max_throttle_share")
    p.add_argument("--limits", type=float, nargs=2, default=[360.0, 160.0], help="seconds for each lem run")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lem-energy-validity-"))
    common = {
        "model": args.model,
        "device": args.device,
        "meter": args.meter,
        "window": args.window,
        "warmup": args.warmup,
    }
    target = f'target_rel_ci = 0.01\nmax_cycles = {args.max_cycles}\ntarget_figures = ["energy.j_per_output_token"]'
    body = TOML.format(preset='preset = "pytorch-optimized"', cycles=3, extra=target, **common)
    exp, wall, tail = run(root, "optimized", body, args.limits[0])
    print(f"== pytorch-optimized, batch 8, target ±1% on J/token: {wall:.0f} s from lem run's start")
    if exp is None:
        print(tail)
    else:
        per_cycle(exp)
        s = json.loads((exp / "summary.json").read_text())
        prec, cross = s.get("precision") or {}, s["cross_check"]
        rel = (prec.get("rel_ci95") or {}).get("energy.j_per_output_token")
        print(
            f"J/tok rel CI {rel if rel is None else f'{rel:.2%}'}; met {prec.get('met')} after "
            f"{prec.get('stopped_after_cycles')} cycles; cross-check largest {cross['largest_rel_diff']}"
            f" (> {cross['threshold']:.0%} in {cross['exceeding_cycles']})"
        )
        budget = (s["uncertainty"].get("figures") or {}).get("energy.j_per_output_token")
        print(f"J/tok budget: {json.dumps(budget)}")
    # This H100 reported sw_power_cap in 8-30% of a batch-8 decode's samples at ~57% of its power limit
    # (docs/energy.md): there power capping is the board's normal state under load, and the default share
    # (5%) left out every cycle. The eager run raises it so the other gates (host, outliers) show.
    gate = f'validity = "invalidate"\nmax_throttle_share = {args.eager_throttle_share}'
    body = TOML.format(preset="", cycles=5, extra=gate, **common)
    exp, wall, tail = run(root, "eager", body, args.limits[1])
    print(f"== eager, batch 8, validity = invalidate, max_throttle_share {args.eager_throttle_share}: {wall:.0f} s")
    if exp is None:
        print(tail)
        return 1
    per_cycle(exp)
    s = json.loads((exp / "summary.json").read_text())
    every = [c["energy"]["j_per_output_token"] for c in cycles(exp)]
    kept = [v for v in s["figures"]["energy.j_per_output_token"]["values"] if v is not None]
    print(f"J/tok CV every cycle {cv([v for v in every if v is not None])}; kept by gating {cv(kept)} ({len(kept)})")
    for n, why in (s["validity"].get("reasons") or {}).items():
        print(f"  cycle {n}: {'; '.join(why)[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
