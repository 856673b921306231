"""Ctrl-C in the middle of a stream ends the engine processes and leaves no shared memory behind.

Real subprocesses (an experiment script, and `lem run` with its worker) get a real SIGINT; their whole process
trees are recorded while they run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lem_backend_vllm import processes


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


EXPERIMENT = """
model = "{model}"
backend = "vllm"
precision = "float32"

[dataset]
source = "synthetic"
num_prompts = 2
input_length = 8

[generation]
max_output_tokens = 200
ignore_eos = true

[measurement]
warmup_requests = 0
cycles = 100
idle_seconds = 0.0
energy_meter = "none"

[vllm]
enforce_eager = true
max_model_len = 512
"""


def _engine_tree(parent: psutil.Process) -> list[psutil.Process]:
    return [p for p in parent.children(recursive=True) if p.name().startswith("VLLM")]


def test_sigint_to_the_lem_parent_alone_ends_the_engine(tiny_llama: Path, tmp_path: Path) -> None:
    """`lem run` (campaign parent, worker process, vLLM engine core and worker): SIGINT to the parent only."""
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.format(model=tiny_llama))
    shm_before = _shm()
    out = tmp_path / "results"
    # A session of its own: the signal reaches the parent and nothing else (no terminal's process group).
    proc = subprocess.Popen(
        [sys.executable, "-m", "lem", "run", str(exp), "--out", str(out), "-q", "--no-report"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 300
        while not list(out.glob("*/*/cycle-001.json")):  # the engine is up and serving
            assert proc.poll() is None, f"lem run ended before its first cycle (exit {proc.returncode})"
            assert time.monotonic() < deadline, "no cycle within 300 s"
            time.sleep(0.2)
        tree = parent.children(recursive=True)
        engine = _engine_tree(parent)
        assert engine, [p.name() for p in tree]
        engine_shm = {n for p in engine for n in processes.shm_mapped(p.pid)}
        assert engine_shm
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    deadline = time.monotonic() + 30
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert {n for n in engine_shm if os.path.exists(f"/dev/shm/{n}")} == set()
    # Nothing new is left either, but for what live processes (other programs on this machine) map right now.
    mapped_now = {n for p in psutil.process_iter() for n in processes.shm_mapped(p.pid)}
    assert _shm() - shm_before - mapped_now == set()
