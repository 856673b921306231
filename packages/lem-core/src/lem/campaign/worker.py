"""Process isolation: each experiment runs in a fresh worker process, ``python -m lem.campaign.worker``.

A new interpreter (not a fork) means CUDA and the backend
begin from clean state, and whatever kills it (a segfault, ``os._exit``, the
out-of-memory killer) kills only that experiment: the parent records why and
goes on. The worker sends a heartbeat on every progress update; one that stays
silent longer than the stall timeout is treated as hung and killed. A worker
whose parent dies exits at once, so a killed campaign leaves no orphan
holding a GPU; the processes of a worker that was killed (its engine's) are
adopted by the campaign process and ended (:mod:`lem.campaign.reaper`).

The worker may run through a launcher (:mod:`lem.campaign.launcher`: a
container runtime, ``srun``, ``env -i``), so its protocol needs nothing but
its standard streams:

- **stdin**: the job, one JSON line (:mod:`lem.campaign.job`); then held open
  by the campaign for as long as it wants the worker to run (EOF: stop as
  Ctrl-C stops it).
- **stdout**: frames, one a line, each :data:`FRAME` followed by a JSON list:
  ``["hello", {...}]`` first (the worker started: the launcher's start
  timeout ends), ``["beat"]`` on progress, ``["files", {name: text}]`` when
  the job has no ``exp_dir`` (the worker measured into a directory of its own
  and sends the result files back; the campaign writes them under ``--out``),
  then ``["ok"]`` or ``["error", reason, traceback]``. A line without the
  marker is not the worker's (a launcher's own message) and is shown on
  stderr. The worker points its own file descriptor 1 at stderr, so a library
  that prints cannot corrupt the frames.
- **stderr**: progress lines and whatever else the worker prints outside the experiment (while it runs,
  the engine's output goes to its ``engine.log``: :mod:`lem.run.enginelog`).
"""

from __future__ import annotations

import json
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from lem import __version__
from lem.campaign.job import Job, Outcome, collect_files, experiment_of, from_json, register, to_json, write_files
from lem.campaign.launcher import START_TIMEOUT_S, Launcher
from lem.campaign.reaper import Adopter
from lem.configfile.loading import Experiment, validate
from lem.errors import ConfigError
from lem.run.enginelog import engine_log
from lem.run.environment import add_to_environment
from lem.run.progress import Progress
from lem.run.runner import run_experiment

#: Seconds a worker whose parent is gone has to stop the way Ctrl-C stops it (closing the model ends a
#: serving engine's processes) before it exits regardless.
PARENT_GONE_GRACE_S = 90.0

_state = {"interrupted": False, "done": False}


def _interrupt_once(signum: int, frame: Any) -> None:
    # The first SIGINT stops the experiment; a second one (Ctrl-C reaching the whole process group while
    # the parent also tells us to stop) must not break the clean-up the first one started.
    if _state["interrupted"] or _state["done"]:
        return
    _state["interrupted"] = True
    raise KeyboardInterrupt


def _exit_with_parent(fd: int) -> None:
    # The parent holds our stdin open for as long as it lives: EOF means it is gone or wants us to stop.
    def watch() -> None:
        # A raw read: a daemon thread blocked in the buffered reader would abort interpreter shutdown.
        while os.read(fd, 1 << 16):
            pass
        if _state["done"]:
            return
        os.kill(os.getpid(), signal.SIGINT)  # unwind like Ctrl-C: `finally` blocks and atexit close engines
        time.sleep(PARENT_GONE_GRACE_S)
        os._exit(70)

    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)  # a SIGTERM to the process group closes engines too
    threading.Thread(target=watch, daemon=True, name="lem-parent-watch").start()


#: What starts each line of the worker's protocol on stdout; a line without it is a launcher's own output.
FRAME = b"\x1elem-worker "


