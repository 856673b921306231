"""The streaming client's clock and its error paths, against the fake server of ``lem_backend_server.testing``.

A real server process on 127.0.0.1 that logs when it handed each token to its socket; lem reaches it in
external mode through the backend's hooks (``load_model``, ``generate_stream``), as an experiment does.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from itertools import pairwise
from pathlib import Path
from typing import Any

from conftest import served

from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_server import plugin

#: How far (ms) a client stamp may lag the server's send on this shared machine: the loop's wake-up latency.
LAG_MS = 25.0


def _served(
    make_config: Any, tiny_llama: Path, tmp_path: Path, *args: str, **tables: Any
) -> AbstractContextManager[Any]:
    """(loaded model, config, path of the server's send log) for a fake server run with ``args``."""
    return served(make_config, tiny_llama, tmp_path / "sent.json", args, {"request_timeout_s": 2.0}, **tables)


def _run(model: LoadedModel, config: Any, n: int = 1) -> list[TokenEvent]:
    reqs = [Request(i, f"prompt {i}", 2) for i in range(n)]
    stream = plugin.generate_stream(model=model, requests=reqs, params=config.generation, config=config)
    assert stream is not None
    return list(stream)


def _last(events: list[TokenEvent]) -> dict[int, TokenEvent]:
    return {e.request_id: e for e in events if e.finished}


def test_stamps_follow_the_bytes_through_a_stall(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    with _served(make_config, tiny_llama, tmp_path, "--itl-ms", "5", "--stall-after", "3", "--stall-ms", "300") as (
        model,
        config,
        log,
    ):
        events = _run(model, config)
    sent = json.loads(log.read_text())[0]["sent_ns"]
    got = [e.t_ns for e in events if e.n_tokens]
    assert len(got) == len(sent) == 8 and _last(events)[0].error is None
    # Each stamp comes after its bytes were sent, and soon after.
    lags = [(g - s) / 1e6 for g, s in zip(got, sent, strict=True)]
    assert all(0 < lag < LAG_MS for lag in lags), lags
    # The ITL across the stall is the stall the server made, not a parse or hand-over later.
    client_gaps = [(b - a) / 1e6 for a, b in pairwise(got)]
    server_gaps = [(b - a) / 1e6 for a, b in pairwise(sent)]
    assert server_gaps[2] >= 300
    assert all(abs(c - s) < LAG_MS for c, s in zip(client_gaps, server_gaps, strict=True)), (client_gaps, server_gaps)


def test_tokens_that_arrive_together_share_their_stamp(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    # Four chunks in one write reach lem in one read: stamped once, where the bytes came in, not per parse.
    with _served(make_config, tiny_llama, tmp_path, "--itl-ms", "20", "--burst", "4") as (model, config, _):
        events = _run(model, config)
    stamps = [e.t_ns for e in events if e.n_tokens]
    assert len(stamps) == 8
    assert len(set(stamps[:4])) == 1 and len(set(stamps[4:])) == 1 and stamps[4] - stamps[0] > 10_000_000


def test_token_counts_are_exact_under_concurrency(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    traffic = {"mode": "concurrency", "concurrency": 16}
    with _served(make_config, tiny_llama, tmp_path, "--itl-ms", "1", traffic=traffic) as (model, config, log):
        events = _run(model, config, 48)
    counts: dict[int, int] = {}
    for e in events:
        counts[e.request_id] = counts.get(e.request_id, 0) + e.n_tokens
    assert counts == dict.fromkeys(range(48), 8)
    assert all(e.error is None for e in _last(events).values())
    assert sum(len(r["sent_ns"]) for r in json.loads(log.read_text())) == 48 * 8


def test_http_error_names_status_and_body(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    body = "model overloaded\nretry later " + "x" * 500
    with _served(make_config, tiny_llama, tmp_path, "--status", "500", "--body", body) as (model, config, _):
        events = _run(model, config, 2)
    for e in _last(events).values():
        assert e.error is not None and e.error.startswith("HTTP 500: model overloaded retry later xxx")
        assert len(e.error) < 320  # an excerpt, not the whole body


def test_wrong_shape_chunk_fails_the_request(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    with _served(make_config, tiny_llama, tmp_path, "--bad-chunk", '{"choices": 7}') as (model, config, _):
        events = _run(model, config)
    error = _last(events)[0].error
    assert error == 'a chunk that is not a completions chunk: {"choices": 7}'


def test_unreadable_chunk_fails_the_request(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    with _served(make_config, tiny_llama, tmp_path, "--bad-chunk", "{not json") as (model, config, _):
        events = _run(model, config)
    error = _last(events)[0].error
    assert error is not None and error.startswith("unreadable chunk in the stream (") and error.endswith("{not json")


def test_a_chunk_only_python_json_reads_still_counts(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    # Python servers write a -inf logprob as -Infinity, which orjson (the client's parser) refuses.
    chunk = '{"choices":[{"index":0,"text":" u","logprobs":{"tokens":[" u"],"token_logprobs":[-Infinity]}}]}'
    with _served(make_config, tiny_llama, tmp_path, "--bad-chunk", chunk) as (model, config, log):
        events = _run(model, config)
    sent = json.loads(log.read_text())[0]["sent_ns"]
    assert _last(events)[0].error is None
    # The extra chunk's token counts (one, from its logprobs), and its text is handed over with it.
    assert sum(e.n_tokens for e in events) == len(sent) + 1
    assert "".join(e.text or "" for e in events).startswith(" t u t")


def test_a_silent_server_times_the_request_out(make_config: Any, tiny_llama: Path, tmp_path: Path) -> None:
    with _served(make_config, tiny_llama, tmp_path, "--hang") as (model, config, _):
        events = _run(model, config)
    # The submission event (it carries the arrival time), then the failure: no token in between.
    timed_out = "timed out after 2 s (server.request_timeout_s)"  # the key that sets the limit, named
    assert [(e.n_tokens, e.finished, e.error) for e in events] == [(0, False, None), (0, True, timed_out)]
