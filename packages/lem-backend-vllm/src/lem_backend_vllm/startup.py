"""Why a vLLM engine failed to start, in one line.

When the engine core fails inside its own process, vLLM logs the exception there and raises
``RuntimeError("Engine core initialization failed. See root cause above. ...")`` in ours: the
cause exists only as text on the engine core's stdout/stderr. :func:`watch_output` copies what this
process and its children write to file descriptors 1 and 2 while the engine starts (everything
still reaches where they pointed: the experiment's ``engine.log``, :mod:`lem.run.enginelog`), so
that :func:`root_cause` can name the exception the engine core logged.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator

#: Bytes of the engine's start-up output kept for :func:`root_cause` (the end is what matters).
KEEP_BYTES = 256 * 1024

# vLLM's log prefix: "(EngineCore pid=12) ERROR 12-02 03:51:11 [core.py:1510] ".
_PREFIX = re.compile(r"^(\([^)]*\)\s+)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\S+\s+\S+\s+\[[^\]]*\]\s?")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Failure)(:|$)")
_FAILED_PROCS = re.compile(r"'([^']+)': (-\d+)")


class Output:
    """What was written to stdout and stderr while watched (the last :data:`KEEP_BYTES`)."""

    def __init__(self) -> None:
        self._chunks = bytearray()
        self._lock = threading.Lock()
        self.keeping = True

    def add(self, chunk: bytes) -> None:
        """Keep ``chunk`` while watching."""
        with self._lock:
            if self.keeping:
                self._chunks += chunk
                del self._chunks[:-KEEP_BYTES]

    def text(self) -> str:
        """The kept output, decoded."""
        with self._lock:
            return self._chunks.decode("utf-8", "replace")


def _pump(read_fd: int, out_fd: int, output: Output) -> None:
    # Runs for as long as any process holds the pipe's write end: the engine's processes inherit it
    # and keep writing their logs to it after start-up, so this keeps forwarding them.
    with contextlib.suppress(OSError):
        while chunk := os.read(read_fd, 1 << 16):
            output.add(chunk)
            with contextlib.suppress(OSError):  # a closed terminal must not block the engine's logging
                os.write(out_fd, chunk)
    os.close(read_fd)


@contextlib.contextmanager
def watch_output() -> Iterator[Output]:
    """Copy what is written to fds 1 and 2 (by this process and the children it starts) while inside."""
    output = Output()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: dict[int, int] = {}
    try:
        for fd in (1, 2):
            original = os.dup(fd)
            saved[fd] = original
            read_fd, write_fd = os.pipe()
            threading.Thread(
                target=_pump, args=(read_fd, original, output), daemon=True, name=f"lem-vllm-output-{fd}"
            ).start()
            os.dup2(write_fd, fd)
            os.close(write_fd)
    except OSError:  # no usable descriptors (an embedding host): nothing to watch
        pass
    try:
        yield output
    finally:
        output.keeping = False
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)  # our own writes go straight to the terminal again


def root_cause(error: BaseException, output: str) -> str | None:
    """The one-line cause of an engine start failure, from what the engine core wrote; ``None`` if not found."""
    if "root cause above" not in str(error):
        return None
    lines = [_PREFIX.sub("", line).rstrip() for line in output.splitlines()]
    # The last exception line of the last traceback the engine printed.
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    for line in lines[starts[-1] + 1 :] if starts else []:
        if _EXCEPTION.match(line):
            return line
    for name, code in _FAILED_PROCS.findall(str(error)):
        with contextlib.suppress(ValueError):
            return f"the {name} process was killed by {signal.Signals(-int(code)).name}"
    return None
