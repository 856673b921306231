"""lem's continuous engine against transformers' own ``generate_batch``, and against static batching.

Three comparisons, side by side in one run (8B shape, random weights, bf16 by default):

(a) **Throughput.** The same ``--prompts`` x ``--input``/``--output`` tokens (all
    requests at once, greedy, fixed length) served by transformers'
    ``model.generate_batch`` with CUDA graphs, and by lem's continuous engine
    through its ``generate_stream`` hook (what ``lem run`` calls: the serving
    driver, one token event per token), in tokens per second. Both get the same
    ``ContinuousBatchingConfig`` (cache, page and batch sizes, graphs on where
    there is CUDA); ``generate_batch`` keeps its manager between repeats
    (``persistent_manager``), so neither side pays for building or warming one.
(c) **Streaming cost.** lem's side against the very manager lem built, fed the
    same requests with ``add_requests(streaming=False)`` and read back the way
    ``generate_batch`` does: what lem's per-token streaming (the manager's
    streamed outputs, the hand-over to lem's event loop, the token events)
    costs, as a percentage, with the 95% CI of the per-repeat ratios.
    Repeats rotate the order of the three sides; ratios are taken within a repeat.
(b) **Under traffic.** One ``lem run`` sweeps ``[pytorch] engine`` (``static``:
    ``model.generate`` batches of the requests that have arrived, up to
    ``--static-batch-size``; ``continuous``: requests join the running batch)
    over ``--rates`` (Poisson arrivals, the same seeded schedule for both), each
    experiment in its own worker. Figures are lem's own summaries (means over
    cycles): TTFT p50/p99, TPOT p50, output tokens per second and J per output
    token (NVML through lem-energy-nvml when installed; otherwise null with
    lem's reason), with continuous / static per rate.

    python benchmarks/pytorch_continuous.py                      # random Llama-3.1-8B, bf16, on the GPU
    python benchmarks/pytorch_continuous.py --rates 2 8 32 --cuda-graphs off
    python benchmarks/pytorch_continuous.py --smoke              # a tiny model on the CPU: checks it works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: (column, summary figure, format) of the traffic table, per engine.
COLUMNS = (
    ("TTFT p50 s", "ttft_s.p50", "{:.4f}"),
    ("TTFT p99 s", "ttft_s.p99", "{:.4f}"),
    ("TPOT p50 s", "tpot_s.p50", "{:.4f}"),
    ("out tok/s", "output_tokens_per_s", "{:.1f}"),
    ("J/out tok", "energy.j_per_output_token", "{:.4f}"),
)

#: What --smoke sets: a tiny random Llama on the CPU, sizes that finish in well under two minutes.
SMOKE = {
    "model": "random:tiny-llama",
    "device": "cpu",
    "precision": "float32",
    "prompts": 8,
    "input": 16,
    "output": 16,
    "rates": [5.0, 20.0],
    "cycles": 1,
    "warmup_requests": 2,
    "idle_seconds": 0.0,
    "meter": "none",
    "num_blocks": 64,
    "page_size": 16,
    "max_batch_tokens": 256,
    "repeats": 3,
}


def cache_table(args: argparse.Namespace) -> dict[str, Any]:
    """``[pytorch.continuous]``: the sizes given, and ``cuda_graphs`` unless left to lem's default."""
    graphs = {"on": True, "off": False}.get(args.cuda_graphs)
    pairs = (
        ("num_blocks", args.num_blocks),
        ("page_size", args.page_size),
        ("max_batch_tokens", args.max_batch_tokens),
        ("max_requests_per_batch", args.max_requests_per_batch),
        ("cuda_graphs", graphs),
        ("compile_level", args.compile_level),
        ("graph_kv_padding", args.kv_padding),
        ("graph_q_padding", args.q_padding),
    )
    return {key: value for key, value in pairs if value is not None}


def experiment(args: argparse.Namespace) -> dict[str, Any]:
    """(b) as a TOML document: engine x rate, everything else the same."""
    return {
        "model": args.model,
        "backend": "pytorch",
        "precision": args.precision,
        "seed": 42,
        "dataset": {"source": "synthetic", "num_prompts": args.prompts, "input_length": args.input},
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
        "pytorch": {"device": args.device, "attn_implementation": args.attn, "continuous": cache_table(args)},
        "sweep": {"pytorch.engine": list(args.engines), "traffic.rate": [float(r) for r in args.rates]},
    }


# --- (a) and (c): one loaded model, three ways to serve the same requests --------------------------


