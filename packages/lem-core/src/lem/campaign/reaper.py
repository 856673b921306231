"""The processes a dead worker leaves behind: adopted, then ended.

A worker's engine may run processes of its own (vLLM's engine core, a managed
server, TensorRT-LLM's MPI workers). A worker that ends normally, or on
Ctrl-C, closes its model and they end with it; one killed outright (SIGKILL
from the stall watchdog or the out-of-memory killer, a native crash) cannot,
and they would live on holding a GPU. On Linux the campaign process marks
itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``) while a worker
runs, so such orphans are re-parented to it instead of to init; once the
worker is gone, every child it did not have before is ended (SIGTERM, then
SIGKILL after a grace period) and reaped. Elsewhere this does nothing.
"""

from __future__ import annotations

import os
import signal
import time

from lem.processes import children, set_child_subreaper

GRACE_S = 5.0


class Adopter:
    """``with Adopter() as a: ...run a worker...; left = a.end_orphans(worker_pid)``."""

    def __init__(self) -> None:
        self.active = False
        self.before: set[int] = set()

    def __enter__(self) -> Adopter:
        self.before = children()
        self.active = set_child_subreaper(True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            set_child_subreaper(False)

    def end_orphans(self, worker_pid: int) -> list[int]:
        """End and reap the worker's orphans (children that are new and are not the worker); their pids.

        An orphan's own children, orphaned in turn when it ends, are adopted
        too and ended in the next round.
        """
        if not self.active:
            return []
        ended: list[int] = []
        for _ in range(4):
            left = sorted(children() - self.before - {worker_pid} - set(ended))
            if not left:
                break
            _end(left)
            ended += left
        return ended


def _end(left: list[int]) -> None:
    """SIGTERM, a grace period, then SIGKILL; every one reaped."""
    for pid in left:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    pending = set(left)
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if not _reaped(pid)}
        if pending:
            time.sleep(0.05)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not ours (any more), or already reaped
        return True
    return done == pid
