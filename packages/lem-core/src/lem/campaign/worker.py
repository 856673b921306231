"""Process isolation: each experiment runs in a fresh worker process, ``python -m lem.campaign.worker``.

A new interpreter (not a fork) means CUDA and the backend
begin from clean state, and whatever kills it (a segfault, ``os._exit``, the
out-of-memory killer) kills only that experiment: the parent records why and
goes on. The worker sends a heartbeat on every progress update; one that stays
silent longer than the stall timeout is treated as hung and killed. A worker
whose parent dies exits at once, so a killed campaign leaves no orphan
holding a GPU; the processes of a worker that was killed (its engine's) are
adopted by the campaign process and ended (:mod:`lem.campaign.reaper`).

The job comes in as one JSON line on stdin (:mod:`lem.campaign.job`); reports
go out as JSON lines on the file descriptor named on the command line.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from lem.campaign.job import Job, Outcome, experiment_of, from_json, register, to_json
from lem.campaign.reaper import Adopter
from lem.configfile.loading import Experiment, validate
from lem.errors import ConfigError
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


def main() -> None:
    """``python -m lem.campaign.worker FD``: read the job (one JSON line) from stdin, report on descriptor FD.

    Reports are JSON lists, one a line: ``["beat"]``, then ``["ok"]`` or ``["error", reason, traceback]``.
    """
    report = os.fdopen(int(sys.argv[1]), "w", buffering=1, encoding="utf-8")
    line = sys.stdin.buffer.readline()
    if not line.endswith(b"\n"):  # the campaign died before it handed the whole job over
        sys.exit(70)
    last = [0.0]

    def send(*msg: Any) -> None:
        try:
            report.write(json.dumps(msg) + "\n")
        except BrokenPipeError:  # the campaign is gone (killed): nobody reads the report any more
            pass

    def beat() -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            send("beat")

    try:
        _exit_with_parent(sys.stdin.fileno())  # in the try: the campaign may already be gone
        job = from_json(line)
        register(job.plugins)  # plugins registered at run time in the campaign (a test backend) exist here too
        exp = experiment_of(job)
        if job.validate:
            _validate_here(exp)
        progress = Progress(job.prefix, quiet=job.quiet, heartbeat=beat)
        try:
            run_experiment(exp, Path(job.exp_dir), job.run_id, progress)
        finally:
            progress.close()  # a stage ended by an exception must not leave its live line running
        # Done before the result is sent: the parent closes our stdin once it has read it, and that
        # EOF must not interrupt us while we still write the message or close the report pipe.
        _state["done"] = True
        send("ok")
    except BaseException as exc:  # everything is reported to the parent, which records it
        _state["done"] = True
        send("error", failure_reason(exc), traceback.format_exc())
    finally:
        _state["done"] = True
        try:
            report.close()
        except BrokenPipeError:  # a report line still buffered for a campaign that is gone
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


def _death(code: int | None) -> str:
    if code is None:
        return "worker did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = " (often the kernel's out-of-memory killer: see `dmesg`)" if -code == signal.SIGKILL else ""
        return f"worker process killed by {name}{why}"
    return f"worker process exited with status {code} before reporting a result (os._exit or a native crash)"


def run_in_worker(job: Job, python: str | None = None, timeout_s: float | None = None) -> Outcome:
    """Run one job in a fresh ``python -m lem.campaign.worker`` process and report how it ended.

    :param python: the interpreter to run it with (another environment's, for a backend installed there).
    :param timeout_s: seconds without a report after which the worker is hung and killed; default: the
        experiment's ``measurement.stall_timeout_s``.
    """
    if timeout_s is None:
        timeout_s = experiment_of(job).config.measurement.stall_timeout_s
    rfd, wfd = os.pipe()
    # The worker's stdout goes to our stderr: libraries that print must not corrupt `lem run --json`.
    try:
        stdout = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook's or a test's stderr has no descriptor
        stdout = 2
    with Adopter() as adopter:  # a killed worker's engine processes are re-parented here (lem.campaign.reaper)
        proc = subprocess.Popen(
            [python or sys.executable, "-m", "lem.campaign.worker", str(wfd)],
            stdin=subprocess.PIPE,
            stdout=stdout,
            pass_fds=(wfd,),
        )
        try:
            return _supervise(proc, rfd, wfd, (to_json(job) + "\n").encode(), timeout_s)
        finally:  # also on Ctrl-C: the worker has been waited for by then
            left = adopter.end_orphans(proc.pid)
            if left:
                print(
                    f"lem: {job.prefix}the worker left {len(left)} process(es) of its own behind"
                    f" (pids {', '.join(map(str, left))}); ended them",
                    file=sys.stderr,
                )


def _supervise(proc: subprocess.Popen[bytes], rfd: int, wfd: int, job: bytes, limit: float) -> Outcome:
    """Hand the worker its job, follow its reports and heartbeats, and say how it ended."""
    os.close(wfd)  # only the worker writes: EOF then means it is gone
    assert proc.stdin is not None
    proc.stdin.write(job)
    proc.stdin.flush()
    reports = os.fdopen(rfd, "r", encoding="utf-8")
    last = time.monotonic()
    result: list[Any] | None = None
    hung = False
    try:
        while result is None:
            ready, _, _ = select.select([reports], [], [], 0.5)
            if ready:
                line = reports.readline()
                if not line:
                    break
                last = time.monotonic()
                msg = json.loads(line)
                if msg[0] != "beat":
                    result = msg
            elif time.monotonic() - last > limit:
                hung = True
                break
    finally:
        # EOF on its stdin: the worker stops as Ctrl-C stops it, closing its model (a vLLM engine's processes
        # end with it); killed at once, it could not. Only a hung worker, or a second Ctrl-C, is killed.
        proc.stdin.close()
        if result is None:
            try:
                if hung:
                    proc.kill()
                proc.wait(PARENT_GONE_GRACE_S)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
        proc.wait(60)
        reports.close()
    if hung:
        return Outcome(
            False,
            f"worker hung: no progress for {limit:g} s (measurement.stall_timeout_s); killed",
            exit_code=proc.returncode,
        )
    if result is None:
        return Outcome(False, _death(proc.returncode), exit_code=proc.returncode)
    if result[0] == "ok":
        return Outcome(True, exit_code=proc.returncode)
    return Outcome(False, result[1], result[2], proc.returncode)


if __name__ == "__main__":
    main()
