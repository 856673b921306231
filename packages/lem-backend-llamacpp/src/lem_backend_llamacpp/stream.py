"""Serving requests on one ``Llama`` and turning its tokens into ``TokenEvent``s.

llama-cpp-python's ``Llama`` holds one sequence at a time, so requests are
served one after another in arrival order, each not before its
``arrival_ns``: a request that arrives while another is generating waits, and
that wait is part of its TTFT, as it would be for a user of a one-sequence
server. Under closed-loop traffic ``traffic.concurrency`` requests are
outstanding at any time; each is submitted (a zero-token event) when a slot
frees, then waits its turn.

Tokens come from ``Llama.generate``, the generator ``create_completion``
streams from, fed with the prompt's token ids (no re-tokenizing). It yields
token ids one at a time (``create_completion``'s chunks carry only text), so
every event is exactly one token, stamped with ``time.monotonic_ns()`` as it
arrives. llama.cpp's generator never stops by itself: lem stops at
``max_output_tokens`` or at an end-of-generation token (unless
``ignore_eos``), and masks end-of-generation tokens until
``min_output_tokens``.

Why not lem-core's :func:`lem.serving.stream` with a one-request submit:
``Llama.generate`` is a blocking C call per token with no asyncio API, so a
``submit`` would have to run it on a thread of its own and hand every token
over to the loop (``call_soon_threadsafe``), which stamps it and hands it on
to the consumer's thread: two thread hand-overs per token, under the GIL, on
a machine whose cores llama.cpp's own threads are using. Here the token is
stamped on the thread that decoded it, the moment ``generate`` yields it, and
no other thread runs. The same design for the pytorch backend's static engine
(a generate thread and a queue) measured a few percent slower than a bare
``generate`` (see :mod:`lem_backend_pytorch.streaming`); per-token timing must
not get worse, and one sequence at a time gains nothing from the driver's
concurrency. The schedule below is the driver's (arrival times, closed-loop
submission events) written for one sequence; there is no engine to close
beyond ``Llama.close()``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from lem.config import GenerationConfig, TrafficConfig
from lem.types import Request, TokenEvent


@attrs.define
class LlamaHandle:
    """What ``LoadedModel.handle`` holds: the ``Llama`` and its end-of-generation token ids."""

    llm: Any
    eog_ids: frozenset[int]


def eog_ids(llm: Any) -> frozenset[int]:
    """The vocabulary's end-of-generation ids (EOS, EOT, ...), as llama.cpp classifies them."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return frozenset(i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i))


def _min_tokens_processor(handle: LlamaHandle, params: GenerationConfig, produced: list[int]) -> Any:
    if params.min_output_tokens <= 0 or not handle.eog_ids:
        return None
    import numpy as np
    from llama_cpp import LogitsProcessorList

    banned = np.array(sorted(handle.eog_ids))

    def mask_eog(input_ids: Any, scores: Any) -> Any:
        if produced[0] < params.min_output_tokens:
            scores[banned] = -np.inf
        return scores

    return LogitsProcessorList([mask_eog])


def _one(
    handle: LlamaHandle, req: Request, prompt_ids: list[int], params: GenerationConfig, sampling: dict[str, Any]
) -> Iterator[TokenEvent]:
    produced = [0]
    processor = _min_tokens_processor(handle, params, produced)
    if params.max_output_tokens <= 0:
        yield TokenEvent(req.id, time.monotonic_ns(), 0, True)
        return
    gen = handle.llm.generate(prompt_ids, logits_processor=processor, **sampling)
    try:
        for token in gen:
            t_ns = time.monotonic_ns()
            produced[0] += 1
            stop = produced[0] >= params.max_output_tokens or (not params.ignore_eos and token in handle.eog_ids)
            yield TokenEvent(req.id, t_ns, 1, stop, (int(token),))
            if stop:
                return
    finally:
        gen.close()


def serve(
    handle: LlamaHandle,
    requests: Sequence[Request],
    prompt_ids: dict[int, list[int]],
    params: GenerationConfig,
    sampling: dict[str, Any],
    traffic: TrafficConfig,
    seed: int,
) -> Iterator[TokenEvent]:
    """Serve ``requests`` one at a time in arrival order (see the module docstring)."""

    def run() -> Iterator[TokenEvent]:
        ordered = deque(sorted(requests, key=lambda r: r.arrival_ns or 0))
        closed_loop = traffic.mode == "concurrency"
        slots = max(1, traffic.concurrency or 1) if closed_loop else 0
        waiting: deque[Request] = deque()

        def submit_until_full() -> Iterator[TokenEvent]:
            while ordered and len(waiting) < slots:
                req = ordered.popleft()
                waiting.append(req)
                # The request arrives now, when it is submitted: latencies count from here.
                yield TokenEvent(req.id, time.monotonic_ns(), 0)

        while ordered or waiting:
            if closed_loop:
                yield from submit_until_full()
                req = waiting.popleft()
            else:
                req = ordered.popleft()
                if req.arrival_ns is None:
                    yield TokenEvent(req.id, time.monotonic_ns(), 0)
                else:
                    delay = (req.arrival_ns - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        time.sleep(delay)
            # Same seed for every request: a sampled request's tokens do not depend on its place in the cycle.
            handle.llm.set_seed(seed)
            yield from _one(handle, req, prompt_ids[req.id], params, sampling)

    return run()
