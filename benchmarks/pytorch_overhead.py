"""lem's PyTorch backend against a plain ``model.generate`` loop: how much does lem cost?

The same workload (``--input`` tokens in, ``--output`` tokens out, fixed length,
greedy) goes through lem's ``generate_stream`` hook (per-step streamer, token
events) and through a bare ``model.generate`` call on the very same model
object, ``--repeats`` times each after ``--warmup`` untimed runs, in a rotating
order. A third side, the plain loop again, is an A/A control: its ratio to the
plain loop is what this machine's noise alone produces. Per batch size it prints
the median throughputs and, for lem / plain and for the control, the geometric
mean of the per-repeat ratios with its Student-t 95% confidence interval.
Goal on a GPU: lem within 2% of the plain loop, i.e. the CI of the ratio above
0.98; the verdict column says whether the run shows that, shows the opposite,
or is too noisy to tell.

``--compile reduce-overhead`` compiles the decode step on both sides (static
cache, transformers' ``compile_config``): decoding is then GPU-bound instead
of launch-bound, steps are short and lem's per-step work weighs most.

``--preset pytorch-optimized`` adds a second comparison at batch size 1: lem
with that preset (torch.compile over a static cache, compiled in load_model)
against plain eager ``generate``.

    python benchmarks/pytorch_overhead.py                           # random Llama-3.1-8B, bf16, GPU
    python benchmarks/pytorch_overhead.py --compile reduce-overhead
    python benchmarks/pytorch_overhead.py --preset pytorch-optimized --batch-sizes 1
    python benchmarks/pytorch_overhead.py --model random:tiny-llama --device cpu   # checks it works here
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_config(args: argparse.Namespace, batch_size: int, preset: str | None = None) -> Any:
    """The benchmark's experiment config (``--compile`` included), optionally on top of a preset."""
    from lem.configfile.loading import config_from_dict, deep_merge, presets

    doc: dict[str, Any] = {
        "model": args.model,
        "backend": "pytorch",
        "precision": args.precision,
        "generation": {"max_output_tokens": args.output, "ignore_eos": True, "do_sample": False},
        "batching": {"batch_size": batch_size, "strategy": "static"},
        "dataset": {"input_length": args.input, "num_prompts": batch_size},
        "pytorch": {"device": args.device, **({"torch_compile": args.compile} if args.compile else {})},
    }
    if preset is not None:
        doc = deep_merge(presets()[preset], doc)
        doc["pytorch"] = {**presets()[preset].get("pytorch", {}), "device": args.device}
        doc["preset"] = preset
    return config_from_dict(doc)


def make_requests(batch_size: int, length: int, vocab: int) -> list[Any]:
    """Requests with exact token ids (no tokenizer in the measured path of either side)."""
    from lem.types import Request

    return [
        Request(
            id=i,
            prompt="",
            input_tokens=length,
            prompt_token_ids=tuple((31 * i + 7 * j) % (vocab - 16) + 16 for j in range(length)),
        )
        for i in range(batch_size)
    ]


def run_lem(model: Any, config: Any, requests: list[Any], outside: list[float] | None = None) -> float:
    """Seconds to serve ``requests`` through the generate_stream hook, last event included.

    With ``outside``, appends the seconds of this run spent outside
    ``model.generate`` (padding, turning steps into events, the caller's loop):
    lem's own work, measured directly rather than inferred from two noisy totals.
    """
    from lem.plugins import get_plugin_manager

    hook = get_plugin_manager().hook
    module = model.handle.model
    inner = module.generate
    inside = 0.0

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            inside += time.perf_counter() - t0

    module.generate = timed_generate
    try:
        model.synchronize()
        start = time.perf_counter()
        tokens = 0
        for event in hook.generate_stream(model=model, requests=requests, params=config.generation, config=config):
            tokens += event.n_tokens
        model.synchronize()
        elapsed = time.perf_counter() - start
    finally:
        del module.generate
    assert tokens == len(requests) * config.generation.max_output_tokens, tokens
    if outside is not None:
        outside.append(elapsed - inside)
    return elapsed


