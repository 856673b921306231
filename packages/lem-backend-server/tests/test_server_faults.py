"""Fault tests on real processes: lem against a misbehaving OpenAI-compatible server on 127.0.0.1.

The server (server_misbehaving.py, a real HTTP server) answers every request with HTTP 500, or well-formed
JSON of the wrong shape, or never, or stalls mid-stream, or fails every third request; another copy squats
on a configured port. Each case runs the real ``lem run`` command in a subprocess and checks its exit
status and the words a user needs; every wait is bounded (request timeouts of 2 s, subprocess timeouts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lem.processes import free_port, listening

HERE = Path(__file__).parent
SERVER = HERE / "server_misbehaving.py"


def _toml(tiny_llama: Path, mode: str, log: Path, *, port: int = 0, extra: str = "", server: str = "") -> str:
    command = json.dumps([sys.executable, str(SERVER), "{port}", mode])
    return f"""model = "{tiny_llama}"
backend = "server"
precision = "float32"
[server]
command = {command}
port = {port}
{server}
request_timeout_s = 2
startup_timeout_s = 30
log_file = "{log}"
[dataset]
num_prompts = 4
input_length = 8
[generation]
max_output_tokens = 4
[measurement]
energy_meter = "none"
idle_seconds = 0
warmup_requests = 0
cycles = 1
min_window_s = 3
{extra}
"""


def _lem_run(tmp_path: Path, text: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    (tmp_path / "exp.toml").write_text(text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "out", "--no-report"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _completions(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("completion "))


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("500", ("all 4 requests failed", "HTTP 500", "the engine is on fire")),
        ("shape", ("all 4 requests failed", "[DONE]")),
        ("hang", ("all 4 requests failed", "timed out")),
        ("stall", ("all 4 requests failed", "timed out")),
    ],
)
def test_a_server_whose_requests_all_fail_ends_failed(
    tiny_llama: Path, tmp_path: Path, mode: str, words: tuple[str, ...]
) -> None:
    log = tmp_path / "server.log"
    done = _lem_run(tmp_path, _toml(tiny_llama, mode, log))
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Traceback" not in text
    assert "FAILED" in done.stderr and " failed " in done.stdout
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    summary = json.loads(next((tmp_path / "out").glob("*/exp/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["failed_requests"] == 4
    # min_window_s = 3 would serve the prompt set again and again; after a failed pass the cycle stops.
    assert _completions(log) == 4


def test_some_failed_requests_degrade_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    done = _lem_run(tmp_path, _toml(tiny_llama, "flaky", log))
    assert done.returncode == 1, done.stderr
    assert "DEGRADED" in done.stderr and "above measurement.max_failed_share = 0" in done.stderr
    assert "degraded" in done.stdout and "HTTP 500" in done.stdout
    summary = json.loads(next((tmp_path / "out").glob("*/exp/summary.json")).read_text())
    assert summary["status"] == "degraded"
    assert 0 < summary["failed_requests"] < sum(summary["workload"]["requests"])


def test_a_failed_share_within_the_limit_is_ok(tiny_llama: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    done = _lem_run(tmp_path, _toml(tiny_llama, "flaky", log, extra="max_failed_share = 0.5"))
    assert done.returncode == 0, done.stderr
    summary = json.loads(next((tmp_path / "out").glob("*/exp/summary.json")).read_text())
    assert summary["status"] == "ok" and summary["failed_requests"] > 0


def test_a_server_gone_mid_cycle_under_two_client_processes_fails_the_experiment(
    tiny_llama: Path, tmp_path: Path
) -> None:
    # The server exits on its third request; the client processes then meet a refused connection. The
    # experiment fails with the server's exit named (not as failed requests, not a hang), lem run exits 1
    # with no traceback from any process, and no client process outlives it.
    import psutil

    log = tmp_path / "server.log"
    text = _toml(
        tiny_llama, "die", log, server="client_processes = 2", extra='[traffic]\nmode = "concurrency"\nconcurrency = 2'
    )
    done = _lem_run(tmp_path, text)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output
    assert " failed " in done.stdout, done.stdout
    failure = json.loads(next((tmp_path / "out").glob("*/exp/failure.json")).read_text())
    assert "the server exited with status 1 during the cycle" in json.dumps(failure), failure
    assert list((tmp_path / "out").glob("*/exp/summary.json")) == []
    assert _completions(log) == 3  # two answered, the third ended the server; nothing was retried into a hang
    assert not [p.pid for p in psutil.process_iter() if _spawned_in(p, tmp_path)], "a client process outlived lem run"


def _spawned_in(proc: object, cwd: Path) -> bool:
    """Whether ``proc`` is a multiprocessing ``spawn`` child running in ``cwd`` (lem run's directory here)."""
    import psutil

    assert isinstance(proc, psutil.Process)
    try:
        return "spawn_main" in " ".join(proc.cmdline()) and Path(proc.cwd()) == cwd
    except psutil.Error:
        return False


def test_a_port_held_by_another_process_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    port = free_port()
    squatter = subprocess.Popen(
        [sys.executable, str(SERVER), str(port), "ok"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while not listening("127.0.0.1", port, 0.5):
            assert time.monotonic() < deadline and squatter.poll() is None, "the squatter did not start"
            time.sleep(0.1)
        done = _lem_run(tmp_path, _toml(tiny_llama, "ok", tmp_path / "server.log", port=port))
        text = done.stdout + done.stderr
        assert done.returncode == 1, text
        assert "Traceback" not in text
        assert f"server.port = {port}: another process already listens on 127.0.0.1:{port}" in text
        assert list((tmp_path / "out").glob("*/exp/summary.json")) == []  # nothing measured
    finally:
        squatter.kill()
        squatter.wait(10)
