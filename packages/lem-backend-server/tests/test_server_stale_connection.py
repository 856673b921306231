"""A pooled connection the server closed: the request is sent again once, on a fresh connection.

A real HTTP exchange on 127.0.0.1: a socket server that drops its first connection without answering
(what a server does to a kept-alive connection it has closed) and answers the second with a stream.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

from lem_backend_server.client import Target, complete, session

STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    b'data: {"choices": [{"text": "a", "token_ids": [7]}]}\n\n'
    b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n\n'
    b"data: [DONE]\n\n"
)


def _server(answers: list[bool]) -> tuple[int, threading.Thread, list[int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    seen: list[int] = []

    def serve() -> None:
        for answer in answers:
            conn, _ = sock.accept()
            conn.recv(65536)
            seen.append(1)
            if answer:
                conn.sendall(STREAM)
            conn.close()
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread, seen


async def _deltas(port: int) -> list[Any]:
    target = Target(url=f"http://127.0.0.1:{port}", model="m", engine=None, token_ids=False, headers={})
    async with await session() as client:
        return [d async for d in complete(client, target, {"prompt": "x", "stream": True})]


def test_a_connection_dropped_before_any_answer_is_retried_once() -> None:
    port, thread, seen = _server([False, True])
    deltas = asyncio.run(_deltas(port))
    thread.join(5)
    assert len(seen) == 2
    assert [(d.token_ids, d.finished) for d in deltas] == [((7,), False), ((), True)]


def test_a_second_drop_fails_the_request() -> None:
    from lem.serving import RequestFailed

    port, thread, _ = _server([False, False])
    try:
        asyncio.run(_deltas(port))
    except RequestFailed as exc:
        assert "the stream broke" in str(exc)
    else:
        raise AssertionError("a request whose connection broke twice must fail")
    thread.join(5)
