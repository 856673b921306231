"""Serving requests through vLLM and turning its outputs into ``TokenEvent``s.

Streaming mode: lem's serving driver (:mod:`lem.serving`) submits every
request to ``AsyncLLM.generate`` with delta outputs when it arrives
(``Request.arrival_ns``), or, under closed-loop traffic, as soon as fewer than
``traffic.concurrency`` are in flight, so the engine batches them continuously
as it would in production. Each delta vLLM emits becomes one event, stamped
with ``time.monotonic_ns()`` when it reaches us: TTFT and ITL are measured
from the stream, not estimated. A request vLLM fails on its own (its
``generate`` raises ``EngineGenerateError``, or the engine aborts it) is a
failed request; a dead engine ends the stream with its exception.

Offline mode: ``LLM.generate`` on all requests at once. There is no stream,
so each request gets its submission event and then the engine's own
first-token and last-token timestamps (``RequestOutput.metrics``, recorded by
vLLM in the engine core) when vLLM reports them; otherwise one event at
completion. :func:`offline_timing` says which, and the model's ``info`` records it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from lem import serving
from lem.config import TrafficConfig
from lem.types import Request, TokenEvent
from lem_backend_vllm.engine import Engine

LoraFor = Callable[[Request], Any]


def _prompt(req: Request) -> Any:
    # Token ids when the prompt source made them: input lengths stay exact.
    if req.prompt_token_ids is not None:
        return {"prompt_token_ids": list(req.prompt_token_ids)}
    return req.prompt


def _submitter(llm: Any, sp: Any, lora_for: LoraFor) -> serving.Submit:
    """``submit(request)`` for lem's serving driver: ``AsyncLLM.generate`` with delta outputs."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineGenerateError

    tag = uuid.uuid4().hex[:8]  # engine request ids must be unique across cycles

    async def submit(req: Request) -> AsyncIterator[serving.Delta]:
        try:
            async for out in llm.generate(_prompt(req), sp, f"lem-{tag}-{req.id}", lora_request=lora_for(req)):
                ids = tuple(tid for completion in out.outputs for tid in completion.token_ids)
                failed = [c.finish_reason for c in out.outputs if c.finish_reason in ("abort", "error")]
                if out.finished and failed:
                    raise serving.RequestFailed(f"vLLM finished the request with finish_reason={failed[0]!r}")
                yield serving.Delta(ids, finished=out.finished)
        except (EngineGenerateError, VLLMClientError) as exc:
            # One request failed (vLLM says recoverable); EngineDeadError and the rest end the stream.
            cause = exc.__cause__ or exc
            raise serving.RequestFailed(f"vLLM: {type(cause).__name__}: {cause}") from exc

    return submit


def stream(
    engine: Engine, requests: Sequence[Request], sp: Any, traffic: TrafficConfig, lora_for: LoraFor
) -> Iterator[TokenEvent]:
    """Serve ``requests`` on the engine's loop through lem's serving driver; the events as they arrive."""
    assert engine.serving.loop is not None, "offline engines have no event loop"
    return serving.stream(engine.serving.loop, requests, traffic, _submitter(engine.engine, sp, lora_for))


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