def run_plain(
    model: Any, config: Any, requests: list[Any], compile_mode: str | None = None, streamer: bool = False
) -> float:
    """Seconds for one bare ``model.generate`` on the same model and inputs.

    Eager with transformers' dynamic cache, or with ``compile_mode`` a static cache
    and ``compile_config``: transformers' own way to compile the decode step.
    With ``streamer``, a streamer whose ``put()`` does nothing is passed: what
    transformers' own streaming path costs (it copies each step's tokens to the
    host), apart from anything lem does with the steps.
    """
    import torch

    from lem_backend_pytorch.streaming import left_padded

    handle = model.handle
    extra: dict[str, Any] = {}
    if compile_mode is not None:
        from transformers import CompileConfig

        extra = {"cache_implementation": "static", "compile_config": CompileConfig(mode=compile_mode)}
    model.synchronize()
    start = time.perf_counter()
    ids, mask = left_padded([list(r.prompt_token_ids) for r in requests], handle.pad_token_id, handle.device)
    with torch.inference_mode():
        out = handle.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=config.generation.max_output_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=handle.pad_token_id,
            streamer=_null_streamer() if streamer else None,
            **extra,
        )
    model.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == config.generation.max_output_tokens
    return elapsed


def _null_streamer() -> Any:
    from transformers.generation.streamers import BaseStreamer

    class Null(BaseStreamer):  # type: ignore[misc]
        def put(self, value: Any) -> None:
            pass

        def end(self) -> None:
            pass

    return Null()


def copy_bandwidth_bytes_per_s(device: Any) -> float | None:
    """Device-memory bandwidth measured by copying 2 GiB on the GPU (read + write counted), best of 5."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / best


def step_weight_bytes(module: Any) -> int:
    """Bytes of the weights a decode step reads, from the real tensors: every parameter but the input
    embedding table (a step reads one row of it per sequence), which counts when tied to the output."""
    embedding = module.get_input_embeddings().weight
    tied = module.get_output_embeddings() is not None and module.get_output_embeddings().weight is embedding
    return sum(p.numel() * p.element_size() for p in module.parameters() if tied or p is not embedding)


def roofline(model: Any, precision: str, batch_size: int, input_len: int, output_len: int) -> dict[str, Any]:
    """Batch-``batch_size`` decode roofline: bytes read per step (weights + mean KV cache) / copy bandwidth."""
    cfg = model.model_config
    elem = 4 if precision == "float32" else 2
    layers = int(cfg.get("num_hidden_layers", 0))
    heads = int(cfg.get("num_attention_heads", 1))
    kv_heads = int(cfg.get("num_key_value_heads", heads))
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size", 0)) // heads)
    mean_ctx = input_len + output_len / 2
    weights = step_weight_bytes(model.handle.model)
    kv = 2 * layers * kv_heads * head_dim * elem * mean_ctx * batch_size
    bandwidth = copy_bandwidth_bytes_per_s(model.handle.device)
    step_s = None if bandwidth is None else (weights + kv) / bandwidth
    return {
        "weights_bytes_per_step": weights,
        "kv_bytes_per_step": kv,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "tok_s": None if step_s is None else batch_size / step_s,
    }


def ratio_summary(numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """Per-repeat throughput ratios: median, geometric mean with its Student-t 95% CI, range."""
    from lem.figures.stats import interval

    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    logs = interval([math.log(r) for r in ratios])
    low, high = logs["ci95_low"], logs["ci95_high"]
    return {
        "median": statistics.median(ratios),
        "geomean": math.exp(logs["mean"]),
        "ci95": None if low is None else [math.exp(low), math.exp(high)],
        "min": min(ratios),
        "max": max(ratios),
    }


def verdict(ratio: dict[str, Any], target: float) -> str:
    """Whether the 95% CI of lem's throughput ratio shows it within ``1 - target`` of the plain loop."""
    ci = ratio["ci95"]
    if ci is None:
        return "unknown (one repeat)"
    if ci[0] >= target:
        return f"within {1 - target:.0%} (CI above {target})"
    if ci[1] < target:
        return f"slower by more than {1 - target:.0%} (CI below {target})"
    return f"not resolved: the CI spans {target}"