def hello() -> dict[str, Any]:
    """What the worker says first: where it runs (inside a container, the container's view)."""
    return {
        "lem": __version__,
        "python": sys.executable,
        "python_version": platform.python_version(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


class _Frames:
    """The worker's side of the protocol: frames on what was file descriptor 1 when it started."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.lock = threading.Lock()

    def send(self, *msg: Any) -> None:
        data = FRAME + json.dumps(msg).encode() + b"\n"
        with self.lock:
            try:
                self.out.write(data)
                self.out.flush()
            except (BrokenPipeError, ValueError):  # the campaign is gone (killed): nobody reads any more
                pass


def main() -> None:
    """``python -m lem.campaign.worker``: read the job (one JSON line) from stdin, send frames on stdout.

    See the module's docstring for the protocol.
    """
    sys.stdout.flush()
    frames = _Frames(os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # everything else printed (Python or C) goes to stderr, never among the frames
    frames.send("hello", hello())
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):  # the campaign died before it handed the whole job over
        sys.exit(70)
    last = [0.0]

    def beat() -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            frames.send("beat")

    tmp: str | None = None
    try:
        _exit_with_parent(sys.stdin.fileno())  # in the try: the campaign may already be gone
        job = from_json(line)
        if job.returns_files:  # nothing of the campaign's filesystem is here: measure locally, send it back
            tmp = tempfile.mkdtemp(prefix="lem-worker-")
            exp_dir = Path(tmp) / job.experiment_id
            exp_dir.mkdir()
        else:
            exp_dir = Path(job.exp_dir)
        register(job.plugins)  # plugins registered at run time in the campaign (a test backend) exist here too
        exp = experiment_of(job)
        if job.validate:
            _validate_here(exp)
        try:
            # The engine's output (C's included) goes to engine.log; the progress to what stderr was.
            with engine_log(exp_dir, tee=job.verbose) as terminal:
                progress = Progress(job.prefix, quiet=job.quiet, stream=terminal, heartbeat=beat)
                try:
                    run_experiment(exp, exp_dir, job.run_id, progress)
                finally:
                    progress.close()  # a stage ended by an exception must not leave its live line running
        finally:
            if tmp is not None:
                frames.send("files", collect_files(exp_dir))  # partial files too, as a local run keeps them
        # Done before the result is sent: the parent closes our stdin once it has read it, and that
        # EOF must not interrupt us while we still write the message or close the report pipe.
        _state["done"] = True
        frames.send("ok")
    except BaseException as exc:  # everything is reported to the parent, which records it
        _state["done"] = True
        frames.send("error", failure_reason(exc), traceback.format_exc())
    finally:
        _state["done"] = True
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            frames.out.close()
        except (BrokenPipeError, ValueError):  # a frame still buffered for a campaign that is gone
            pass


def failure_reason(exc: BaseException) -> str:
    """The one-line reason recorded for an experiment that raised ``exc``."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        return (
            f"ModuleNotFoundError: this experiment needs the package '{top}', which is not installed in"
            f" {sys.executable}'s environment (pip install {top}, or the lem extra that provides it)"
        )
    return f"{type(exc).__name__}: {exc}"


def _validate_here(exp: Experiment) -> None:
    errors = [p for p in validate(exp.config) if p.severity == "error"]
    if errors:
        raise ConfigError(errors, f"{exp.id} (in {sys.executable})")


def _death(code: int | None, launcher: Launcher | None) -> str:
    who = "worker process" if launcher is None else f"worker (launched by `{launcher.shown}`)"
    if code is None:
        return "worker did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (often the kernel's out-of-memory killer: see `dmesg`)" if -code == signal.SIGKILL else ""
        return f"{who} killed by {name}{why}"
    if launcher is not None:
        return f"{who} exited with status {code} before reporting a result (the launcher failed, or the worker died)"
    return f"{who} exited with status {code} before reporting a result (os._exit or a native crash)"


#: Lines of a launched worker's output kept for a failure's record.
TAIL_LINES = 20


class _Streams:
    """The campaign's side of the worker's stdout and stderr: frames queued, other output shown and its tail kept."""

    def __init__(self, proc: subprocess.Popen[bytes], show_fd: int) -> None:
        self.frames: queue.Queue[list[Any] | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.show_fd = show_fd
        self._partial = ""
        self._lock = threading.Lock()
        assert proc.stdout is not None
        readers = [(self._read_stdout, proc.stdout)]
        if proc.stderr is not None:
            readers.append((self._read_stderr, proc.stderr))
        self.threads = [threading.Thread(target=f, args=(s,), daemon=True, name="lem-worker-io") for f, s in readers]
        for t in self.threads:
            t.start()

    def _read_stdout(self, stream: BinaryIO) -> None:
        try:
            for line in iter(stream.readline, b""):
                msg = None
                if line.startswith(FRAME):
                    try:
                        msg = json.loads(line[len(FRAME) :])
                    except ValueError:
                        msg = None
                if isinstance(msg, list) and msg:
                    self.frames.put(msg)
                else:  # a launcher's own line (or a torn frame): shown, and kept for the record
                    self._show(line)
        finally:
            self.frames.put(None)

    def _read_stderr(self, stream: BinaryIO) -> None:
        while chunk := os.read(stream.fileno(), 1 << 16):
            self._show(chunk)

    def _show(self, data: bytes) -> None:
        try:
            os.write(self.show_fd, data)
        except OSError:  # our own stderr is gone: the tail is still recorded
            pass
        with self._lock:
            text = self._partial + data.decode("utf-8", "replace").replace("\r", "\n")
            *lines, self._partial = text.split("\n")
            self.tail.extend(line.rstrip() for line in lines if line.strip())

    def last_lines(self) -> list[str]:
        """The last lines of output that were not frames (a launcher's error, the worker's last progress)."""
        with self._lock:
            return [*self.tail, *([self._partial.strip()] if self._partial.strip() else [])][-TAIL_LINES:]


def _stderr_fd() -> int:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stderr has no descriptor
        return 2


def run_in_worker(
    job: Job,
    launcher: Launcher | None = None,
    timeout_s: float | None = None,
    *,
    deliver_to: Path | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Outcome:
    """Run one job in a fresh worker process and report how it ended.

    :param launcher: the command the worker runs under (``python``, another environment's interpreter, a
        container runtime...); default: this interpreter.
    :param timeout_s: seconds without a report after which the worker is hung and killed; default: the
        experiment's ``measurement.stall_timeout_s``.
    :param deliver_to: where the files of a job without ``exp_dir`` are written (the worker sends them back).
    :param start_timeout_s: seconds the worker has to say hello (a launcher pulling an image, a job queued).
    """
    if timeout_s is None:
        timeout_s = experiment_of(job).config.measurement.stall_timeout_s
    exp_dir = deliver_to if job.returns_files else Path(job.exp_dir)
    if exp_dir is None:
        raise ValueError("a job without exp_dir needs deliver_to: where its files go")
    argv = [*(launcher.command if launcher is not None else (sys.executable,)), "-m", "lem.campaign.worker"]
    with Adopter() as adopter:  # a killed worker's engine processes are re-parented here (lem.campaign.reaper)
        try:
            # A launcher's stderr is read here too: its last lines are what says why it failed.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if launcher is not None else None,
            )
        except OSError as exc:
            return Outcome(False, f"launcher `{' '.join(argv[:3])}` cannot be started: {exc.strerror or exc}")
        hello: dict[str, Any] = {}
        streams: _Streams | None = None
        try:
            streams = _Streams(proc, _stderr_fd())
            limits = (start_timeout_s, timeout_s)
            outcome = _supervise(proc, streams, (to_json(job) + "\n").encode(), limits, exp_dir, hello, launcher)
        finally:  # also on Ctrl-C: the worker has been waited for by then
            if proc.returncode is None:  # a Ctrl-C before _supervise took over: stop it the same way
                _stop(proc)
            left = adopter.end_orphans(proc.pid)
            if left:
                print(
                    f"lem: {job.prefix}the worker left {len(left)} process(es) of its own behind"
                    f" (pids {', '.join(map(str, left))}); ended them",
                    file=sys.stderr,
                )
            for t in streams.threads if streams is not None else ():  # every process holding the pipes is gone
                t.join(5.0)
    # A worker that never reported (a launcher that failed, a worker killed under it): its last lines say why.
    if not outcome.ok and outcome.detail is None and launcher is not None and streams is not None:
        lines = streams.last_lines()
        if lines:
            detail = "\n".join(["last output:", *lines])
            outcome = attrs.evolve(outcome, reason=f"{outcome.reason}; last output: {lines[-1]}", detail=detail)
    record = _record_launcher(exp_dir, launcher, hello)
    return outcome if outcome.ok else attrs.evolve(outcome, launcher=record)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """EOF on its stdin (it stops as Ctrl-C stops it), the grace period, then SIGKILL; waited for."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        proc.wait(PARENT_GONE_GRACE_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def _record_launcher(exp_dir: Path, launcher: Launcher | None, hello: dict[str, Any]) -> dict[str, Any]:
    """Add to ``environment.json`` what started the worker, and what the worker said of itself; returned too,
    for ``failure.json`` (a launcher that failed before the worker started leaves no ``environment.json``)."""
    record = launcher.record() if launcher is not None else {"command": [sys.executable], "from": "this interpreter"}
    record = {**record, "worker": hello or None}
    add_to_environment(exp_dir, "launcher", record)
    return record


def _keep_files(streams: _Streams, exp_dir: Path, deadline: float) -> None:
    """Write the files a stopping worker sends, until its stdout closes or ``deadline`` (monotonic) passes."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = streams.frames.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if msg is None:
            return
        if msg[0] == "files":
            write_files(exp_dir, msg[1])


def _supervise(
    proc: subprocess.Popen[bytes],
    streams: _Streams,
    job: bytes,
    limits: tuple[float, float],
    exp_dir: Path,
    hello: dict[str, Any],
    launcher: Launcher | None,
) -> Outcome:
    """Hand the worker its job, follow its frames, write the files it sends, and say how it ended."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(job)
        proc.stdin.flush()
    except BrokenPipeError:  # a launcher that exited at once: its status says why, below
        pass
    start_limit, stall_limit = limits
    last = time.monotonic()
    result: list[Any] | None = None
    hung: str | None = None
    closed = False
    try:
        while result is None:
            try:
                msg = streams.frames.get(timeout=0.5)
            except queue.Empty:
                limit = stall_limit if hello else start_limit
                if time.monotonic() - last > limit:
                    hung = "stall" if hello else "start"
                    break
                continue
            if msg is None:  # stdout closed: the worker (or its launcher) is gone
                closed = True
                break
            last = time.monotonic()
            if msg[0] == "hello":
                hello.update(msg[1] if len(msg) > 1 and isinstance(msg[1], dict) else {"said": "hello"})
            elif msg[0] == "files":
                write_files(exp_dir, msg[1])
            elif msg[0] != "beat":
                result = msg
    finally:
        # EOF on its stdin: the worker stops as Ctrl-C stops it, closing its model (a vLLM engine's processes
        # end with it); killed at once, it could not. Only a hung worker, or a second Ctrl-C, is killed.
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        if result is None:
            try:
                if hung:
                    proc.kill()
                elif not closed:  # a Ctrl-C here: the worker stops too, and sends what it measured so far
                    _keep_files(streams, exp_dir, time.monotonic() + PARENT_GONE_GRACE_S)
                proc.wait(PARENT_GONE_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:  # a launcher that lingers after its worker reported: not waited for
            proc.kill()
            proc.wait()
    if hung == "start":
        return Outcome(
            False,
            f"the worker did not start within {start_limit:g} s (campaign.start_timeout_s, --start-timeout):"
            " the launcher hung or is still waiting (an image pull, a queued job); killed",
            exit_code=proc.returncode,
        )
    if hung:
        return Outcome(
            False,
            f"worker hung: no progress for {stall_limit:g} s (measurement.stall_timeout_s); killed",
            exit_code=proc.returncode,
        )
    if result is None:
        return Outcome(False, _death(proc.returncode, launcher), exit_code=proc.returncode)
    if result[0] == "ok":
        return Outcome(True, exit_code=proc.returncode)
    return Outcome(False, result[1], result[2], proc.returncode)


if __name__ == "__main__":
    main()
