"""Test helper: a small OpenAI-compatible server that misbehaves on purpose, on 127.0.0.1.

``python server_misbehaving.py PORT MODE``. GET /health and GET /v1/models always answer; POST
/v1/completions depends on MODE:

- ``ok``: streams 4 one-token chunks, then ``[DONE]`` (a well-behaved server);
- ``500``: HTTP 500 with a JSON error body, every time;
- ``flaky``: every third request gets HTTP 500, the rest are ``ok``;
- ``shape``: HTTP 200 and well-formed JSON of the wrong shape (no stream, no ``choices``);
- ``hang``: accepts the request and never answers;
- ``stall``: streams one chunk, then nothing more, the connection held open;
- ``die``: answers two requests as ``ok``, then exits (status 1) on the third, leaving nothing on its port.

It writes one line per completion request to stdout (the tests count what reached it).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = "ok"
_count = itertools.count(1)
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: stdout is the request log
        pass

    def _json(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "misbehaving", "object": "model"}]})
        else:
            self._json(200, {"status": "ok"})

    def _chunk(self, doc: object) -> None:
        data = f"data: {json.dumps(doc) if not isinstance(doc, str) else doc}\n\n".encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with _lock:  # one write per line under the lock: print() from threads can interleave two lines
            n = next(_count)
            sys.stdout.write(f"completion {n}\n")
            sys.stdout.flush()
        if MODE == "die" and n > 2:
            os._exit(1)
        if MODE == "500" or (MODE == "flaky" and n % 3 == 0):
            self._json(500, {"error": {"message": "the engine is on fire", "type": "server_error"}})
            return
        if MODE == "shape":
            self._json(200, {"result": "not a completion"})
            return
        if MODE == "hang":
            time.sleep(3600)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(1 if MODE == "stall" else 4):
            self._chunk({"choices": [{"index": 0, "text": f" t{i}"}]})
        if MODE == "stall":
            time.sleep(3600)
            return
        self._chunk({"choices": [], "usage": {"completion_tokens": 4}})
        self._chunk("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main() -> None:
    global MODE
    port, MODE = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
