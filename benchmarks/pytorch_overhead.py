"""lem's PyTorch backend against a plain ``model.generate`` loop: how much does lem cost?

The same workload (``--input`` tokens in, ``--output`` tokens out, fixed length,
greedy) goes through lem's ``generate_stream`` hook (worker thread, per-step
streamer, token events) and through a bare ``model.generate`` call on the very
same model object, alternating, ``--repeats`` times each, after one warm-up of
each (order alternating). It prints the median throughput of both, the median
of the per-pair ratios and their range, per batch size.
Goal on a GPU: lem within 2% of the plain loop (ratio >= 0.98).

``--preset pytorch-optimized`` adds a second comparison at batch size 1: lem
with that preset (torch.compile over a static cache, compiled in load_model)
against plain eager ``generate``.

    python benchmarks/pytorch_overhead.py                           # random Llama-3.1-8B, bf16, GPU
    python benchmarks/pytorch_overhead.py --preset pytorch-optimized
    python benchmarks/pytorch_overhead.py --model random:tiny-llama --device cpu   # checks it works here
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_config(args: argparse.Namespace, batch_size: int, preset: str | None = None) -> Any:
    """The benchmark's experiment config, optionally on top of a preset."""
    from lem.loading import config_from_dict, deep_merge, presets

    doc: dict[str, Any] = {
        "model": args.model,
        "backend": "pytorch",
        "precision": args.precision,
        "generation": {"max_output_tokens": args.output, "ignore_eos": True, "do_sample": False},
        "batching": {"batch_size": batch_size, "strategy": "static"},
        "dataset": {"input_length": args.input, "num_prompts": batch_size},
        "pytorch": {"device": args.device},
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


def run_lem(model: Any, config: Any, requests: list[Any]) -> float:
    """Seconds to serve ``requests`` through the generate_stream hook, last event included."""
    from lem.plugins import get_plugin_manager

    hook = get_plugin_manager().hook
    model.synchronize()
    start = time.perf_counter()
    tokens = 0
    for event in hook.generate_stream(model=model, requests=requests, params=config.generation, config=config):
        tokens += event.n_tokens
    model.synchronize()
    elapsed = time.perf_counter() - start
    assert tokens == len(requests) * config.generation.max_output_tokens, tokens
    return elapsed


def run_plain(model: Any, config: Any, requests: list[Any]) -> float:
    """Seconds for one bare ``model.generate`` on the same model and inputs (eager, dynamic cache)."""
    import torch

    from lem_backend_pytorch.streaming import left_padded

    handle = model.handle
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
        )
    model.synchronize()
    elapsed = time.perf_counter() - start
    assert out.shape[1] - ids.shape[1] == config.generation.max_output_tokens
    return elapsed


def compare(
    name: str, lem_side: Callable[[], float], plain_side: Callable[[], float], tokens: int, repeats: int
) -> dict[str, Any]:
    """Warm both up once, then run them in pairs ``repeats`` times; throughputs in tokens/s.

    The order within a pair alternates (lem first, then plain first) so drift and
    order effects hit both sides alike; the headline ratio is the median of the
    per-pair ratios, with their range, so noise is visible next to the figure.
    """
    lem_side()
    plain_side()
    lem_tps: list[float] = []
    plain_tps: list[float] = []
    for i in range(repeats):
        if i % 2 == 0:
            lem_tps.append(tokens / lem_side())
            plain_tps.append(tokens / plain_side())
        else:
            plain_tps.append(tokens / plain_side())
            lem_tps.append(tokens / lem_side())
    pair_ratios = [a / b for a, b in zip(lem_tps, plain_tps, strict=True)]
    return {
        "case": name,
        "lem_tok_s": statistics.median(lem_tps),
        "plain_tok_s": statistics.median(plain_tps),
        "ratio": statistics.median(pair_ratios),
        "ratio_min": min(pair_ratios),
        "ratio_max": max(pair_ratios),
        "lem_runs": [round(x, 2) for x in lem_tps],
        "plain_runs": [round(x, 2) for x in plain_tps],
    }


def main() -> None:
    """Parse arguments, run the comparisons, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--input", type=int, default=128, help="input tokens per request")
    parser.add_argument("--output", type=int, default=128, help="output tokens per request")
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default=None, help="also compare lem with this preset at batch 1 vs plain eager")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args()

    from lem.plugins import get_plugin_manager

    hook = get_plugin_manager().hook
    rows: list[dict[str, Any]] = []
    eager = hook.load_model(backend="pytorch", config=make_config(args, max(args.batch_sizes)))
    vocab = int(eager.model_config.get("vocab_size") or 1000)
    for bs in args.batch_sizes:
        config = make_config(args, bs)
        requests = make_requests(bs, args.input, vocab)
        rows.append(
            compare(
                f"batch {bs}",
                lambda c=config, r=requests: run_lem(eager, c, r),
                lambda c=config, r=requests: run_plain(eager, c, r),
                bs * args.output,
                args.repeats,
            )
        )
    if args.preset:
        config = make_config(args, 1, args.preset)
        optimized = hook.load_model(backend="pytorch", config=config)
        requests = make_requests(1, args.input, vocab)
        row = compare(
            f"batch 1, lem {args.preset} vs plain eager",
            lambda: run_lem(optimized, config, requests),
            lambda: run_plain(eager, make_config(args, 1), requests),
            args.output,
            args.repeats,
        )
        row["compile_seconds"] = optimized.info.get("compile_seconds")
        rows.append(row)
        optimized.close()
    facts = {
        "model": args.model,
        "device": eager.info.get("device"),
        "precision": args.precision,
        "input": args.input,
        "output": args.output,
        "repeats": args.repeats,
        "versions": eager.info.get("versions"),
    }
    eager.close()
    if args.json:
        print(json.dumps({"facts": facts, "rows": rows}, indent=2))
        return
    print(json.dumps(facts))
    print(f"{'case':<48} {'lem tok/s':>10} {'plain tok/s':>12} {'ratio':>7}  pair ratios min-max")
    for r in rows:
        print(
            f"{r['case']:<48} {r['lem_tok_s']:>10.1f} {r['plain_tok_s']:>12.1f} {r['ratio']:>7.3f}"
            f"  {r['ratio_min']:.3f}-{r['ratio_max']:.3f}"
            + (f"  (compile {r['compile_seconds']} s)" if r.get("compile_seconds") is not None else "")
        )


if __name__ == "__main__":
    main()
