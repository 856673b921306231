"""``[pytorch.continuous]``: the continuous engine's settings, mapped onto transformers' ``ContinuousBatchingConfig``.

:data:`TABLE` is the one visible table. Transformers renamed fields
between 5.x releases (``block_size`` in 5.17 is ``page_size`` from 5.18 on),
so each key lists the field names it may go to, newest first, and
:func:`config_kwargs` picks the one the installed ``ContinuousBatchingConfig``
has. A key that no installed field takes is an error naming the key and the
installed version, never silently dropped.

:func:`problems` also refuses what continuous batching cannot do: beam search,
assisted generation, a static-cache compile, and the logits processors the
installed transformers marks as unsupported under continuous batching
(``supports_continuous_batching``), which it would otherwise drop with a log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import metadata
from typing import Any

from lem import options
from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.options import Option, Table, argument_for
from lem.types import Problem, error, warning
from lem_backend_pytorch.options import PytorchOptions

_CB = "ContinuousBatchingConfig"

#: The one visible table: our key -> ``ContinuousBatchingConfig`` field (older names as aliases).
#: Unset keys are not passed: transformers then sizes the cache from free memory and decides itself.
TABLE = Table(
    "pytorch.continuous",
    (
        Option("page_size", int, "tokens per KV page", call=_CB, aliases=("block_size",), ge=1),
        Option("num_blocks", int, "KV cache blocks", call=_CB, ge=1),
        Option("max_batch_tokens", int, "tokens per forward", call=_CB, ge=1),
        Option("max_requests_per_batch", int, "requests per forward", call=_CB, ge=1),
        Option("max_memory_percent", float, "share of free memory for the cache", call=_CB, gt=0, le=1),
        Option(
            "cuda_graphs",
            bool,
            "replay each padded batch shape as a CUDA graph (unset: on with CUDA unless quantized; CPU: ignored)",
            call=_CB,
            argument="use_cuda_graph",
        ),
        Option(
            "graph_q_padding",
            int,
            "with graphs or compile: batch tokens are padded to a multiple of this (0: transformers' preset, 64)",
            call=_CB,
            argument="q_padding_interval_size",
            ge=0,
        ),
        Option(
            "graph_kv_padding",
            int,
            "with graphs or compile: cache tokens read are padded to a multiple of this (0: preset, 16384)",
            call=_CB,
            argument="kv_padding_interval_size",
            ge=0,
        ),
        Option(
            "compile_level",
            int,
            "torch.compile level (0: none)",
            call=_CB,
            argument="default_compile_level",
            ge=0,
            le=3,
        ),
        Option("scheduler", str, "a scheduler name of the installed transformers", call=_CB, argument="scheduler_type"),
        Option("prefix_sharing", bool, "share KV blocks of common prefixes", call=_CB, argument="allow_block_sharing"),
        Option(
            "async_batching", bool, "prepare the next batch while one runs", call=_CB, argument="use_async_batching"
        ),
    ),
    doc="transformers' continuous batching manager (engine = 'continuous')",
    calls={_CB: "transformers:ContinuousBatchingConfig"},
)


#: [generation] keys with a non-neutral value -> the transformers logits processor they create.
PROCESSORS = {
    "min_output_tokens": "MinNewTokensLengthLogitsProcessor",
    "repetition_penalty": "RepetitionPenaltyLogitsProcessor",
    "no_repeat_ngram_size": "NoRepeatNGramLogitsProcessor",
    "min_p": "MinPLogitsWarper",
}


def transformers_version() -> str:
    """The installed transformers version ("not installed" when absent)."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "not installed"