def compare(name: str, sides: dict[str, Callable[[], float]], tokens: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Warm every side up, then run all of them once per repeat; throughputs in tokens/s.

    ``sides`` holds "lem" and "plain", and optionally "plain again": the same plain
    loop a second time, an A/A control whose ratio shows the noise floor of this
    machine next to lem's ratio. The order within a repeat rotates so drift and
    order effects hit every side alike; ratios are taken within a repeat.
    """
    names = list(sides)
    for _ in range(warmup):
        for side in names:
            sides[side]()
    tps: dict[str, list[float]] = {side: [] for side in names}
    for i in range(repeats):
        k = i % len(names)
        for side in names[k:] + names[:k]:
            tps[side].append(tokens / sides[side]())
    row: dict[str, Any] = {
        "case": name,
        "lem_tok_s": statistics.median(tps["lem"]),
        "plain_tok_s": statistics.median(tps["plain"]),
        "ratio": ratio_summary(tps["lem"], tps["plain"]),
        "runs": {side: [round(x, 2) for x in values] for side, values in tps.items()},
    }
    if "plain again" in tps:
        row["control"] = ratio_summary(tps["plain again"], tps["plain"])
    if "plain+streamer" in tps:
        # transformers' streaming path alone, and lem against a plain loop that streams too
        row["streamer_cost"] = ratio_summary(tps["plain+streamer"], tps["plain"])
        row["lem_vs_streaming_plain"] = ratio_summary(tps["lem"], tps["plain+streamer"])
    return row


def host_facts() -> dict[str, Any]:
    """What else could make the timings noisy: CPU model, cores, load average."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "loadavg": load}


def main() -> None:
    """Parse arguments, run the comparisons, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--input", type=int, default=128, help="input tokens per request")
    parser.add_argument("--output", type=int, default=128, help="output tokens per request")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per side (1; 2 compiled)")
    parser.add_argument("--no-control", action="store_true", help="skip the plain-vs-plain A/A control")
    parser.add_argument(
        "--compile",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="compile the decode step on both sides (static cache), instead of eager",
    )
    parser.add_argument("--preset", default=None, help="also compare lem with this preset at batch 1 vs plain eager")
    parser.add_argument("--target", type=float, default=0.98, help="the ratio lem must stay above")
    parser.add_argument(
        "--null-streamer",
        action="store_true",
        help="add a side: plain generate with a do-nothing streamer (separates transformers' streaming path from lem)",
    )
    parser.add_argument("--roofline", action="store_true", help="print the HBM roofline of batch 1 (GPU only)")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--save", default=None, metavar="PATH", help="also write the JSON rows to PATH")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else (2 if args.compile else 1)

    from lem.phases import unmetered
    from lem.plugins import get_plugin_manager

    hook = get_plugin_manager().hook
    rows: list[dict[str, Any]] = []
    model = hook.load_model(backend="pytorch", config=make_config(args, max(args.batch_sizes)), phases=unmetered())
    vocab = int(model.model_config.get("vocab_size") or 1000)
    for bs in args.batch_sizes:
        config = make_config(args, bs)
        requests = make_requests(bs, args.input, vocab)
        outside: list[float] = []
        sides: dict[str, Callable[[], float]] = {
            "lem": partial(run_lem, model, config, requests, outside),
            "plain": partial(run_plain, model, config, requests, args.compile),
        }
        if not args.no_control:
            sides["plain again"] = sides["plain"]
        if args.null_streamer:
            sides["plain+streamer"] = partial(run_plain, model, config, requests, args.compile, True)
        row = compare(f"batch {bs}", sides, bs * args.output, args.repeats, warmup)
        timed = outside[-args.repeats :]  # the warm-up runs are not counted
        row["lem_outside_generate_s"] = statistics.median(timed)
        row["lem_outside_generate_share"] = statistics.median(
            o * t / (bs * args.output) for o, t in zip(timed, row["runs"]["lem"], strict=True)
        )
        rows.append(row)
    if args.preset:
        config = make_config(args, 1, args.preset)
        optimized = hook.load_model(backend="pytorch", config=config, phases=unmetered())
        requests = make_requests(1, args.input, vocab)
        eager_config = make_config(args, 1)
        sides = {
            "lem": partial(run_lem, optimized, config, requests),
            "plain": partial(run_plain, model, eager_config, requests),
        }
        row = compare(f"batch 1, lem {args.preset} vs plain eager", sides, args.output, args.repeats, warmup)
        row["compile_seconds"] = optimized.info.get("compile_seconds")
        rows.append(row)
        optimized.close()
    roof = roofline(model, args.precision, 1, args.input, args.output) if args.roofline else None
    facts = {
        "model": args.model,
        "device": model.info.get("device"),
        "precision": args.precision,
        "decode": f"torch.compile {args.compile}, static cache" if args.compile else "eager, dynamic cache",
        "input": args.input,
        "output": args.output,
        "repeats": args.repeats,
        "warmup": warmup,
        "versions": model.info.get("versions"),
        "host": host_facts(),
        "roofline_batch1": roof,
    }
    model.close()
    if args.save:
        with open(args.save, "w") as f:
            json.dump({"facts": facts, "rows": rows}, f, indent=2)
    if args.json:
        print(json.dumps({"facts": facts, "rows": rows}, indent=2))
        return
    print(json.dumps(facts))
    print(
        f"{'case':<42} {'lem tok/s':>9} {'plain':>9} {'ratio':>6} {'95% CI':>13} {'range':>9}"
        f" {'A/A':>6} {'A/A 95% CI':>13}  verdict"
    )
    for r in rows:
        control = fmt_ratio(r["control"]) if "control" in r else ""
        note = f"compile {r['compile_seconds']} s" if "compile_seconds" in r else verdict(r["ratio"], args.target)
        print(
            f"{r['case']:<42} {r['lem_tok_s']:>9.1f} {r['plain_tok_s']:>9.1f} {fmt_ratio(r['ratio'])}"
            f" {r['ratio']['min']:.2f}-{r['ratio']['max']:.2f} {control:>20}  {note}"
        )
    for r in rows:
        for key, label in (
            ("streamer_cost", "plain+null streamer / plain"),
            ("lem_vs_streaming_plain", "lem / plain+null streamer"),
        ):
            if key in r:
                print(f"{r['case']}: {label} {fmt_ratio(r[key])}")
    if roof is not None and roof["tok_s"] is not None:
        print(
            f"HBM roofline, batch 1: ({roof['weights_bytes_per_step'] / 1e9:.2f} GB weights + "
            f"{roof['kv_bytes_per_step'] / 1e9:.3f} GB KV cache per step) / "
            f"{roof['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s measured copy bandwidth = {roof['tok_s']:.1f} tok/s"
        )
        for r in rows:
            if r["case"].startswith("batch 1"):
                print(f"{r['case']}: lem reaches {r['lem_tok_s'] / roof['tok_s']:.1%} of the roofline")
    for r in rows:
        if "lem_outside_generate_s" in r:
            print(
                f"{r['case']}: lem's own work outside model.generate {1000 * r['lem_outside_generate_s']:.2f} ms"
                f" per run, {r['lem_outside_generate_share']:.3%} of the run (medians)"
            )


def fmt_ratio(ratio: dict[str, Any]) -> str:
    """``geomean [low,high]`` in fixed-width columns."""
    ci = ratio["ci95"]
    return f"{ratio['geomean']:>6.3f} " + (f"[{ci[0]:.3f},{ci[1]:.3f}]" if ci else f"{'-':>13}")


if __name__ == "__main__":
    main()
