"""How many cycles does a precision target need, and what does the prefill-only pass cost? (issue #13)

For each mode (eager PyTorch, and the ``pytorch-optimized`` preset) one lem
experiment runs the issue's workload: a random Llama-3.1-8B shape in bf16,
batch 8, 64 requests of ``--input`` tokens in and ``--output`` out (fixed
length, greedy), every cycle's window at least ``--min-window-s`` long,
``measurement.target_rel_ci = --target`` with at most ``--max-cycles``
cycles, and the prefill-only pass on. Per mode it prints:

- the cycles run, whether the target was met and after how many cycles;
- the CV over cycles (sample std / mean) and the achieved relative 95% CI of
  J/output token (total and above idle) and of output tok/s;
- the prefill-only pass's overhead: its share of the measured run time
  (prefill windows / (cycle windows + prefill windows)), beside the share of
  the cycles' own time spent in prefill steps (from the timeline attribution,
  an estimate; needs a meter with a timeline). The goal is an overhead no
  larger than that share;
- prefill J per input token and decode J per output token (measured).

    python benchmarks/precision.py                          # on the GPU machine: both modes
    python benchmarks/precision.py --modes eager --max-cycles 12
    python benchmarks/precision.py --model random:tiny-llama --device cpu --precision float32 \\
        --num-prompts 8 --batch-size 4 --input 16 --output 8 --min-window-s 0.5 --max-cycles 4 --idle-s 0  # smoke

Results stay under ``--out`` (one lem run per mode); ``--json`` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def experiment_toml(args: argparse.Namespace, mode: str) -> str:
    """The experiment file of one mode (``eager`` or a preset name)."""
    import tomli_w

    doc: dict[str, Any] = {
        "model": args.model,
        "backend": "pytorch",
        "name": mode,
        "precision": args.precision,
        "dataset": {"num_prompts": args.num_prompts, "input_length": args.input},
        "generation": {"max_output_tokens": args.output, "ignore_eos": True, "do_sample": False},
        "batching": {"batch_size": args.batch_size, "strategy": "static"},
        "measurement": {
            "warmup": "fixed",
            "warmup_requests": 2 * args.batch_size,
            "cycles": args.cycles,
            "idle_seconds": args.idle_s,
            "min_window_s": args.min_window_s,
            "target_rel_ci": args.target,
            "max_cycles": args.max_cycles,
            "prefill_pass": True,
            "energy_meter": args.meter,
        },
        "pytorch": {"device": args.device},
    }
    if mode != "eager":
        doc["preset"] = mode
    return tomli_w.dumps(doc)


def _cv(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    if len(present) < 2 or not statistics.fmean(present):
        return None
    return statistics.stdev(present) / abs(statistics.fmean(present))


def figures(exp_dir: Path) -> dict[str, Any]:
    """The benchmark's figures from one experiment's result files."""
    summary = json.loads((exp_dir / "summary.json").read_text())
    cycles = [json.loads(p.read_text()) for p in sorted(exp_dir.glob("cycle-*.json"))]
    fig = summary["figures"]
    cycle_s = sum(c["window"]["duration_s"] for c in cycles)
    prefill_s = sum(c["prefill"]["window"]["duration_s"] for c in cycles if c.get("prefill"))
    steps = [c["energy"]["steps"] for c in cycles]
    step_prefill = [s["prefill_s"] for s in steps if s.get("prefill_s") is not None]
    out = {
        "mode": summary["config"].get("name"),
        "cycles": summary["cycles"],
        "passes": summary["workload"]["passes"],
        "precision": summary["precision"],
        "cv": {
            "energy.j_per_output_token": _cv(fig["energy.j_per_output_token"]["values"]),
            "energy.dynamic_j_per_output_token": _cv(fig["energy.dynamic_j_per_output_token"]["values"]),
            "output_tokens_per_s": _cv(fig["output_tokens_per_s"]["values"]),
        },
        "rel_ci95": {
            name: fig[name]["rel_ci95"]
            for name in ("energy.j_per_output_token", "energy.dynamic_j_per_output_token", "output_tokens_per_s")
        },
        "mean": {
            name: fig[name]["mean"]
            for name in (
                "energy.j_per_output_token",
                "output_tokens_per_s",
                "energy.prefill_j_per_input_token",
                "energy.decode_j_per_output_token",
                "steady_state.j_per_output_token",
            )
        },
        "cycle_window_s": cycle_s,
        "prefill_window_s": prefill_s,
        "prefill_overhead_share": prefill_s / (cycle_s + prefill_s) if cycle_s + prefill_s else None,
        "prefill_steps_share_estimate": sum(step_prefill) / cycle_s if len(step_prefill) == len(cycles) else None,
        "warnings": summary["warnings"],
    }
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def show(f: dict[str, Any]) -> None:
    """Print one mode's figures."""
    p = f["precision"] or {}
    print(f"\n== {f['mode']}: {f['cycles']} cycles (passes per cycle {f['passes']})")
    met = "met" if p.get("met") else "NOT met"
    print(
        f"target ±{p.get('target_rel_ci', 0):.1%}: {met}, after {p.get('met_after_cycles')} cycles"
        + (f"; {p['note']}" if p.get("note") else "")
    )
    for name in f["cv"]:
        print(f"  {name:<36} CV {_pct(f['cv'][name]):>8}   rel 95% CI ±{_pct(f['rel_ci95'][name]):>8}")
    for name, v in f["mean"].items():
        print(f"  mean {name:<36} {_num(v)}")
    print(
        f"  prefill pass overhead: {_pct(f['prefill_overhead_share'])} of the measured time "
        f"({f['prefill_window_s']:.2f} s of prefill windows, {f['cycle_window_s']:.2f} s of cycle windows); "
        f"prefill steps' share of the cycles (estimate): {_pct(f['prefill_steps_share_estimate'])}"
    )
    for w in f["warnings"]:
        print(f"  warning: {w}")


def main(argv: list[str] | None = None) -> int:
    """Run each mode and print its figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--modes", default="eager,pytorch-optimized", help="comma-separated: eager and/or presets")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--cycles", type=int, default=3, help="cycles before the precision target is checked")
    ap.add_argument("--max-cycles", type=int, default=20)
    ap.add_argument("--min-window-s", type=float, default=10.0)
    ap.add_argument("--target", type=float, default=0.02)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--out", default=None, help="results directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from lem.campaign.loop import CampaignOptions, run_campaign
    from lem.configfile.loading import load

    out = Path(args.out or tempfile.mkdtemp(prefix="lem-precision-"))
    results = []
    for mode in args.modes.split(","):
        path = out / f"{mode}.toml"
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(experiment_toml(args, mode))
        runs = out / mode
        if not run_campaign(load(path), CampaignOptions(out_dir=runs, in_process=True, quiet=False, report=False)):
            print(f"{mode}: the experiment failed (see {runs})", file=sys.stderr)
            return 1
        (exp_dir,) = [e for r in runs.iterdir() if r.is_dir() for e in r.iterdir() if (e / "summary.json").exists()]
        results.append(figures(exp_dir))
    if args.json:
        print(json.dumps(results, indent=2))
    for f in results:
        show(f)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
