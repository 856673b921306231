"""The streaming client: one request to ``/v1/completions`` with ``stream: true``, as lem-core ``Delta`` s.

Each streamed chunk becomes one :class:`~lem.serving.Delta`. Token counts:

1. a chunk's ``choices[0].token_ids`` when the server sends them (vLLM does
   when asked with ``return_token_ids``), else
2. the length of its ``logprobs.tokens`` (asked for with ``logprobs: 0``
   where the engine has no token ids: llama.cpp's server), else
3. one token per chunk that carries text (TGI, SGLang, trtllm-serve stream
   one token per chunk by default);

each delta carries the text its chunks streamed (``choices[0].text``), the request's output as the server
decoded it; then reconciled with the server's own count: with ``stream_options:
{include_usage: true}`` the last chunk carries ``usage.completion_tokens``,
and the request's final delta adds the difference when the chunks counted
fewer (a count the chunks overshot stands, and cannot be taken back: it has
not been seen). The final delta is sent when the stream ends (``[DONE]``),
not on the chunk with ``finish_reason``, because usage comes after that.

An HTTP error status, a broken stream or one that ends without ``[DONE]``
(llama.cpp's server answers 200 and then ends the stream when a prompt is
longer than its context) fails that request
(:class:`~lem.serving.RequestFailed`); a refused connection means the
server is gone and ends the cycle.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs
import orjson

from lem.config import ExperimentConfig, GenerationConfig
from lem.serving import Delta, RequestFailed
from lem.types import Request

#: ``[generation]`` key -> field of the completions request body, per engine (``None``: the engine's
#: completions API has no such field; validation warns when the experiment sets it to a non-default).
SAMPLING: dict[str, dict[str, str | None]] = {
    #                   vllm             sglang           trtllm               llamacpp          tgi
    "max_output_tokens": dict.fromkeys(("vllm", "sglang", "trtllm", "llamacpp", "tgi"), "max_tokens"),
    "temperature": dict.fromkeys(("vllm", "sglang", "trtllm", "llamacpp", "tgi"), "temperature"),
    "top_p": dict.fromkeys(("vllm", "sglang", "trtllm", "llamacpp", "tgi"), "top_p"),
    "seed": dict.fromkeys(("vllm", "sglang", "trtllm", "llamacpp", "tgi"), "seed"),
    "top_k": {"vllm": "top_k", "sglang": "top_k", "trtllm": "top_k", "llamacpp": "top_k", "tgi": None},
    "min_p": {"vllm": "min_p", "sglang": "min_p", "trtllm": "min_p", "llamacpp": "min_p", "tgi": None},
    "repetition_penalty": {
        "vllm": "repetition_penalty",
        "sglang": "repetition_penalty",
        "trtllm": "repetition_penalty",
        "llamacpp": "repeat_penalty",
        "tgi": "repetition_penalty",
    },
    "min_output_tokens": {
        "vllm": "min_tokens",
        "sglang": "min_tokens",
        "trtllm": "min_tokens",
        "llamacpp": "min_tokens",
        "tgi": None,
    },
    # llama.cpp's server has no ignore_eos: the end-of-sequence token is banned through logit_bias instead.
    "ignore_eos": {
        "vllm": "ignore_eos",
        "sglang": "ignore_eos",
        "trtllm": "ignore_eos",
        "llamacpp": "logit_bias",
        "tgi": None,
    },
}

#: The OpenAI completions fields, sent to a server of no known engine.
STANDARD: dict[str, str] = {
    "max_output_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
}

#: Body fields that make an engine report per-chunk token counts.
COUNT_FIELDS: dict[str, dict[str, Any]] = {
    "vllm": {"return_token_ids": True},
    "llamacpp": {"logprobs": 0},
}

#: Off values: a key at its off value is left out of the body (so an engine without it is not bothered).
_OFF: dict[str, Any] = {
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "min_output_tokens": 0,
    "ignore_eos": False,
}


@attrs.frozen
class Target:
    """Where and how to send requests.

    :param url: base URL (``http://127.0.0.1:PORT``), no trailing slash.
    :param model: the ``model`` field (the server's own model id).
    :param engine: a key of :data:`SAMPLING` (``None``: an unknown server; only the standard OpenAI fields).
    :param token_ids: send prompts as token ids when the request has them.
    :param headers: sent with every request (the API key, never recorded).
    """

    url: str
    model: str
    engine: str | None
    token_ids: bool
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)


def body(
    target: Target, req: Request, params: GenerationConfig, config: ExperimentConfig, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The JSON body for one streamed completion of ``req``."""
    out: dict[str, Any] = {
        "model": target.model,
        "prompt": list(req.prompt_token_ids) if target.token_ids and req.prompt_token_ids is not None else req.prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    values: dict[str, Any] = {
        "max_output_tokens": params.max_output_tokens,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p,
        "seed": config.seed,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "min_output_tokens": params.min_output_tokens,
        "ignore_eos": params.ignore_eos,
    }
    for key, value in values.items():
        if key in _OFF and value == _OFF[key]:
            continue
        field = STANDARD.get(key) if target.engine is None else SAMPLING[key][target.engine]
        if field is None:
            continue
        if field == "logit_bias":
            if eos_token_id is not None:
                out["logit_bias"] = {str(eos_token_id): -1e9}
            continue
        out[field] = value
    out.update(COUNT_FIELDS.get(target.engine or "", {}))
    return out


def chunk_count(choice: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    """(token ids, token count) of one streamed choice, by the rules in the module doc."""
    ids = choice.get("token_ids")
    if isinstance(ids, list):
        return tuple(int(i) for i in ids), len(ids)
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, Mapping) and isinstance(logprobs.get("tokens"), list):
        return (), len(logprobs["tokens"])
    return (), 1 if choice.get("text") else 0


#: Seconds to wait for a connection to the server; waits for its answer are bounded by request_timeout_s.
CONNECT_TIMEOUT_S = 30.0


async def session() -> Any:
    """The streaming client's session, made on the loop that serves (an aiohttp session belongs to its loop).

    aiohttp, not httpx: on a fake server that streams 1 ms tokens to 256 requests at once it ingested
    about twice the tokens per second on one core, and its clock lagged the bytes less (issue 31).
    """
    import aiohttp

    # No connection cap (limit=0): the traffic schedule decides how many requests are in flight, not the pool.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def complete(session: Any, target: Target, payload: Mapping[str, Any]) -> AsyncIterator[Delta]:
    """Stream one completion on an ``aiohttp.ClientSession``; yields :class:`~lem.serving.Delta` s (see the module doc).

    A connection from the pool that the server had closed fails before any
    response arrives (llama.cpp's server closes it after a request it could not
    serve): then the request is sent once more, on a fresh connection. Nothing
    reached the engine the first time, so nothing is counted twice.
    """
    try:
        async for delta in _complete(session, target, payload):
            yield delta
    except _NoResponse:
        async for delta in _complete(session, target, payload, retried=True):
            yield delta


class _NoResponse(Exception):
    """The connection broke before the server answered (a stale pooled connection)."""


class _Stream:
    """What one request's stream has said so far: tokens counted, the server's usage count, the end marker."""

    __slots__ = ("counted", "done", "text", "usage")

    def __init__(self) -> None:
        self.counted = 0
        self.usage: int | None = None
        self.done = False
        # Text of chunks that counted no token, handed over with the next delta (so no text is lost).
        self.text = ""


def loads(data: bytes) -> Any:
    """One chunk's JSON: orjson (a fifth less CPU per token than ``json`` at 256 streams, issue 31); what only
    Python's ``json`` reads (``NaN``, ``-Infinity``, which Python servers write for such floats) is read by it.

    :raises ValueError: not JSON.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def parse(line: bytes, state: _Stream, t_ns: int) -> list[Delta]:
    """The deltas of one SSE line (``data: {...}``); other lines, and lines after ``[DONE]``, give none.

    :param t_ns: when the bytes of this line arrived (``time.monotonic_ns()``), carried by each delta.
    :raises RequestFailed: an error chunk, or a line that is not a completions chunk.
    """
    if not line.startswith(b"data:") or state.done:
        return []
    data = line[5:].strip()
    if data == b"[DONE]":
        state.done = True
        return []
    try:
        chunk = loads(data)
        if chunk.get("error"):
            raise RequestFailed(f"server error in stream: {str(chunk['error'])[:300]}")
        usage = chunk.get("usage")
        if usage and usage.get("completion_tokens") is not None:
            state.usage = int(usage["completion_tokens"])
        out = []
        for choice in chunk.get("choices") or ():
            ids, n = chunk_count(choice)
            state.text += str(choice.get("text") or "")
            if n:
                state.counted += n
                out.append(Delta(token_ids=ids, n_tokens=n, t_ns=t_ns, text=state.text))
                state.text = ""
        return out
    except ValueError as exc:  # a JSONDecodeError is a ValueError, and so is int() of a non-number
        raise RequestFailed(f"unreadable chunk in the stream ({exc}): {_excerpt(data)}") from None
    except (AttributeError, TypeError, KeyError):
        raise RequestFailed(f"a chunk that is not a completions chunk: {_excerpt(data)}") from None


def _excerpt(data: bytes) -> str:
    return data.decode("utf-8", "replace").strip().replace("\n", " ")[:300]


async def _complete(
    session: Any, target: Target, payload: Mapping[str, Any], retried: bool = False
) -> AsyncIterator[Delta]:
    import aiohttp

    state = _Stream()
    answered = False
    t_ns = 0
    try:
        async with session.post(f"{target.url}/v1/completions", json=payload, headers=target.headers) as r:
            answered = True
            if r.status != 200:
                raise RequestFailed(f"HTTP {r.status}: {_excerpt(await r.read())}")
            content = r.content
            rest = b""
            while not state.done:
                raw = await content.readany()
                # The tokens' time is when their bytes reached lem: stamped before anything is parsed.
                t_ns = time.monotonic_ns()
                if not raw:
                    break
                lines = (rest + raw).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    for delta in parse(line.rstrip(b"\r"), state, t_ns):
                        yield delta
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
        raise  # nothing listens at the server's address: the server is gone, which ends the cycle
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        if not answered and not retried:
            raise _NoResponse from exc
        raise RequestFailed(f"the stream broke: {type(exc).__name__}: {exc}") from None
    if not state.done:
        # The server closed the stream without its end marker: it failed mid-request (see its log).
        raise RequestFailed(f"the stream ended without [DONE] after {state.counted} tokens")
    extra = max(0, state.usage - state.counted) if state.usage is not None else 0
    yield Delta(n_tokens=extra, finished=True, t_ns=t_ns, text=state.text)
