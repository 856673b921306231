"""Tensor parallelism against one GPU and against ``device_map = "auto"`` in lem's PyTorch backend (issue #16).

Three lem experiments with the same prompts, decoding, warm-up and cycles, one
``lem run`` each (each in its own worker process):

- ``tp=1``: the model on one GPU (``[sharding] tensor_parallel_size = 1``);
- ``tp=N``: ``tensor_parallel_size = --tp`` (default 2), one rank per GPU, transformers'
  tensor-parallel plan, every rank's GPU metered;
- ``device_map``: ``[pytorch] device_map = "auto"`` over the same GPUs (layers split, one GPU busy at a time).

It prints, side by side, lem's own summaries (means over cycles): output tokens per second,
TPOT p50, J per output token (total and above idle), the devices metered, and, for each
experiment, the energy of every metered GPU as its own NVML counter read it (mean over cycles)
against their sum and the total lem reports, which must agree (the total is that sum).

On a machine with two GPUs (the issue's shape: random Llama-3.1-8B, bf16, batch 8, 128 in / 128 out):

    CUDA_VISIBLE_DEVICES=0,1 python benchmarks/pytorch_tp.py --out results-tp

Options for a smoke on the CPU (gloo ranks, no meter), which checks that the script and all three modes work:

    python benchmarks/pytorch_tp.py --device cpu --model random:tiny-llama --precision float32 \\
        --num-prompts 4 --batch-size 2 --input 16 --output 8 --cycles 1 --idle-seconds 0 --meter none

``--json`` prints the figures as JSON; results stay under ``--out`` (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: (column, summary figure, format).
COLUMNS = (
    ("out tok/s", "output_tokens_per_s", "{:.1f}"),
    ("TPOT p50 ms", "tpot_s.p50", "{:.2f}"),
    ("J/out tok", "energy.j_per_output_token", "{:.4f}"),
    ("dyn J/out tok", "energy.dynamic_j_per_output_token", "{:.4f}"),
    ("mean W", "energy.mean_power_w", "{:.0f}"),
)


def experiment(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One mode's experiment as a TOML document: ``tp=1``, ``tp=N`` or ``device_map``."""
    pytorch: dict[str, Any] = {"device": args.device, "attn_implementation": args.attn}
    sharding = {"tensor_parallel_size": 1}
    if mode == "device_map":
        pytorch["device_map"] = "cpu" if args.device == "cpu" else "auto"
    elif mode != "tp=1":
        sharding["tensor_parallel_size"] = args.tp
    return {
        "model": args.model,
        "backend": "pytorch",
        "name": f"tp={args.tp}" if mode == "tp=N" else mode,
        "precision": args.precision,
        "seed": 42,
        "dataset": {"source": "synthetic", "num_prompts": args.num_prompts, "input_length": args.input},
        "generation": {"max_output_tokens": args.output, "ignore_eos": True, "do_sample": False},
        "batching": {"strategy": "static", "batch_size": args.batch_size},
        "sharding": sharding,
        "measurement": {
            "warmup": "fixed",
            "warmup_requests": args.warmup_requests,
            "cycles": args.cycles,
            "idle_seconds": args.idle_seconds,
            "energy_meter": args.meter,
        },
        "pytorch": pytorch,
    }


