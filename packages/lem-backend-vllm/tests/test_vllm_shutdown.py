"""Ctrl-C in the middle of a stream ends the engine processes and leaves no shared memory behind.

A real subprocess (the experiment) gets a real SIGINT; its whole process tree is recorded while it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_ctrl_c_leaves_no_orphans(tiny_llama: Path) -> None:
    shm_before = _shm()
    script = Path(__file__).with_name("serve_until_interrupted.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_llama)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        # vLLM logs to stdout too: wait for our line.
        for line in proc.stdout:
            if line.strip() == "READY":
                break
        else:
            raise AssertionError(f"the experiment ended before streaming (exit {proc.wait()})")
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert any("VLLM" in p.name() for p in tree), [p.name() for p in tree]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 15
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert _shm() - shm_before == set()
