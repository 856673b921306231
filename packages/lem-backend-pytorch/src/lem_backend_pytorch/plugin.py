"""The ``pytorch`` backend's hook implementations (entry point ``pytorch`` in group ``lem``).

This module stays import-light: torch and transformers are imported only when
a model is loaded or served (``lem config validate`` does not pay for them
unless a check needs to know whether a GPU is there).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any

from lem import hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.types import LoadedModel, Problem, Request, TokenEvent, error, warning
from lem_backend_pytorch import options as opts
from lem_backend_pytorch.batching import batch_size_for
from lem_backend_pytorch.continuous import options as continuous_options
from lem_backend_pytorch.model import transformers_major
from lem_backend_pytorch.presets import PRESETS
from lem_backend_pytorch.tp.checks import problems as tp_problems

NAME = "pytorch"
TABLES = (opts.TABLE, continuous_options.TABLE)  # lem plugins --options pytorch
#: Problem paths of checks that only concern the static engine.
_STATIC_ONLY = ("generation.num_beams", "pytorch.assistant_model", "pytorch.torch_compile", "batching")


@hookimpl
def load_model(backend: str, config: ExperimentConfig) -> LoadedModel | None:
    """Load ``config.model`` with Transformers when ``backend`` is ``pytorch``."""
    if backend != NAME:
        return None
    # The loader brings torch and transformers: imported when a model is loaded, not when lem loads the plugin.
    from lem_backend_pytorch.loader import load

    return load(config)


@hookimpl
def generate_stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent] | None:
    """Serve ``requests`` on a model this backend loaded: one event per sequence per decode step."""
    if model.backend != NAME:
        return None
    if model.handle.options.engine == "continuous":
        # Serving modules import torch: only once a model is served (see load_model).
        from lem_backend_pytorch.continuous import engine as continuous

        return continuous.stream(model, requests, params, config)
    from lem_backend_pytorch.streaming import stream  # torch and transformers, as above

    return stream(model, requests, params, config)


@hookimpl
def register_presets() -> Mapping[str, Mapping[str, Any]]:
    """``pytorch-optimized``, ``pytorch-speculative``, ``pytorch-compatible``."""
    return PRESETS


@cache
def _has_cuda() -> bool:
    import torch  # only when a check needs to know: this module loads with every lem command

    return bool(torch.cuda.is_available())


def _on_cpu(o: opts.PytorchOptions) -> bool:
    if o.device_map is not None:
        return o.device_map == "cpu"
    return o.device == "cpu" or (o.device == "auto" and not _has_cuda())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _combinations(config: ExperimentConfig, o: opts.PytorchOptions) -> Iterator[Problem]:
    g, q = config.generation, config.quantization
    random_weights = config.model.startswith("random:") or config.load_format == "random"
    if o.attn_implementation.startswith("flash_attention"):
        package = "flash_attn" if o.attn_implementation == "flash_attention_2" else "flash_attn_interface"
        if not _installed(package):
            yield error(
                "pytorch.attn_implementation",
                f"needs the {package} package, which is not installed",
                "pip install flash-attn, or use attn_implementation = 'sdpa'",
                o.attn_implementation,
            )
        elif _on_cpu(o):
            yield error(
                "pytorch.attn_implementation",
                "FlashAttention runs on NVIDIA GPUs only, this runs on the CPU",
                "use attn_implementation = 'sdpa'",
                o.attn_implementation,
            )
    if q.method in ("bnb-4bit", "bnb-8bit") and not _installed("bitsandbytes"):
        yield error(
            "quantization.method",
            "needs the bitsandbytes package, which is not installed",
            "pip install bitsandbytes",
            q.method,
        )
    # An adapter path that does not exist, or a blank one, is already the core's error: fix it before installing peft.
    adapter_missing = config.adapter is not None and (
        not config.adapter.strip()
        or (config.adapter.startswith(("/", ".", "~")) and not os.path.exists(os.path.expanduser(config.adapter)))
    )
    if config.adapter and not adapter_missing and not _installed("peft"):
        yield error(
            "adapter",
            "a LoRA adapter needs the peft package, which is not installed",
            "pip install peft",
            config.adapter,
        )
    if q.method != "none" and random_weights:
        yield error(
            "quantization.method",
            "random-weight models are built unquantized",
            "set quantization.method = 'none', or load a real checkpoint",
            q.method,
        )
    if g.num_beams > 1:
        yield warning(
            "generation.num_beams",
            "beam search cannot stream in transformers: each request gets one "
            "event with all its tokens when its batch ends, so TTFT and ITL are not per-token",
            "use num_beams = 1 for latency measurements",
            g.num_beams,
        )
    if o.assistant_model:
        if batch_size_for(config) > 1:
            yield error(
                "pytorch.assistant_model",
                "assisted generation runs at batch size 1 only in transformers",
                "set batching.batch_size = 1 (and traffic.concurrency = 1)",
                o.assistant_model,
            )
        if g.num_beams > 1:
            yield error(
                "pytorch.assistant_model",
                "assisted generation does not combine with beam search",
                "set generation.num_beams = 1",
                o.assistant_model,
            )
        if o.torch_compile or o.cache_implementation in ("static", "offloaded_static"):
            yield error(
                "pytorch.assistant_model",
                "assisted generation does not support a static KV cache",
                "set pytorch.torch_compile = false and leave cache_implementation unset",
                o.assistant_model,
            )
    if o.torch_compile:
        yield from _compile(config, o)
    if o.max_memory is not None and o.device_map is None:
        yield warning("pytorch.max_memory", "is only used with a device_map", 'add device_map = "auto"')
    if "low_cpu_mem_usage" in config.options_for(NAME):
        if transformers_major() >= 5:
            yield warning("pytorch.low_cpu_mem_usage", "transformers >= 5 always loads with low memory; it is ignored")
    if config.sharding.pipeline_parallel_size > 1:
        yield error(
            "sharding.pipeline_parallel_size",
            "the pytorch backend has no pipeline parallelism",
            'use tensor_parallel_size, or [pytorch] device_map = "auto" (layers over GPUs), and leave this at 1',
            config.sharding.pipeline_parallel_size,
        )
    if config.sharding.tensor_parallel_size > 1:
        yield from tp_problems(config, o, _on_cpu(o))
    t = config.traffic
    if t.mode == "concurrency" and t.concurrency and config.batching.batch_size not in (1, t.concurrency):
        yield warning(
            "batching.batch_size",
            f"under closed-loop traffic batches hold traffic.concurrency "
            f"({t.concurrency}) requests; batching.batch_size is ignored",
            value=config.batching.batch_size,
        )


def _compile(config: ExperimentConfig, o: opts.PytorchOptions) -> Iterator[Problem]:
    if not o.use_cache or o.cache_implementation not in (None, "static", "offloaded_static"):
        yield error(
            "pytorch.torch_compile",
            "transformers compiles the decode step only over a static KV cache",
            "leave cache_implementation unset (or 'static') and use_cache = true",
            o.torch_compile,
        )
    if _on_cpu(o):
        yield warning(
            "pytorch.torch_compile",
            "transformers compiles generate only on GPUs; on the CPU it has no effect",
            "set torch_compile = false on the CPU",
            o.torch_compile,
        )
    if config.batching.strategy in ("dynamic", "sorted_dynamic"):
        yield warning(
            "batching.strategy",
            "with torch_compile every new batch size or length recompiles; "
            "the compile in load_model covers batching.batch_size only",
            "use 'static' or 'sorted_static' with a num_prompts that batch_size divides",
            config.batching.strategy,
        )


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[pytorch]`` (unknown keys, types) and combinations this backend cannot serve."""
    if config.backend != NAME:
        return []
    problems = opts.check(config.options_for(NAME))
    if problems:
        return problems
    o = opts.resolve(config)
    if o.engine == "continuous":
        # The static engine's own checks (beams, assisted batching, compile) give way to the continuous ones.
        shared = [p for p in _combinations(config, o) if not p.path.startswith(_STATIC_ONLY)]
        return [*shared, *continuous_options.problems(config, o, _on_cpu(o))]
    if o.continuous is not None:
        problems.append(warning("pytorch.continuous", "is only used with engine = 'continuous'"))
    return [*problems, *_combinations(config, o)]
