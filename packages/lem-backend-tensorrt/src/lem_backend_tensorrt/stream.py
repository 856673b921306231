"""Serving requests through TensorRT-LLM and turning its outputs into ``TokenEvent``s.

Streaming mode: lem-core's shared driver (:mod:`lem.serving`) submits each
request on the traffic schedule; :func:`submitter` gives it one
``llm.generate_async(prompt_token_ids, sampling_params, streaming=True)`` per
request. TensorRT-LLM's ``CompletionOutput.token_ids`` holds every token so
far in streaming mode and ``token_ids_diff`` the ones added since the last
output; each output becomes one :class:`~lem.serving.Delta` of exactly those
ids, finished when ``RequestOutput.finished`` is. With ``stream_interval = 1``
(the default) that is one event per decode step.

Offline mode: ``llm.generate`` on every request at once; each request gets its
submission event and one event at completion (no per-token timing: the model
info says so).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from lem.serving import Delta, RequestFailed
from lem.types import Request, TokenEvent


def prompt_input(req: Request) -> Any:
    """What ``generate_async`` takes: token ids when the prompt source made them (exact input lengths), else text."""
    if req.prompt_token_ids is not None:
        return list(req.prompt_token_ids)
    return req.prompt


def _request_error() -> type[BaseException]:
    try:
        from tensorrt_llm.executor.utils import RequestError
    except ImportError:  # not where this TensorRT-LLM keeps it: only the engine failing is then caught
        return _NoSuchError
    return RequestError  # type: ignore[no-any-return]


class _NoSuchError(Exception):
    pass


def submitter(llm: Any, sampling_params: Any) -> Any:
    """The ``submit`` function for :func:`lem.serving.stream`."""
    request_error = _request_error()

    async def submit(req: Request) -> AsyncIterator[Delta]:
        result = llm.generate_async(prompt_input(req), sampling_params, streaming=True)
        try:
            async for output in result:
                completion = output.outputs[0]
                yield Delta(tuple(completion.token_ids_diff), finished=bool(output.finished))
        except request_error as exc:
            raise RequestFailed(str(exc)) from exc
        except BaseException:
            # Cancelled (stopped early, timed out) or failed: abort it in the executor too.
            abort = getattr(result, "abort", None)
            if abort is not None and not getattr(result, "finished", True):
                abort()
            raise

    return submit


def offline(llm: Any, requests: Sequence[Request], sampling_params: Any) -> Iterator[TokenEvent]:
    """``llm.generate`` on every request at once; a submission event and a completion event per request."""

    def run() -> Iterator[TokenEvent]:
        t_submit = time.monotonic_ns()
        outputs = llm.generate([prompt_input(r) for r in requests], sampling_params, use_tqdm=False)
        t_end = time.monotonic_ns()
        yield from (TokenEvent(r.id, t_submit, 0) for r in requests)
        for req, out in zip(requests, outputs, strict=True):
            # Beam search returns n beams, best first: the best one is the output.
            ids = tuple(out.outputs[0].token_ids)
            yield TokenEvent(req.id, t_end, len(ids), True, ids)

    return run()
