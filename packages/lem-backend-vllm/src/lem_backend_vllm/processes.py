"""The engine's processes and the shared memory they map, so that closing an engine leaves neither behind.

vLLM runs its engine core in a child process (``VLLM::EngineCore``), which on
the CPU and with tensor parallelism starts its own workers
(``VLLM::Worker``). They talk through shared-memory ring buffers
(``vllm.distributed.device_communicators.shm_broadcast.ShmRingBuffer``, one
``multiprocessing.shared_memory`` segment ``/dev/shm/psm_*`` per message
queue, 160-240 MiB each here) that the creating process unlinks only in the
buffer's ``__del__``, i.e. when it exits normally. vLLM gives the engine core
5 s to exit after SIGTERM (and the engine core gives its workers 5 s) before
SIGKILL; their teardown takes ~4 s on an idle 2-core machine, so under load
they are killed and their segments stay until the parent's multiprocessing
resource tracker exits. :mod:`lem_backend_vllm.engine` therefore gives vLLM a
longer grace, waits for these processes to exit, and then unlinks what they
mapped and left (:func:`reap`).

Linux only (``/proc``); elsewhere there is nothing to find and nothing is done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SHM_DIR = Path("/dev/shm")


def _is_resource_tracker(proc: Any) -> bool:
    # Python's multiprocessing resource tracker is a child of ours, not an engine process: it lives
    # until this process exits, and it frees what leaked.
    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except Exception:
        return False


def children() -> list[Any]:
    """This process's descendants (``psutil.Process``), the resource tracker excluded."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if not _is_resource_tracker(p)]


def started_since(before: Iterable[int]) -> list[Any]:
    """Descendants that were not in ``before`` (pids): the processes an engine start made."""
    known = set(before)
    return [p for p in children() if p.pid not in known]


def with_descendants(procs: Sequence[Any]) -> list[Any]:
    """``procs`` still running, and every process they have started since."""
    import psutil

    out: dict[int, Any] = {}
    for proc in procs:
        try:
            if not proc.is_running():
                continue
            out[proc.pid] = proc
            for child in proc.children(recursive=True):
                out.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(out.values())


def shm_mapped(pid: int) -> set[str]:
    """Names of the ``/dev/shm`` files process ``pid`` has mapped (still linked)."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if path.startswith(f"{SHM_DIR}/") and not path.endswith(" (deleted)"):
            names.add(path[len(str(SHM_DIR)) + 1 :])
    return names


def wait_gone(procs: Sequence[Any], timeout: float) -> list[Any]:
    """Wait up to ``timeout`` s for ``procs`` to exit, then SIGKILL the rest; returns those it killed.

    A zombie counts as exited: its memory and mappings are gone, and a grandchild's zombie is reaped
    by whoever adopts it, not by us.
    """
    import psutil

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + 5
    while any(_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _running(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def unlink_left(names: Iterable[str]) -> list[str]:
    """Unlink the ``/dev/shm`` files in ``names`` that still exist and that this process does not map.

    Call it only once the processes that mapped them have exited. The names are also dropped from
    the multiprocessing resource tracker, which would otherwise try to free them again at exit.
    Returns the names unlinked.
    """
    from multiprocessing import resource_tracker

    ours = shm_mapped(os.getpid())
    done = []
    for name in sorted(set(names) - ours):
        try:
            (SHM_DIR / name).unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        done.append(name)
        # The names the tracker knows: "/psm_x" for SharedMemory, "/mp-x" for a semaphore (sem.mp-x).
        if name.startswith("psm_"):
            resource_tracker.unregister(f"/{name}", "shared_memory")
        elif name.startswith("sem.mp-"):
            resource_tracker.unregister(f"/{name[4:]}", "semaphore")
    return done
