"""``[pytorch] engine = "continuous"``: requests served through transformers' continuous batching.

``model.init_continuous_batching(...)`` returns a ``ContinuousBatchingManager``:
a paged KV cache, a scheduler and a generation thread of its own that admits
requests between decode steps. lem's serving driver (:mod:`lem.serving`)
submits each request with ``add_request(..., streaming=True)`` when it arrives
(open loop) or when a slot frees (closed loop), so requests join the running
batch as they would on a server.

The bridge from the manager's thread to the driver's asyncio loop is the
manager's own ``register_result_handler``: registered from the loop before the
request is added, it makes the manager hand each output to the loop with
``call_soon_threadsafe``, where it lands on that request's ``asyncio.Queue``.
A streaming output carries all tokens so far; the delta is what is new, capped
at ``max_output_tokens`` so counts are exact. EOS ends a request (counted)
unless ``ignore_eos``, which passes no EOS id (``-1``), as the static engine does.

On CUDA the manager replays CUDA graphs unless ``[pytorch.continuous]
cuda_graphs = false`` (:func:`~lem_backend_pytorch.continuous.options.cuda_graphs`
decides what is passed; ``info["continuous"]["cuda_graphs"]`` records what
transformers resolved and why).

The manager and its event loop are built in ``load_model`` (so their cache
allocation and any CUDA-graph capture fall in the load window, not in a cycle)
for ``[generation]``; ``generate_stream`` rebuilds them only if called with other
decoding parameters (``max_output_tokens`` and ``ignore_eos`` go with each request:
a prefill-only pass of one token does not rebuild). The loop is a
:class:`lem.serving.EngineHandle`'s, whose close (idempotent, also at exit)
cancels the requests in flight, runs this engine's one shutdown, stopping the
generation thread (hard stop: nothing is pending by then), and closes the
loop; no thread is left. A request the driver cancels (timeout, a consumer
that stops early, Ctrl-C) is cancelled in the manager.

The paged cache is sized by ``[pytorch.continuous] num_blocks`` x ``page_size``
(or from free memory). A request needs ``prompt + max_output_tokens - 1`` tokens
of it and cannot be split or offloaded below that: transformers then stops its
generation thread for every request. So :func:`start` refuses a cache that
cannot hold the shortest request the dataset can give, naming the key, and a
request longer than the cache fails on its own before it reaches the manager
(the others go on). Errors the manager reports fail their requests, with the
lem key that changes them (:func:`_reason`); a generation thread that died
fails every request it will not answer (never the whole stream, whatever the
timing), and the next call builds a new manager.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import attrs
import torch
from transformers import ContinuousBatchingConfig
from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

from lem import serving
from lem.config import DatasetConfig, ExperimentConfig, GenerationConfig
from lem.errors import BackendError
from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_pytorch.continuous.options import config_kwargs, cuda_graphs, transformers_version
from lem_backend_pytorch.decoding import build_generation_config

#: Seconds between the watchdog's checks that the generation thread is alive.
POLL_S = 1.0
#: Seconds ``close`` waits for the generation thread to end.
STOP_TIMEOUT_S = 30.0


@attrs.define
class ContinuousEngine:
    """A started manager, the event loop its requests are served from, and what it was built for."""

    manager: Any
    serving: serving.EngineHandle
    params: GenerationConfig
    info: dict[str, Any]
    tag: str = attrs.field(factory=lambda: uuid.uuid4().hex[:8])
    counter: Iterator[int] = attrs.field(factory=itertools.count)
    #: The output queue of every request in flight (the watchdog wakes them if the thread dies).
    waiting: dict[str, asyncio.Queue[Any]] = attrs.field(factory=dict)
    watchdog: asyncio.Task[None] | None = None
    #: Tokens of KV the paged cache holds for one request (``None``: not known for this transformers or model).
    capacity: int | None = None


#: Put on a request's queue by the watchdog: the generation thread is gone.
_STOPPED = object()


async def _watch(engine: ContinuousEngine) -> None:
    """Wake every waiting request once the generation thread has died (it would otherwise wait forever)."""
    while True:
        await asyncio.sleep(POLL_S)
        if not engine.manager.is_running():
            for outputs in list(engine.waiting.values()):
                outputs.put_nowait(_STOPPED)


def _resolved(cb_config: Any) -> dict[str, Any]:
    """The manager's ContinuousBatchingConfig after it sized the cache, as plain values (for ``info``)."""
    plain = (str, int, float, bool, type(None))
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cb_config):
        value = getattr(cb_config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value if isinstance(value, plain) else str(value)
    return out


def _graphs_used(cb_config: Any) -> list[bool]:
    """``[varlen, decode]``: whether the manager replays CUDA graphs on each path, as transformers resolved it."""
    used = getattr(cb_config, "use_cuda_graph", None)
    pair = used if isinstance(used, (tuple, list)) else (used, used)
    return [bool(x) for x in pair]


def _grad_mode(torch: Any) -> Any:
    """The autograd mode to build, warm up and start the manager in: the one its thread will run in.

    Since transformers 5.2x the manager's thread adopts the inference mode of the
    thread that starts it (``_run_generation_loop(use_inference_mode=...)``).
    Before that (5.17 on an H200: "Inplace update to inference tensor outside
    InferenceMode") the thread runs under ``no_grad`` only, and a paged cache
    allocated in inference mode cannot be written there.
    """
    loop = getattr(ContinuousBatchingManager, "_run_generation_loop", None)
    adopts = loop is not None and "use_inference_mode" in inspect.signature(loop).parameters
    return torch.inference_mode() if adopts else torch.no_grad()


#: What the manager says when a request cannot get the cache blocks it needs (transformers 5.2x).
_CACHE_FULL = ("No requests can be scheduled", "Memory footprint", "Invalid values: max_batch_tokens")


def _cache_shape(manager: Any) -> tuple[int, int] | None:
    """``(page_size, num_blocks)`` of the full-attention paged cache the manager built (``None``: not known).

    A request's KV grows with its length only in full-attention layers (a sliding
    window's stays bounded), so their allocator is what one request must fit in.
    """
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    allocators = getattr(cache, "cache_allocators", None)
    if isinstance(allocators, dict):  # transformers >= 5.2x: one allocator per attention type
        full = allocators.get("full_attention")
        page, blocks = getattr(full, "tokens_per_page", None), getattr(full, "num_blocks", None)
    else:  # older: one block pool that every layer group draws from, a request's blocks once per group
        groups = getattr(cache, "num_full_attention_groups", None)
        if not isinstance(groups, int) or groups < 1 or getattr(cache, "num_sliding_attention_groups", 0):
            return None  # a sliding window's share of the pool depends on the request: not known up front
        page, blocks = getattr(cache, "block_size", None), getattr(cache, "num_blocks", None)
        blocks = blocks // groups if isinstance(blocks, int) else None
    if not isinstance(page, int) or not isinstance(blocks, int):
        return None
    return page, blocks


def tokens_needed(prompt_tokens: int, max_output_tokens: int) -> int:
    """Tokens of KV cache one request takes at its end (the last token produced is never written)."""
    return prompt_tokens + max(max_output_tokens, 1) - 1


def shortest_prompt(dataset: DatasetConfig) -> int:
    """The fewest prompt tokens the dataset can give (exact for fixed synthetic lengths, else a lower bound)."""
    shortest = 1
    if dataset.source == "synthetic":
        fixed = dataset.input_length_distribution == "fixed"
        shortest = dataset.input_length if fixed else dataset.input_length_min or 1
    if dataset.max_input_tokens is not None:
        shortest = min(shortest, dataset.max_input_tokens)
    return max(shortest, 1)


def too_small(shape: tuple[int, int], table: Any, needed: int, what: str) -> str:
    """One line: the cache holds fewer tokens than ``what`` needs; which ``[pytorch.continuous]`` key to raise."""
    page, blocks = shape
    given = (table or {}).get("num_blocks")
    key = f"pytorch.continuous.num_blocks = {given}" if given is not None else "pytorch.continuous.num_blocks (unset)"
    plural = "s" if blocks != 1 else ""
    return (
        f"{key}: the paged KV cache holds {page * blocks} tokens ({blocks} block{plural} of {page}), fewer than "
        f"{what} needs ({needed}); set num_blocks to at least {math.ceil(needed / page)}, or shorten the requests"
    )


def _reason(error: object) -> str:
    """The manager's error, with the lem keys that change it when it is about the cache."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    if any(words in text for words in _CACHE_FULL) or isinstance(error, MemoryError):
        return (
            f"{text} (the paged KV cache is too small: raise pytorch.continuous.num_blocks or "
            "max_memory_percent, or lower max_batch_tokens)"
        )
    return text


def start(model: LoadedModel, params: GenerationConfig, config: ExperimentConfig) -> ContinuousEngine:
    """Build the manager for ``params`` on the loaded model, warm it up (CUDA graphs, compile) and start its thread."""
    handle = model.handle
    generation_config = build_generation_config(params, handle.eos_token_ids, handle.pad_token_id, handle.options)
    if generation_config.eos_token_id is None:
        generation_config.eos_token_id = -1  # transformers' "no EOS" (requests pass their own anyway)
    device_type = torch.device(handle.model.device).type
    graphs, graphs_note = cuda_graphs(handle.options.continuous, device_type, config.quantization.method != "none")
    kwargs = config_kwargs(handle.options.continuous, config.seed, graphs)
    engine_handle = serving.EngineHandle("lem-pytorch-continuous")
    try:
        with _grad_mode(torch):
            manager = handle.model.init_continuous_batching(
                generation_config=generation_config,
                continuous_batching_config=ContinuousBatchingConfig(**kwargs),
            )
            manager.warmup()
            manager.start()
    except (MemoryError, ValueError) as exc:
        engine_handle.close()
        if not any(words in str(exc) for words in _CACHE_FULL):
            raise
        raise BackendError(f"transformers could not size the paged KV cache: {_reason(exc)}") from exc
    except BaseException:
        engine_handle.close()
        raise
    engine_handle.shutdown = lambda: _stop(manager)
    shape = _cache_shape(manager)
    needed = tokens_needed(shortest_prompt(config.dataset), params.max_output_tokens)
    if shape is not None and shape[0] * shape[1] < needed:
        engine_handle.close()
        what = f"one request of {shortest_prompt(config.dataset)} prompt + {params.max_output_tokens} output tokens"
        raise BackendError(too_small(shape, handle.options.continuous, needed, what))
    info = {
        "transformers": transformers_version(),
        "continuous_batching_config_passed": dict(kwargs),
        "continuous_batching_config": _resolved(manager.continuous_batching_config),
        # (varlen, decode) as transformers resolved them, and why lem asked for that.
        "cuda_graphs": {
            "used": _graphs_used(manager.continuous_batching_config),
            "note": graphs_note,
        },
        "attn_implementation_used": str(getattr(handle.model.config, "_attn_implementation", None)),
    }
    capacity = None if shape is None else shape[0] * shape[1]
    return ContinuousEngine(manager, engine_handle, params, info, capacity=capacity)


def _stop(manager: Any) -> None:
    """Stop the manager's generation thread and free what it holds."""
    if manager.is_running():
        manager.stop(block=True, timeout=STOP_TIMEOUT_S, hard_stop=True)
    destroy = getattr(manager, "destroy", None)
    if callable(destroy):
        destroy()


def close(engine: ContinuousEngine) -> None:
    """Cancel the requests in flight, stop the manager's generation thread, then the loop (safe to call twice)."""
    engine.serving.close()


def _prompt_ids(handle: Any, request: Request) -> list[int]:
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    ids: list[int] = handle.tokenizer(request.prompt)["input_ids"]
    return ids


def _gone(manager: Any) -> serving.RequestFailed:
    """A request the stopped generation thread will never answer: it fails, with the thread's own error.

    A failed request, not an aborted stream: whenever the thread dies, its requests
    end the same way (the ones in flight get their error from the manager), the
    experiment's status follows from them, and the next call builds a new manager.
    """
    status = getattr(manager, "background_thread_status", None)
    fatal = getattr(status, "fatal_error", None)
    why = f": {_reason(fatal)}" if fatal is not None else ""
    return serving.RequestFailed(f"transformers' continuous batching thread stopped{why}")


def _submitter(engine: ContinuousEngine, handle: Any, params: GenerationConfig) -> serving.Submit:
    """``submit(request)`` for lem's serving driver: one ``add_request`` and its streamed outputs."""
    manager = engine.manager
    max_new = params.max_output_tokens
    eos: int | list[int] = -1 if params.ignore_eos or not handle.eos_token_ids else list(handle.eos_token_ids)
    cycle = next(engine.counter)

    async def submit(req: Request) -> AsyncIterator[serving.Delta]:
        rid = f"lem-{engine.tag}-{cycle}-{req.id}"  # unique across cycles: the manager outlives them
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        if engine.watchdog is None:
            engine.watchdog = asyncio.create_task(_watch(engine))
        ids = _prompt_ids(handle, req)
        needed = tokens_needed(len(ids), max_new)
        if engine.capacity is not None and needed > engine.capacity:
            # The manager would stop its thread for every request; this one fails alone.
            shape = _cache_shape(manager) or (engine.capacity, 1)
            what = f"this request ({len(ids)} prompt + {max_new} output tokens)"
            raise serving.RequestFailed(too_small(shape, handle.options.continuous, needed, what))
        engine.waiting[rid] = outputs
        # Registered before the request exists, so not even its first token goes to the shared queue.
        manager.register_result_handler(rid, outputs.put_nowait)
        seen = 0
        done = False
        try:
            if (
                manager.add_request(ids, request_id=rid, max_new_tokens=max_new, streaming=True, eos_token_id=eos)
                is None
            ):
                raise _gone(manager)  # refused: the thread has stopped (its handler goes in ``finally``)
            while not done:
                # A plain get, not wait_for: no task per token on the loop, whose thread shares the GIL with decoding.
                out = await outputs.get()
                if out is _STOPPED:
                    raise _gone(manager)
                if out.error is not None:
                    raise serving.RequestFailed(f"transformers continuous batching: {_reason(out.error)}")
                new = out.generated_tokens[seen:max_new]
                seen += len(new)
                done = out.is_finished() or seen >= max_new
                if new or done:
                    yield serving.Delta(tuple(new), finished=done)
        finally:
            engine.waiting.pop(rid, None)
            if not done:
                manager.cancel_request(rid)  # aborted by the driver: free its cache blocks
                router = getattr(manager, "output_router", None)
                if router is not None:
                    router.result_handlers.pop(rid, None)  # a cancelled request may never deliver its last output

    return submit


def _same_manager(built: GenerationConfig, params: GenerationConfig) -> bool:
    # Output length and EOS go with each request; only the decoding parameters are the manager's own.
    return attrs.evolve(built, max_output_tokens=params.max_output_tokens, ignore_eos=params.ignore_eos) == params


def engine_for(model: LoadedModel, params: GenerationConfig, config: ExperimentConfig) -> ContinuousEngine:
    """The model's running engine, rebuilt when its decoding parameters differ (or its thread stopped)."""
    handle = model.handle
    engine: ContinuousEngine | None = handle.continuous
    if engine is not None and _same_manager(engine.params, params) and engine.manager.is_running():
        return engine
    if engine is not None:
        handle.continuous = None
        close(engine)
    engine = start(model, params, config)
    handle.continuous = engine
    if isinstance(model.info, dict):
        model.info["continuous"] = engine.info  # what the results record is the manager now serving
    return engine


def stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent]:
    """Serve ``requests`` through the manager on the traffic schedule; the events as the tokens arrive."""
    engine = engine_for(model, params, config)
    assert engine.serving.loop is not None
    return serving.stream(engine.serving.loop, requests, config.traffic, _submitter(engine, model.handle, params))
