"""Engine logs into the experiment's ``engine.log``, away from lem's progress lines.

Engines print as they load and serve: llama.cpp's loader and quantizer, vLLM's
start-up, transformers' and torch's warnings. Much of it is written by C code
straight to file descriptors 1 and 2, where no Python redirection reaches, so
:func:`engine_log` points those descriptors themselves (``os.dup2``) at
``engine.log`` in the experiment's directory for as long as the experiment
runs, and restores them after. Python's own output follows: ``sys.stdout``,
``sys.stderr``, the ``warnings`` module and every logging handler that writes
to them (transformers', vLLM's, llama-cpp-python's log callback) write to those
descriptors.

lem's progress must still reach the terminal: :func:`engine_log` yields the
stream to give :class:`lem.run.progress.Progress`, a stream on a copy of the
descriptor that was stderr before the redirection. (The worker's protocol
frames are safe already: they go to a copy of file descriptor 1 that the
worker made when it started, see :mod:`lem.campaign.worker`.) With ``tee``
(``lem run -v``) the engine's output goes to the log and to that terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

#: The engine's log in each experiment's directory.
ENGINE_LOG = "engine.log"


def _flush_all() -> None:
    """Flush Python's and C's buffered standard streams, so nothing buffered lands on the wrong side."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or a pipe nobody reads any more
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # C's stdio buffers (printf from an engine's library)
    except (OSError, AttributeError, TypeError):  # no C library to ask (not a POSIX system)
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _terminal(saved_err: int) -> TextIO:
    """The stream progress writes to: ``sys.stderr`` unless it writes to a redirected descriptor."""
    err = sys.stderr
    try:
        fd = err.fileno()
    except (AttributeError, OSError, ValueError):  # a test's or a notebook's stderr: no descriptor, untouched
        return err
    if fd not in (1, 2):
        return err
    encoding = getattr(err, "encoding", None) or "utf-8"
    return os.fdopen(os.dup(saved_err), "w", buffering=1, encoding=encoding, errors="replace")


@contextlib.contextmanager
def engine_log(exp_dir: Path, *, tee: bool = False) -> Iterator[TextIO]:
    """File descriptors 1 and 2 into ``exp_dir/engine.log`` (and, with ``tee``, to stderr as well) while inside.

    Yields the stream lem's own progress goes to: the terminal (what stderr was on entry). The log is
    started afresh; it is written as the engine prints, not atomically, so a killed run keeps what it had.
    """
    _flush_all()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(exp_dir / ENGINE_LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    pump: threading.Thread | None = None
    terminal: TextIO | None = None
    try:
        if tee:
            read_end, write_end = os.pipe()
            # The copy owns its descriptors: a process the engine leaves running may hold the pipe (and keep
            # writing to it) after we return, and a descriptor closed under it could be reused for another file.
            to_log, to_terminal = os.dup(log_fd), os.dup(saved_err)

            def copy() -> None:
                try:
                    while chunk := os.read(read_end, 1 << 16):
                        with contextlib.suppress(OSError):  # a full disk must not block the engine
                            _write_all(to_log, chunk)
                        with contextlib.suppress(OSError):  # the terminal is gone: the log still gets it
                            _write_all(to_terminal, chunk)
                finally:
                    for fd in (read_end, to_log, to_terminal):
                        os.close(fd)

            pump = threading.Thread(target=copy, daemon=True, name="lem-engine-log")
            pump.start()
            target = write_end
        else:
            target = log_fd
        os.dup2(target, 1)
        os.dup2(target, 2)
        if tee:
            os.close(target)  # held by descriptors 1 and 2 now: the copy ends when they are restored
        terminal = _terminal(saved_err)
        yield terminal
    finally:
        _flush_all()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        if pump is not None:
            # The copy ends once every holder of the pipe is gone: waited for briefly, so the engine's last
            # lines are shown before lem's next ones. One its processes still hold goes on in the background.
            pump.join(2.0)
        if terminal is not None and terminal is not sys.stderr:
            with contextlib.suppress(OSError, ValueError):
                terminal.close()
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
