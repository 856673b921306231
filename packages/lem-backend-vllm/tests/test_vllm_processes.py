"""What close() does after vLLM's shutdown, on real processes: wait for them, kill stragglers, unlink their /dev/shm.

A real child process (multiprocessing spawn, as vLLM starts its engine core) creates a shared-memory segment the
way vLLM's ShmRingBuffer does and is then SIGKILLed, as vLLM kills an engine core that misses its grace.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing import shared_memory
from typing import Any

import psutil
import pytest

from lem_backend_vllm import processes

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc") or not os.path.isdir("/dev/shm"), reason="Linux only")


def _hold_segment(conn: Any) -> None:
    shm = shared_memory.SharedMemory(create=True, size=1 << 20)
    conn.send(shm.name)
    time.sleep(3600)


def test_a_killed_process_segments_are_found_and_unlinked() -> None:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    before = [p.pid for p in processes.children()]
    proc = ctx.Process(target=_hold_segment, args=(child,), daemon=True)
    proc.start()
    try:
        name = parent.recv()
        started = processes.started_since(before)
        assert [p.pid for p in started] == [proc.pid]  # the resource tracker is not counted
        mapped = {n for p in processes.with_descendants(started) for n in processes.shm_mapped(p.pid)}
        assert name in mapped
        proc.kill()  # no __del__, no unlink: the segment stays
        assert processes.wait_gone(started, timeout=10) == []
        assert os.path.exists(f"/dev/shm/{name}")
        assert processes.unlink_left(mapped) == [name]
        assert not os.path.exists(f"/dev/shm/{name}")
        assert processes.unlink_left(mapped) == []  # already gone: nothing to do
    finally:
        proc.kill()
        proc.join(5)


def test_wait_gone_kills_what_outlives_the_grace() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        proc = psutil.Process(sleeper.pid)
        t = time.monotonic()
        killed = processes.wait_gone([proc], timeout=0.5)
        assert [p.pid for p in killed] == [sleeper.pid]
        assert sleeper.wait(5) == -9
        assert time.monotonic() - t < 10
    finally:
        sleeper.kill()
        sleeper.wait()


def test_segments_this_process_maps_are_never_unlinked() -> None:
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        assert shm.name in processes.shm_mapped(os.getpid())
        assert processes.unlink_left({shm.name}) == []
        assert os.path.exists(f"/dev/shm/{shm.name}")
    finally:
        shm.close()
        shm.unlink()
