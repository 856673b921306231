"""Static against continuous batching in lem's PyTorch backend, under Poisson traffic.

One ``lem run`` sweeps ``[pytorch] engine`` (``static``: ``model.generate``
batches formed from the requests that have arrived, ``batching.strategy =
"dynamic"`` up to ``--static-batch-size``; ``continuous``: transformers'
``ContinuousBatchingManager``, requests joining the running batch as they
arrive) over ``--rates`` (requests per second, Poisson arrivals, the same
seeded schedule for both engines). Each experiment runs in its own worker
process (the continuous engine's paged cache takes most of the free GPU
memory), with the same prompts, warm-up and cycles. The figures are lem's own
summaries (means over cycles): TTFT p50/p99, TPOT p50, output tokens per
second and J per output token when a meter works (null, with its reason,
otherwise), printed per rate with the ratio continuous / static.

    python benchmarks/pytorch_continuous.py                                 # random Llama-3.1-8B, bf16, GPU
    python benchmarks/pytorch_continuous.py --rates 2 8 32 --cuda-graphs    # CUDA graphs in the manager
    python benchmarks/pytorch_continuous.py --model random:tiny-llama --device cpu --precision float32 \\
        --rates 5 20 --num-prompts 8 --input 16 --output 16 --cycles 1 --num-blocks 64 --page-size 16 \\
        --max-batch-tokens 256 --meter none                                 # checks it works here
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: (column, summary figure, format) of the table, per engine.
COLUMNS = (
    ("TTFT p50 s", "ttft_s.p50", "{:.4f}"),
    ("TTFT p99 s", "ttft_s.p99", "{:.4f}"),
    ("TPOT p50 s", "tpot_s.p50", "{:.4f}"),
    ("out tok/s", "output_tokens_per_s", "{:.1f}"),
    ("J/out tok", "energy.j_per_output_token", "{:.4f}"),
)


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep as a TOML document: engine x rate, everything else the same."""
    cache = {
        key: value
        for key, value in (
            ("num_blocks", args.num_blocks),
            ("page_size", args.page_size),
            ("max_batch_tokens", args.max_batch_tokens),
            ("max_requests_per_batch", args.max_requests_per_batch),
            ("cuda_graphs", True if args.cuda_graphs else None),
            ("compile_level", args.compile_level),
        )
        if value is not None
    }
    return {
        "model": args.model,
        "backend": "pytorch",
        "precision": args.precision,
        "seed": 42,
        "dataset": {"source": "synthetic", "num_prompts": args.num_prompts, "input_length": args.input},
        "generation": {"max_output_tokens": args.output, "ignore_eos": True},
        # Only the static engine reads [batching]; the continuous one's scheduler forms its own batches.
        "batching": {"strategy": "dynamic", "batch_size": args.static_batch_size},
        "traffic": {"mode": "poisson", "rate": args.rates[0]},
        "measurement": {
            "warmup_requests": args.warmup_requests,
            "cycles": args.cycles,
            "idle_seconds": args.idle_seconds,
            "energy_meter": args.meter,
        },
        "pytorch": {"device": args.device, "attn_implementation": args.attn, "continuous": cache},
        "sweep": {"pytorch.engine": ["static", "continuous"], "traffic.rate": [float(r) for r in args.rates]},
    }


def to_toml(doc: dict[str, Any]) -> str:
    """TOML text for ``doc`` (tomli-w, a lem-core dependency)."""
    import tomli_w

    return tomli_w.dumps(doc)


def run(doc: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """``lem run`` on the sweep; the summary of every experiment it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    toml = out / "pytorch_continuous.toml"
    toml.write_text(to_toml(doc))
    before = set(out.glob("*/*/summary.json"))
    cmd = [sys.executable, "-m", "lem", "run", str(toml), "--out", str(out), "--yes", "--no-report"]
    print("$", " ".join(cmd), file=sys.stderr)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(f"lem run failed with exit status {done.returncode} (its output is above)")
    return [json.loads(p.read_text()) for p in sorted(set(out.glob("*/*/summary.json")) - before)]


def figure(summary: dict[str, Any], name: str) -> tuple[float | None, str | None]:
    """A figure's mean over cycles, or ``None`` with the reason lem gives."""
    fig = (summary.get("figures") or {}).get(name) or {}
    reason = fig.get("reason") or (summary.get("energy_reason") if name.startswith("energy.") else None)
    return fig.get("mean"), reason


def sweep_values(summary: dict[str, Any]) -> tuple[str, float]:
    """(engine, rate) of an experiment's summary."""
    values = summary.get("sweep_values") or {}
    return str(values["pytorch.engine"]), float(values["traffic.rate"])


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table: per rate, static and continuous side by side, and continuous / static."""
    by = {sweep_values(s): s for s in summaries}
    head = ["rate req/s", "engine", *(c for c, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reasons: set[str] = set()
    for rate in sorted({r for _, r in by}):
        rows: dict[str, list[float | None]] = {}
        for engine in ("static", "continuous"):
            s = by.get((engine, rate))
            cells, values = [], []
            for _, name, fmt in COLUMNS:
                value, why = figure(s, name) if s is not None else (None, "not run")
                values.append(value)
                cells.append(fmt.format(value) if value is not None else "null")
                if value is None and why:
                    reasons.add(f"{name}: {why}")
            rows[engine] = values
            lines.append(f"| {rate:g} | {engine} | " + " | ".join(cells) + " |")
        ratio = [
            f"{c / s:.3f}" if c is not None and s is not None and s != 0 else "n/a"
            for s, c in zip(rows["static"], rows["continuous"], strict=True)
        ]
        lines.append(f"| {rate:g} | continuous / static | " + " | ".join(ratio) + " |")
    if reasons:
        lines += ["", *(f"null: {r}" for r in sorted(reasons))]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, run the sweep, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="requests per second")
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per cycle")
    parser.add_argument("--input", type=int, default=128, help="input tokens per request")
    parser.add_argument("--output", type=int, default=128, help="output tokens per request (fixed length)")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--attn", default="sdpa", help="pytorch.attn_implementation, the same for both engines")
    parser.add_argument("--static-batch-size", type=int, default=16, help="largest static batch of arrived requests")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--warmup-requests", type=int, default=8)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle baseline (0 skips it)")
    parser.add_argument("--meter", default="auto", help='measurement.energy_meter ("auto", "nvml", "none")')
    parser.add_argument("--num-blocks", type=int, default=None, help="pytorch.continuous.num_blocks")
    parser.add_argument("--page-size", type=int, default=None, help="pytorch.continuous.page_size")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="pytorch.continuous.max_batch_tokens")
    parser.add_argument("--max-requests-per-batch", type=int, default=None)
    parser.add_argument("--cuda-graphs", action="store_true", help="pytorch.continuous.cuda_graphs = true")
    parser.add_argument("--compile-level", type=int, default=None, help="pytorch.continuous.compile_level (0-3)")
    parser.add_argument("--out", default=None, help="results directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the summaries' figures as JSON, not a table")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lem-continuous-"))
    summaries = run(experiment(args), out)
    if args.json:
        rows = [
            {"engine": e, "rate": r, **{name: figure(s, name)[0] for _, name, _ in COLUMNS}}
            for s in summaries
            for e, r in [sweep_values(s)]
        ]
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{args.model}, {args.precision}, {args.input} in / {args.output} out, {args.num_prompts} requests per cycle, "
        f"Poisson arrivals; static: dynamic batches up to {args.static_batch_size}; results in {out}"
    )
    print(table(summaries))


if __name__ == "__main__":
    main()
