"""Serving requests through vLLM and turning its outputs into ``TokenEvent``s.

Streaming mode: every request goes to ``AsyncLLM.generate`` with delta
outputs when it arrives (``Request.arrival_ns``), or, under closed-loop
traffic, as soon as fewer than ``traffic.concurrency`` are in flight, so the
engine batches them continuously as it would in production. Each delta vLLM
emits becomes one event, stamped with ``time.monotonic_ns()`` when it reaches
us: TTFT and ITL are measured from the stream, not estimated.

Offline mode: ``LLM.generate`` on all requests at once. There is no stream,
so each request gets its submission event and then the engine's own
first-token and last-token timestamps (``RequestOutput.metrics``, recorded by
vLLM in the engine core) when vLLM reports them; otherwise one event at
completion. :func:`offline_timing` says which, and the model's ``info`` records it.
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lem.config import TrafficConfig
from lem.types import Request, TokenEvent
from lem_backend_vllm.engine import Engine

_DONE = object()

LoraFor = Callable[[Request], Any]


def _prompt(req: Request) -> Any:
    # Token ids when the prompt source made them: input lengths stay exact.
    if req.prompt_token_ids is not None:
        return {"prompt_token_ids": list(req.prompt_token_ids)}
    return req.prompt


async def _one(llm: Any, req: Request, sp: Any, request_id: str, lora: Any, put: Callable[[Any], None]) -> None:
    async for out in llm.generate(_prompt(req), sp, request_id, lora_request=lora):
        t_ns = time.monotonic_ns()
        ids = tuple(tid for completion in out.outputs for tid in completion.token_ids)
        if ids or out.finished:
            put(TokenEvent(req.id, t_ns, len(ids), out.finished, ids))


async def _serve(
    llm: Any,
    requests: Sequence[Request],
    sp: Any,
    traffic: TrafficConfig,
    lora_for: LoraFor,
    put: Callable[[Any], None],
) -> None:
    tag = uuid.uuid4().hex[:8]  # engine request ids must be unique across cycles
    closed_loop = traffic.mode == "concurrency"
    slots = asyncio.Semaphore(traffic.concurrency or 1) if closed_loop else None
    tasks: list[asyncio.Task[None]] = []

    async def run(req: Request) -> None:
        try:
            await _one(llm, req, sp, f"lem-{tag}-{req.id}", lora_for(req), put)
        finally:
            if slots is not None:
                slots.release()

    try:
        for req in sorted(requests, key=lambda r: r.arrival_ns or 0):
            if slots is not None:
                await slots.acquire()
            elif req.arrival_ns is not None:
                delay = (req.arrival_ns - time.monotonic_ns()) / 1e9
                if delay > 0:
                    await asyncio.sleep(delay)
            if closed_loop or req.arrival_ns is None:
                # The request arrives now, when we submit it: tell the core so latencies count from here.
                put(TokenEvent(req.id, time.monotonic_ns(), 0))
            tasks.append(asyncio.create_task(run(req)))
        await asyncio.gather(*tasks)
    except BaseException:
        # Cancelling generate() makes AsyncLLM abort the request inside the engine.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        put(_DONE)


def stream(
    engine: Engine, requests: Sequence[Request], sp: Any, traffic: TrafficConfig, lora_for: LoraFor
) -> Iterator[TokenEvent]:
    """Start serving ``requests`` on the engine's loop and return the events as they arrive."""
    events: queue.Queue[Any] = queue.Queue()
    future = engine.submit(_serve(engine.engine, requests, sp, traffic, lora_for, events.put))

    def drain() -> Iterator[TokenEvent]:
        try:
            while (item := events.get()) is not _DONE:
                yield item
            future.result()  # re-raise what failed on the loop
        finally:
            if not future.done():  # the consumer stopped early: abort what is still running
                future.cancel()

    return drain()


def offline_timing(output: Any) -> tuple[int, int] | None:
    """vLLM's own (first token, last token) ``monotonic`` timestamps of a finished request, in ns, if it has them."""
    metrics = getattr(output, "metrics", None)
    first = getattr(metrics, "first_token_ts", None)
    last = getattr(metrics, "last_token_ts", None)
    if not first or not last:
        return None
    return int(first * 1e9), int(last * 1e9)


def offline(engine: Engine, requests: Sequence[Request], sp: Any, lora_for: LoraFor) -> Iterator[TokenEvent]:
    """Run ``LLM.generate`` on every request at once; events per request, at completion."""

    def run() -> Iterator[TokenEvent]:
        llm = engine.engine
        loras = [lora_for(r) for r in requests]
        t_submit = time.monotonic_ns()
        outputs = llm.generate(
            [_prompt(r) for r in requests],
            sp,
            use_tqdm=False,
            lora_request=loras if any(x is not None for x in loras) else None,
        )
        t_end = time.monotonic_ns()
        events = [TokenEvent(r.id, t_submit, 0) for r in requests]
        for req, out in zip(requests, outputs, strict=True):
            ids = tuple(tid for completion in out.outputs for tid in completion.token_ids)
            timing = offline_timing(out)
            if timing is not None and len(ids) > 1 and t_submit <= timing[0] <= timing[1] <= t_end:
                first, last = timing
                events.append(TokenEvent(req.id, first, 1, False, ids[:1]))
                events.append(TokenEvent(req.id, last, len(ids) - 1, True, ids[1:]))
            else:
                events.append(TokenEvent(req.id, t_end, len(ids), True, ids))
        yield from sorted(events, key=lambda e: e.t_ns)

    return run()


def beam_search(engine: Engine, requests: Sequence[Request], bp: Any) -> Iterator[TokenEvent]:
    """``LLM.beam_search`` (offline only): one event per request when all are done."""

    def run() -> Iterator[TokenEvent]:
        t_submit = time.monotonic_ns()
        outputs = engine.engine.beam_search([_prompt(r) for r in requests], bp)
        t_end = time.monotonic_ns()
        events = [TokenEvent(r.id, t_submit, 0) for r in requests]
        for req, out in zip(requests, outputs, strict=True):
            best = out.sequences[0]
            n_prompt = req.input_tokens if req.prompt_token_ids is None else len(req.prompt_token_ids)
            ids = tuple(best.tokens[n_prompt:])
            events.append(TokenEvent(req.id, t_end, len(ids), True, ids))
        yield from events

    return run()