def run(doc: dict[str, Any], out: Path) -> Path:
    """``lem run`` on one experiment; the experiment's directory."""
    import tomli_w

    out.mkdir(parents=True, exist_ok=True)
    toml = out / f"pytorch_tp_{doc['name'].replace('=', '')}.toml"
    toml.write_text(tomli_w.dumps(doc))
    before = set(out.glob("*/*/summary.json"))
    cmd = [sys.executable, "-m", "lem", "run", str(toml), "--out", str(out), "--yes", "--no-report"]
    print("$", " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(f"lem run failed with exit status {done.returncode} (its output is above)")
    (summary,) = set(out.glob("*/*/summary.json")) - before
    return summary.parent


def figure(summary: dict[str, Any], name: str) -> tuple[float | None, str | None]:
    """A figure's mean over cycles, or ``None`` with the reason lem gives."""
    fig = (summary.get("figures") or {}).get(name) or {}
    reason = fig.get("reason") or (summary.get("energy_reason") if name.startswith("energy.") else None)
    return fig.get("mean"), reason


def per_device(exp_dir: Path) -> dict[str, Any]:
    """Each metered GPU's counter energy (mean over cycles), their sum and lem's total (mean over cycles)."""
    devices: dict[int, list[float]] = {}
    totals: list[float] = []
    for path in sorted(exp_dir.glob("cycle-*.json")):
        energy = json.loads(path.read_text()).get("energy") or {}
        for d in energy.get("devices") or []:
            if d.get("energy_j") is not None:
                devices.setdefault(int(d["device"]), []).append(float(d["energy_j"]))
        if energy.get("total_j") is not None:
            totals.append(float(energy["total_j"]))
    means = {f"gpu{k}_j": statistics.fmean(v) for k, v in sorted(devices.items())}
    return {
        **means,
        "sum_of_counters_j": sum(means.values()) if means else None,
        "total_j": statistics.fmean(totals) if totals else None,
    }


def row(mode: str, exp_dir: Path) -> dict[str, Any]:
    """One experiment's figures for the table."""
    summary = json.loads((exp_dir / "summary.json").read_text())
    setup = json.loads((exp_dir / "setup.json").read_text())
    tp = setup["model_info"]["info"].get("tensor_parallel") or {}
    out: dict[str, Any] = {
        "mode": mode,
        "ranks": [r["device"] for r in tp.get("ranks", [])] or None,
        "model_devices": setup["model_info"]["devices"],
        "metered_devices": setup["metered_devices"],
        "meter_reason": setup.get("meter_reason"),
    }
    for _, name, _ in COLUMNS:
        out[name], why = figure(summary, name)
        if out[name] is None and why:
            out.setdefault("null_reasons", {})[name] = why
    out["energy_per_device"] = per_device(exp_dir)
    return out


def _cell(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return fmt.format(value * scale) if value is not None else "null"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the figures side by side, each relative to tp=1, then the per-GPU energy check."""
    base = rows[0]
    head = ["mode", "metered GPUs", *(c for c, _, _ in COLUMNS), "tok/s vs tp=1", "J/tok vs tp=1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_cell(r[name], fmt, 1000.0 if name.startswith("tpot") else 1.0) for _, name, fmt in COLUMNS]
        ratios = []
        for name in ("output_tokens_per_s", "energy.j_per_output_token"):
            a, b = r[name], base[name]
            ratios.append(f"{a / b:.3f}" if a is not None and b else "n/a")
        lines.append(f"| {r['mode']} | {r['metered_devices']} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "| mode | each GPU's own counter, J per cycle | sum | lem's total |", "|---|---|---|---|"]
    for r in rows:
        e = r["energy_per_device"]
        gpus = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in e.items() if k.startswith("gpu")) or "null"
        lines.append(
            f"| {r['mode']} | {gpus} | {_cell(e['sum_of_counters_j'], '{:.1f}')} | {_cell(e['total_j'], '{:.1f}')} |"
        )
    reasons = {f"{k}: {v}" for r in rows for k, v in (r.get("null_reasons") or {}).items()}
    if reasons:
        lines += ["", *(f"null: {why}" for why in sorted(reasons))]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, run the three experiments, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--tp", type=int, default=2, help="tensor_parallel_size of the tensor-parallel mode")
    parser.add_argument("--modes", nargs="+", default=["tp=1", "tp=N", "device_map"], help="which modes to run")
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per cycle")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input", type=int, default=128, help="input tokens per request")
    parser.add_argument("--output", type=int, default=128, help="output tokens per request (fixed length)")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--attn", default="sdpa", help="pytorch.attn_implementation")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--warmup-requests", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle baseline (0 skips it)")
    parser.add_argument("--meter", default="auto", help='measurement.energy_meter ("auto", "nvml", "none")')
    parser.add_argument("--out", default=None, help="results directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON, not a table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lem-tp-"))
    rows = []
    for mode in args.modes:
        doc = experiment(args, mode)
        rows.append(row(doc["name"], run(doc, out)))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{args.model}, {args.precision}, batch {args.batch_size}, {args.input} in / {args.output} out, "
        f"{args.num_prompts} requests per cycle, {args.cycles} cycles; results in {out}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
