"""A fake OpenAI-compatible streaming server that logs when it sent every token: the truth for timing tests.

Not an engine: it streams ``max_tokens`` one-token chunks (``choices[0].text``)
per ``POST /v1/completions`` at a fixed inter-token latency, then a usage chunk
and ``data: [DONE]``, over HTTP/1.1 with chunked transfer encoding (as uvicorn
streams), and answers ``GET /health`` and ``GET /v1/models``. It writes, per
request, its prompt, its ``x-request-id`` header (``null`` without one), when
the request had fully arrived and when each token's bytes were handed to the
socket (``time.monotonic_ns()``, comparable across processes of one machine),
so a client's timestamps can be checked against when the bytes were really sent.
Used by the server backend's tests and by
``benchmarks/server_client.py``; run it as a process of its own (so it does
not share the client's interpreter)::

    python -m lem_backend_server.testing --itl-ms 1 --log sent.json

It prints ``PORT <n>`` once it listens, and writes the log when SIGTERM or
SIGINT ends it. Misbehaviours for error-path tests: ``--status`` (answer
every completion with that status and ``--body``), ``--bad-chunk`` (a data
line sent after the first token), ``--hang`` (headers, then nothing),
``--stall-after``/``--stall-ms`` (a pause mid-stream), ``--burst`` (several
tokens in one write).

Tokens are paced by one ticker for all streams, each due ``--itl-ms`` after
the previous one was really sent (asyncio timers wake to the millisecond, and
later on a busy machine, so 1 ms comes out at 1-2 ms or more); the log holds
the real send times, whatever the pacing achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs


@attrs.define
class Settings:
    """How the fake server answers (see the module doc)."""

    itl_ns: int = 1_000_000
    ttft_ns: int | None = None
    status: int = 200
    body: str = ""
    bad_chunk: str | None = None
    hang: bool = False
    stall_after: int = 0
    stall_ns: int = 0
    burst: int = 1


@attrs.define(eq=False)
class _Stream:
    transport: asyncio.Transport
    log: dict[str, Any]
    token: bytes
    last: bytes
    tail: bytes
    left: int
    due_ns: int
    sent: int = 0


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: Any) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


class FakeServer:
    """The server's state: its settings, the streams in flight, and the log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams: list[_Stream] = []
        self.log: list[dict[str, Any]] = []
        self.wake = asyncio.Event()
        self.n = 0

    def protocol(self) -> asyncio.Protocol:
        """One connection's protocol."""
        return _Connection(self)

    def complete(
        self, transport: asyncio.Transport, body: bytes, received_ns: int, request_id: str | None = None
    ) -> None:
        """Start answering one completion request (``request_id``: its ``x-request-id`` header, logged)."""
        s = self.settings
        req = json.loads(body)
        self.n += 1
        rid = f"cmpl-{self.n}"
        entry: dict[str, Any] = {
            "prompt": req.get("prompt"),
            "request_id": request_id,
            "received_ns": received_ns,
            "sent_ns": [],
        }
        self.log.append(entry)
        if s.status != 200:
            data = s.body.encode()
            head = f"HTTP/1.1 {s.status} Error\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n\r\n"
            transport.write(head.encode() + data)
            return
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        if s.hang:
            return
        n = int(req.get("max_tokens") or 16)

        def choice(finish: str | None) -> dict[str, Any]:
            return {"index": 0, "text": " t", "logprobs": None, "finish_reason": finish}

        base = {"id": rid, "object": "text_completion", "created": 0, "model": "fake"}
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        tail = _event({**base, "choices": [], "usage": usage}) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        due = received_ns + (s.itl_ns if s.ttft_ns is None else s.ttft_ns)
        token, last = _event({**base, "choices": [choice(None)]}), _event({**base, "choices": [choice("length")]})
        self.streams.append(_Stream(transport, entry, token, last, tail, n, due))
        self.wake.set()

    async def tick(self) -> None:
        """Send every stream its due tokens, forever (one ticker for all streams)."""
        s = self.settings
        while True:
            if not self.streams:
                self.wake.clear()
                await self.wake.wait()
            now = time.monotonic_ns()
            next_due = now + s.itl_ns
            keep = []
            for st in self.streams:
                if st.due_ns <= now:
                    k = min(s.burst, st.left)
                    st.left -= k
                    out = st.token * (k - 1) + (st.last if st.left == 0 else st.token)
                    if st.sent == 0 and s.bad_chunk is not None:
                        out += _chunk(b"data: " + s.bad_chunk.encode() + b"\n\n")
                    if st.left == 0:
                        out += st.tail
                    t = time.monotonic_ns()
                    st.transport.write(out)
                    st.log["sent_ns"].extend([t] * k)
                    st.sent += k
                    # Paced from the real send: a late tick delays the rest rather than bunching two tokens.
                    st.due_ns = t + s.itl_ns
                    if s.stall_after and st.sent == s.stall_after:
                        st.due_ns += s.stall_ns
                if st.left > 0 and not st.transport.is_closing():
                    keep.append(st)
                    next_due = min(next_due, st.due_ns)
            self.streams = keep
            wait = next_due - time.monotonic_ns()
            await asyncio.sleep(max(0, wait) / 1e9)