@cache
def installed_fields() -> frozenset[str] | None:
    """Field names of the installed ``ContinuousBatchingConfig``; ``None`` when transformers has none."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        return None
    return frozenset(f.name for f in dataclasses.fields(ContinuousBatchingConfig))


@cache
def installed_schedulers() -> tuple[str, ...]:
    """Scheduler names the installed transformers knows (``SCHEDULER_MAPPING``)."""
    try:
        from transformers.generation.continuous_batching.scheduler import SCHEDULER_MAPPING
    except ImportError:
        return ()
    return tuple(SCHEDULER_MAPPING)


def _field(key: str, fields: frozenset[str]) -> str | None:
    return argument_for(TABLE[key], fields)


def check(table: Mapping[str, Any]) -> Iterator[Problem]:
    """Unknown keys, wrong types, and keys or values the installed transformers does not take."""
    fields = installed_fields()
    if fields is None:
        yield error(
            "pytorch.engine",
            f"transformers {transformers_version()} has no continuous batching (ContinuousBatchingConfig)",
            "pip install 'transformers>=5.17', or use engine = 'static'",
            "continuous",
        )
        return
    problems = options.check(TABLE, table)
    yield from problems
    wrong = {p.path for p in problems}
    for key, value in table.items():
        path = f"pytorch.continuous.{key}"
        if path in wrong:
            continue
        if _field(key, fields) is None:
            yield error(
                path,
                f"transformers {transformers_version()}'s ContinuousBatchingConfig has no "
                f"{' or '.join(TABLE[key].names)}",
                "remove the key, or install a transformers release that has it",
                value,
            )
        elif key == "scheduler" and value not in installed_schedulers():
            yield error(
                path,
                f"transformers {transformers_version()} has no scheduler {value!r}",
                f"use one of {installed_schedulers()}",
                value,
            )


def cuda_graphs(table: Mapping[str, Any] | None, device_type: str, quantized: bool) -> tuple[bool | None, str]:
    """What lem passes as ``use_cuda_graph`` (``None``: nothing, transformers decides) and why, in one line.

    On CUDA graphs are lem's default: transformers' own default turns them off
    for sdpa and eager attention (their masks get padded), yet with them its
    ``generate_batch`` ran 2.3x faster on an 8B model (issue 31). Quantized
    weights are left to transformers: their kernels are not known to capture.
    Off CUDA there is nothing to capture, so an explicit ``true`` is dropped.
    """
    asked = (table or {}).get("cuda_graphs")
    if device_type != "cuda":
        if asked:
            return None, f"cuda_graphs = true ignored: CUDA graphs need a CUDA device, the model is on {device_type}"
        return None, f"off: no CUDA graphs on {device_type}"
    if asked is not None:
        return bool(asked), f"{'on' if asked else 'off'}: pytorch.continuous.cuda_graphs = {str(asked).lower()}"
    if quantized:
        return None, "left to transformers: quantized weights (set cuda_graphs = true to force them)"
    return True, "on: lem's default on CUDA (set pytorch.continuous.cuda_graphs = false to turn them off)"


def config_kwargs(table: Mapping[str, Any] | None, seed: int, graphs: bool | None = None) -> dict[str, Any]:
    """Keyword arguments of the installed ``ContinuousBatchingConfig`` for a (validated) table.

    :param graphs: ``use_cuda_graph`` as :func:`cuda_graphs` resolved it (``None``: not passed),
        in place of the table's ``cuda_graphs``.
    """
    fields = installed_fields()
    if fields is None:
        raise BackendError(f"transformers {transformers_version()} has no continuous batching")
    kwargs: dict[str, Any] = {}
    for key, value in (table or {}).items():
        name = _field(key, fields)
        if name is None:
            raise BackendError(f"pytorch.continuous.{key}: transformers {transformers_version()} does not take it")
        if key != "cuda_graphs":
            kwargs[name] = value
    graph_field = _field("cuda_graphs", fields)
    if graphs is not None and graph_field is not None:
        kwargs[graph_field] = graphs
    if "seed" in fields:
        kwargs["seed"] = seed  # sampling in the manager draws from its own generator
    if "auto_switch_to_flash" in fields:
        # The attention is what pytorch.attn_implementation says, as with the static engine: comparable runs.
        kwargs["auto_switch_to_flash"] = False
    return kwargs


def _unsupported_processors(config: ExperimentConfig) -> Iterator[Problem]:
    from transformers.generation import logits_process

    g = config.generation
    active = {
        "min_output_tokens": g.min_output_tokens > 0,
        "repetition_penalty": g.repetition_penalty != 1.0,
        "no_repeat_ngram_size": g.no_repeat_ngram_size > 0,
        "min_p": not g.greedy and g.min_p > 0,
    }
    for key, used in active.items():
        cls = getattr(logits_process, PROCESSORS[key], None)
        if used and getattr(cls, "supports_continuous_batching", None) is not True:
            yield error(
                f"generation.{key}",
                f"transformers {transformers_version()} does not apply it under continuous batching "
                f"({PROCESSORS[key]} is not marked as supported)",
                "leave it at its default, or use [pytorch] engine = 'static'",
                getattr(g, key),
            )


def problems(config: ExperimentConfig, o: PytorchOptions, on_cpu: bool) -> Iterator[Problem]:
    """What ``engine = "continuous"`` cannot do with this config (errors), and what it ignores (warnings)."""
    table = o.continuous or {}
    yield from check(table)
    if installed_fields() is None:
        return
    hint = "use [pytorch] engine = 'static' for it"
    if config.generation.num_beams > 1:
        yield error(
            "generation.num_beams", "continuous batching does not do beam search", hint, config.generation.num_beams
        )
    if o.assistant_model:
        yield error("pytorch.assistant_model", "continuous batching does not do assisted generation", hint)
    if o.torch_compile:
        yield error(
            "pytorch.torch_compile",
            "the continuous engine compiles through [pytorch.continuous] compile_level, not a static cache",
            "set torch_compile = false and pytorch.continuous.compile_level = 1-3",
            o.torch_compile,
        )
    if o.cache_implementation is not None or not o.use_cache:
        yield error(
            "pytorch.cache_implementation" if o.cache_implementation else "pytorch.use_cache",
            "the continuous engine always uses its paged KV cache",
            "leave cache_implementation unset and use_cache = true",
        )
    if o.attn_implementation == "flex_attention":
        yield error(
            "pytorch.attn_implementation",
            "transformers' continuous batching takes eager, sdpa or flash attention",
            "use attn_implementation = 'sdpa'",
            o.attn_implementation,
        )
    if isinstance(o.device_map, Mapping) or o.device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        yield error(
            "pytorch.device_map",
            "the continuous engine runs a model on one device",
            'use device = "cuda" (or device_map = "cuda:N")',
        )
    yield from _unsupported_processors(config)
    b = config.batching
    if b.batch_size != 1 or b.strategy != "static" or b.max_tokens_per_batch is not None:
        yield warning(
            "batching",
            "is ignored by the continuous engine: its scheduler forms the batches",
            "size them with [pytorch.continuous] max_requests_per_batch and max_batch_tokens",
        )
    if on_cpu and table.get("cuda_graphs") is True:
        yield warning(
            "pytorch.continuous.cuda_graphs",
            "is ignored on the CPU: CUDA graphs need a CUDA device (the results record this)",
            "remove it, or run on a GPU",
            True,
        )
    if on_cpu and "num_blocks" not in table:
        yield warning(
            "pytorch.continuous.num_blocks",
            "unset on the CPU: transformers sizes the paged cache from system memory (thousands of blocks, slow)",
            "set num_blocks (and page_size, max_batch_tokens) to what the workload needs",
        )