def load_continuous(args: argparse.Namespace) -> Any:
    """lem's model with ``engine = "continuous"`` (the manager built and warmed up in load_model)."""
    from lem.configfile.loading import config_from_dict
    from lem.phases import unmetered
    from lem.plugins import get_plugin_manager

    config = config_from_dict(
        {
            "model": args.model,
            "backend": "pytorch",
            "precision": args.precision,
            "seed": 42,
            "generation": {"max_output_tokens": args.output, "ignore_eos": True, "do_sample": False},
            "dataset": {"input_length": args.input, "num_prompts": args.prompts},
            "traffic": {"mode": "offline"},
            "pytorch": {
                "device": args.device,
                "attn_implementation": args.attn,
                "engine": "continuous",
                "continuous": cache_table(args),
            },
        }
    )
    model = get_plugin_manager().hook.load_model(backend="pytorch", config=config, phases=unmetered())
    return model, config


def run_lem(model: Any, config: Any, requests: list[Any]) -> float:
    """Seconds for lem's generate_stream hook to serve ``requests``, last token event included."""
    from lem.plugins import get_plugin_manager

    start = time.perf_counter()
    tokens = 0
    for event in get_plugin_manager().hook.generate_stream(
        model=model, requests=requests, params=config.generation, config=config
    ):
        tokens += event.n_tokens
    elapsed = time.perf_counter() - start
    assert tokens == len(requests) * config.generation.max_output_tokens, tokens
    return elapsed


def run_unstreamed(model: Any, config: Any, requests: list[Any]) -> float:
    """Seconds for lem's own manager to serve ``requests`` unstreamed, read back as ``generate_batch`` does."""
    manager = model.handle.continuous.manager
    want = len(requests)
    max_new = config.generation.max_output_tokens
    start = time.perf_counter()
    ids = manager.add_requests([list(r.prompt_token_ids) for r in requests], max_new_tokens=max_new)
    done: dict[str, Any] = {}
    while len(done) < want:
        result = manager.get_result(timeout=1)
        if result is not None and result.is_finished():
            done[result.request_id] = result
        elif result is None and not manager.is_running():
            raise RuntimeError("the manager's generation thread stopped")
    elapsed = time.perf_counter() - start
    assert sorted(done) == sorted(ids) and all(len(r.generated_tokens) == max_new for r in done.values())
    return elapsed


def run_generate_batch(model: Any, config: Any, requests: list[Any]) -> float:
    """Seconds for transformers' ``generate_batch`` (persistent manager, warmed by the untimed first call)."""
    from transformers import ContinuousBatchingConfig

    engine = model.handle.continuous
    kwargs = engine.info["continuous_batching_config_passed"]  # the very arguments lem gave its manager
    max_new = config.generation.max_output_tokens
    inputs = [list(r.prompt_token_ids) for r in requests]
    start = time.perf_counter()
    out = model.handle.model.generate_batch(
        inputs,
        generation_config=engine.manager.generation_config,
        continuous_batching_config=ContinuousBatchingConfig(**kwargs),
        persistent_manager=True,
        max_new_tokens=max_new,
    )
    elapsed = time.perf_counter() - start
    assert len(out) == len(requests) and all(len(r.generated_tokens) == max_new for r in out.values())
    return elapsed


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """(a) and (c): tok/s of each side per repeat, their medians and the ratios with their CIs."""
    from pytorch_overhead import make_requests, ratio_summary

    model, config = load_continuous(args)
    try:
        vocab = int(model.model_config.get("vocab_size") or 1000)
        requests = make_requests(args.prompts, args.input, vocab)
        sides = {
            "generate_batch": partial(run_generate_batch, model, config, requests),
            "lem": partial(run_lem, model, config, requests),
            "lem manager, unstreamed": partial(run_unstreamed, model, config, requests),
        }
        for run in sides.values():  # warm-up: graphs of these shapes captured, generate_batch's manager built
            run()
        tokens = args.prompts * args.output
        names = list(sides)
        tps: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.repeats):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                tps[name].append(tokens / sides[name]())
        info = dict(model.info.get("continuous") or {})
        device = model.info.get("device")
    finally:
        model.handle.model.destroy_cached_continuous_batching_manager()
        model.close()
    return {
        "device": device,
        "cuda_graphs": info.get("cuda_graphs"),
        "continuous_batching_config": info.get("continuous_batching_config"),
        "tok_s": {name: statistics.median(values) for name, values in tps.items()},
        "runs": {name: [round(x, 2) for x in values] for name, values in tps.items()},
        "lem / generate_batch": ratio_summary(tps["lem"], tps["generate_batch"]),
        "lem / unstreamed": ratio_summary(tps["lem"], tps["lem manager, unstreamed"]),
        "unstreamed / generate_batch": ratio_summary(tps["lem manager, unstreamed"], tps["generate_batch"]),
    }


