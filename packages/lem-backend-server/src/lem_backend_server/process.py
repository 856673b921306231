"""A managed server process: start it, wait until it is healthy, stop it, and leave nothing behind.

The server runs in its own process group (``start_new_session``), so one
signal reaches everything it starts (vLLM's engine core, TGI's shards).
:func:`stop` sends SIGTERM to the server, waits up to ``grace_s`` for it,
then SIGTERM and SIGKILL to what is left of the group, and returns once no
process of the group is left. Cleanup paths, because an
experiment's worker can end in several ways:

- a normal end, an error or Ctrl-C: the backend's ``close()`` (the runner's
  ``finally``), and an ``atexit`` hook for anything that skipped it;
- SIGTERM to the worker: a handler (installed once, only where SIGTERM had
  its default action) stops every server, then lets SIGTERM end the process;
- SIGKILL to the worker (the campaign kills a hung one): on Linux the server
  is started with ``PR_SET_PDEATHSIG`` = SIGTERM, so the kernel tells it its
  parent is gone. Nothing else survives a SIGKILL.

The log (stdout and stderr) goes to a file whose last lines are quoted in
every error.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.errors import BackendError
from lem.processes import set_parent_death_signal

#: Lines of the server's log quoted in an error.
LOG_TAIL_LINES = 20
#: Seconds between health probes.
POLL_S = 0.25

_running: set[Server] = set()
_lock = threading.Lock()
_sigterm_installed = False


@attrs.define(eq=False)
class Server:
    """A server process lem started.

    :param command: the full argument list (recorded in the results).
    :param log_path: the file that holds its stdout and stderr.
    :param started_at: UTC time of the start (ISO 8601).
    :param spawn_s: seconds ``Popen`` took.
    :param health_wait_s: seconds from the start until the health endpoint answered 200.
    """

    command: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    grace_s: float
    started_at: str
    spawn_s: float
    health_wait_s: float | None = None
    stopped: bool = False
    exit_code: int | None = None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, indented, for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"    (log unreadable: {exc})"
    tail = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (the log is empty)"


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the parent (the worker) dies.
    # Linux sends it when the *thread* that forked exits: start() is called from load_model on the worker's
    # main thread, which lives as long as the experiment.
    set_parent_death_signal(signal.SIGTERM)


def _on_sigterm(signum: int, frame: Any) -> None:
    stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_cleanup() -> None:
    global _sigterm_installed
    if _sigterm_installed:
        return
    _sigterm_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def start(
    command: Sequence[str],
    url: str,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    grace_s: float = 10.0,
) -> Server:
    """Start ``command`` (no shell) in its own process group, its output to ``log_path``."""
    _install_cleanup()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    t0 = time.monotonic()
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise BackendError(
                f"server.command: cannot start {command[0]!r}: {exc.strerror or exc}; install the engine, or set "
                "[server] python / command to one that exists"
            ) from None
    server = Server(list(command), proc, log_path, url, grace_s, started_at, time.monotonic() - t0)
    with _lock:
        _running.add(server)
    return server


def wait_healthy(server: Server, path: str, timeout_s: float, headers: Mapping[str, str] | None = None) -> float:
    """Poll ``GET url + path`` until it answers 200; returns the seconds waited since the start.

    Raises :class:`BackendError` naming the log, with its last lines, if the process exits first or
    ``timeout_s`` passes (the server is stopped then).
    """
    import httpx

    t0 = time.monotonic() - server.spawn_s
    deadline = t0 + timeout_s
    with httpx.Client(timeout=5.0, headers=dict(headers or {})) as client:
        while True:
            code = server.proc.poll()
            if code is not None:
                stop(server)
                raise BackendError(
                    f"server exited with status {code} before it became healthy (command: {' '.join(server.command)}); "
                    f"its log {server.log_path} ends with:\n{log_tail(server.log_path)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(server.url + path).status_code == 200:
                    server.health_wait_s = time.monotonic() - t0
                    return server.health_wait_s
            if time.monotonic() > deadline:
                stop(server)
                raise BackendError(
                    f"server did not answer GET {path} with 200 within {timeout_s:g} s (server.startup_timeout_s); "
                    f"stopped it. Its log {server.log_path} ends with:\n{log_tail(server.log_path)}"
                )
            time.sleep(POLL_S)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait(pgid: int, proc: subprocess.Popen[bytes], seconds: float, leader_only: bool) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        leader_done = proc.poll() is not None  # reaps the leader, else it stays a zombie in the group
        if leader_done and (leader_only or not _group_alive(pgid)):
            return True
        time.sleep(0.05)
    return False


def stop(server: Server) -> None:
    """End the server: SIGTERM to it, SIGKILL to its group after the grace period; returns when all of it is gone.

    SIGTERM goes to the server's own process first, so an engine that runs workers (vLLM's engine core,
    TGI's shards) shuts them down in order; whatever of the group is left then gets SIGTERM, and SIGKILL
    after a short wait.
    """
    with _lock:
        if server.stopped:
            return
        server.stopped = True
        _running.discard(server)
    proc, pgid = server.proc, server.proc.pid  # start_new_session: the server leads its own group
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        _wait(pgid, proc, server.grace_s, leader_only=True)
    if not _wait(pgid, proc, 2.0, leader_only=False):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if not _wait(pgid, proc, 3.0, leader_only=False):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            _wait(pgid, proc, 10.0, leader_only=False)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    server.exit_code = proc.returncode


def stop_all() -> None:
    """Stop every server this process started and has not stopped yet (atexit and SIGTERM)."""
    with _lock:
        running = list(_running)
    for server in running:
        stop(server)


def version_from_command(command: Sequence[str], timeout_s: float = 60.0) -> str | None:
    """The first line a version command prints, or ``None`` when it fails."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[-1].strip() if done.returncode == 0 and lines else None