class _Connection(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: what the clients under test send."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length, request_id = 0, None
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
                elif name.strip().lower() == "x-request-id":
                    request_id = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self._answer(head[0].split(" ")[:2], body, now, request_id)

    def _answer(self, line: list[str], body: bytes, now: int, request_id: str | None = None) -> None:
        assert self.transport is not None
        method, path = line
        if method == "POST" and path == "/v1/completions":
            self.server.complete(self.transport, body, now, request_id)
            return
        if path == "/v1/models":
            data = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode()
        elif path in ("/health", "/v1/health"):
            data = b"{}"
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(data)
        )
        self.transport.write(data)


async def serve(settings: Settings, port: int, log_path: str | None) -> None:
    """Listen on 127.0.0.1:``port`` until SIGTERM or SIGINT; then write the log to ``log_path``."""
    server = FakeServer(settings)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server.protocol, "127.0.0.1", port, backlog=1024)
    print(f"PORT {listener.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.create_task(server.tick())
    await stop.wait()
    ticker.cancel()
    listener.close()
    if log_path:
        with open(log_path, "w") as f:
            json.dump(server.log, f)


@contextlib.contextmanager
def running(*args: str, log: Path | None = None) -> Iterator[str]:
    """Run the fake server as a process of its own with these command-line ``args``; yields its base URL.

    On exit it is stopped with SIGTERM, which makes it write ``log`` (when given); read it after the block.
    """
    cmd = [sys.executable, "-m", "lem_backend_server.testing", *args] + (["--log", str(log)] if log else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the fake server did not start: {line!r} (exit status {proc.poll()})")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m lem_backend_server.testing``: the fake server (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--itl-ms", type=float, default=1.0)
    p.add_argument("--ttft-ms", type=float, default=None, help="from receipt to the first token (default: itl)")
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--body", default="")
    p.add_argument("--bad-chunk", default=None)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--stall-after", type=int, default=0)
    p.add_argument("--stall-ms", type=float, default=0.0)
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--log", default=None)
    a = p.parse_args(argv)
    settings = Settings(
        itl_ns=round(a.itl_ms * 1e6),
        ttft_ns=None if a.ttft_ms is None else round(a.ttft_ms * 1e6),
        status=a.status,
        body=a.body,
        bad_chunk=a.bad_chunk,
        hang=a.hang,
        stall_after=a.stall_after,
        stall_ns=round(a.stall_ms * 1e6),
        burst=a.burst,
    )
    try:
        asyncio.run(serve(settings, a.port, a.log))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
