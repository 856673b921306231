"""The managed server's lifecycle when things go wrong: never healthy, exits at once, crashes mid-cycle,
and the worker killed under it. Real subprocesses throughout; the crashing server is the real llama.cpp
server, killed by a small wrapper (server_crash_after.py) after it has logged two completion requests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lem.errors import BackendError
from lem_backend_server import plugin

HERE = Path(__file__).parent


def _wait_gone(pgid: int, seconds: float = 10.0) -> bool:
    from conftest import group_alive

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.1)
    return False


def test_never_healthy_names_the_log(make_config: Any, tiny_llama: Path) -> None:
    code = "import time; print('loading weights, please wait', flush=True); time.sleep(120)"
    cfg = make_config(str(tiny_llama), {"command": [sys.executable, "-c", code], "startup_timeout_s": 2})
    t0 = time.monotonic()
    with pytest.raises(BackendError) as err:
        plugin.load_model(backend="server", config=cfg)
    message = str(err.value)
    assert "did not answer GET /health with 200 within 2 s" in message
    assert "server.log" in message and "loading weights, please wait" in message
    assert time.monotonic() - t0 < 30  # stopped, not waited out


def test_exits_at_once_says_status_and_log(make_config: Any, tiny_llama: Path) -> None:
    code = "import sys; print('error: unrecognized arguments: --bogus', flush=True); sys.exit(3)"
    cfg = make_config(str(tiny_llama), {"command": [sys.executable, "-c", code]})
    with pytest.raises(BackendError, match=r"exited with status 3 before it became healthy") as err:
        plugin.load_model(backend="server", config=cfg)
    assert "unrecognized arguments: --bogus" in str(err.value)


def test_missing_program_is_a_clear_error(make_config: Any, tiny_llama: Path) -> None:
    cfg = make_config(str(tiny_llama), {"command": ["lem-no-such-server-binary", "--port", "{port}"]})
    with pytest.raises(BackendError, match="cannot start 'lem-no-such-server-binary'"):
        plugin.load_model(backend="server", config=cfg)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_worker_takes_its_server_along(sig: signal.Signals) -> None:
    proc = subprocess.Popen([sys.executable, str(HERE / "server_hold.py")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    try:
        os.kill(proc.pid, sig)
        proc.wait(20)
        assert _wait_gone(pid), f"server {pid} outlived its worker ({sig.name})"
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_crash_mid_cycle_is_recorded_and_the_campaign_goes_on(
    tmp_path: Path, tiny_gguf: Path, tiny_llama: Path
) -> None:
    pytest.importorskip("llama_cpp.server")
    exe = json.dumps(sys.executable)
    crash = json.dumps(str(HERE / "server_crash_after.py"))
    (tmp_path / "exp.toml").write_text(
        f"""
model = {json.dumps(str(tiny_gguf))}
backend = "server"
precision = "float32"

[dataset]
source = "synthetic"
num_prompts = 4
input_length = 8

[generation]
max_output_tokens = 8
ignore_eos = true

[traffic]
mode = "concurrency"
concurrency = 1

[measurement]
warmup_requests = 0
cycles = 1
idle_seconds = 0
energy_meter = "none"

[server]
engine = "llamacpp"
tokenizer = {json.dumps(str(tiny_llama))}
command = [{exe}, {crash}, {exe}, "-m", "llama_cpp.server", "--model", "{{model}}", "--host", "{{host}}",
           "--port", "{{port}}", "--n_ctx", "512", "--interrupt_requests", "False"]

[sweep]
"server.env.LEM_TEST_CRASH_AFTER" = ["2", "0"]
"""
    )
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", str(tmp_path / "exp.toml"), "--out", str(out), "-q", "--no-report"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    runs = list(out.iterdir())
    assert len(runs) == 1, done.stdout + done.stderr
    exps = sorted(p for p in runs[0].iterdir() if p.is_dir())
    assert len(exps) == 2, done.stdout + done.stderr
    crashed, fine = exps
    failure = json.loads((crashed / "failure.json").read_text())
    text = json.dumps(failure)
    assert "the server exited with status 1 during the cycle" in text and "killing the server after 2" in text
    summary = json.loads((fine / "summary.json").read_text())
    assert summary, "the second experiment ran to the end"
    metrics = json.loads((fine / "cycle-001.json").read_text())["metrics"]
    assert (metrics["completed_requests"], metrics["failed_requests"]) == (4, 0) and metrics["output_tokens"] >= 32
    setup = json.loads((fine / "setup.json").read_text())
    assert setup["model_info"]["info"]["mode"] == "managed"
    assert setup["load"]["duration_s"] >= setup["model_info"]["info"]["health_wait_s"]


def test_an_external_server_that_never_answers_names_the_timeout_key(make_config: Any, tiny_llama: Path) -> None:
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 where nothing listens once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config(str(tiny_llama), {"url": f"http://127.0.0.1:{port}", "startup_timeout_s": 1})
    t0 = time.monotonic()
    with pytest.raises(BackendError) as err:
        plugin.load_model(backend="server", config=cfg)
    assert "did not answer 200 within 1 s (server.startup_timeout_s)" in str(err.value)
    assert time.monotonic() - t0 < 15