def throughput_table(row: dict[str, Any]) -> str:
    """(a) and (c) as text."""
    lines = [f"device {row['device']}, CUDA graphs (varlen, decode): {row['cuda_graphs']}"]
    lines += ["| side | tok/s (median) | runs |", "|---|---|---|"]
    lines += [f"| {name} | {tps:.1f} | {row['runs'][name]} |" for name, tps in row["tok_s"].items()]
    lines.append("")
    for key, what in (
        ("lem / generate_batch", "(a) lem's continuous engine / generate_batch, tok/s (goal >= 1)"),
        ("lem / unstreamed", "(c) lem streaming / the same manager unstreamed, tok/s (goal >= 0.98)"),
        ("unstreamed / generate_batch", "    lem's manager unstreamed / generate_batch (configuration alone)"),
    ):
        r = row[key]
        ci = "[" + ", ".join(f"{x:.3f}" for x in r["ci95"]) + "]" if r["ci95"] else "(one repeat: no CI)"
        lines.append(f"{what}: {r['geomean']:.3f} {ci}, overhead {100 * (1 / r['geomean'] - 1):+.1f}%")
    return "\n".join(lines)


# --- (b): static vs continuous under Poisson traffic, through `lem run` ---------------------------


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
    """Parse the arguments, run (a) and (c), then (b), print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, small sizes (< 2 minutes)")
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--rates", type=float, nargs="+", default=[4.0, 16.0], help="(b): requests per second")
    parser.add_argument("--prompts", "--num-prompts", type=int, default=64, help="requests per run / cycle")
    parser.add_argument("--input", type=int, default=128, help="input tokens per request")
    parser.add_argument("--output", type=int, default=128, help="output tokens per request (fixed length)")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--attn", default="sdpa", help="pytorch.attn_implementation, the same for every side")
    parser.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"], help="auto: lem's default")
    parser.add_argument("--repeats", type=int, default=3, help="(a), (c): timed runs per side")
    parser.add_argument("--static-batch-size", type=int, default=16, help="(b): largest static batch")
    parser.add_argument("--cycles", type=int, default=2, help="(b): cycles per experiment")
    parser.add_argument("--warmup-requests", type=int, default=8, help="(b)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="(b): idle baseline (0 skips it)")
    parser.add_argument("--meter", default="auto", help='(b): measurement.energy_meter ("auto", "nvml", "none")')
    parser.add_argument("--num-blocks", type=int, default=None, help="pytorch.continuous.num_blocks")
    parser.add_argument("--page-size", type=int, default=None, help="pytorch.continuous.page_size")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="pytorch.continuous.max_batch_tokens")
    parser.add_argument("--max-requests-per-batch", type=int, default=None)
    parser.add_argument("--compile-level", type=int, default=None, help="pytorch.continuous.compile_level (0-3)")
    parser.add_argument("--kv-padding", type=int, default=None, help="pytorch.continuous.graph_kv_padding")
    parser.add_argument("--q-padding", type=int, default=None, help="pytorch.continuous.graph_q_padding")
    parser.add_argument(
        "--engines", nargs="+", choices=["static", "continuous"], default=["static", "continuous"], help="(b)"
    )
    parser.add_argument("--skip", choices=["throughput", "traffic"], default=None, help="leave one part out")
    parser.add_argument("--out", default=None, help="(b): results directory (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    import logging

    # generate_batch warns on every call that its persistent manager was sized for that call's requests (so it is).
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.num_blocks is None:
        # Both sides of (a) get the same cache, sized for the work (twice it): two managers live at once.
        page = args.page_size or 256
        args.num_blocks = max(16, 2 * args.prompts * -(-(args.input + args.output) // page))
    began = time.perf_counter()
    result: dict[str, Any] = {}
    if args.skip != "throughput":
        result["throughput"] = throughput(args)
    if args.skip != "traffic":
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lem-continuous-"))
        summaries = run(experiment(args), out)
        result["traffic"] = [
            {"engine": e, "rate": r, **{name: figure(s, name)[0] for _, name, _ in COLUMNS}}
            for s in summaries
            for e, r in [sweep_values(s)]
        ]
        result["traffic_dir"] = str(out)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(
        f"{args.model}, {args.precision}, {args.prompts} x {args.input} in / {args.output} out, "
        f"continuous cache {cache_table(args)}"
    )
    if "throughput" in result:
        print(throughput_table(result["throughput"]))
    if "traffic" in result:
        print(f"\n(b) Poisson arrivals; static: dynamic batches up to {args.static_batch_size}; in {out}")
        print(table(summaries))
    print(f"\nwall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
