"""A full ``lem run`` through the CLI with the backend in a worker process, on the FAKE ``tensorrt_llm``.

TensorRT-LLM cannot run here (see ``tests/fake/tensorrt_llm/__init__.py``): the
``lem`` subprocess gets ``tests/fake`` on ``PYTHONPATH``, so its worker imports
the fake ``tensorrt_llm`` (and lem-energy-nvml's fake ``pynvml``, written by
``lem_energy_nvml.testing.write_pynvml``, for the compute-capability check;
energy metering is off). Everything else is the real ``lem``: the TOML file,
config validation with this plugin, the worker process, the runner, the shared
serving driver and the results files. The fake's log shows ``llm.shutdown()``
was called on success, on an engine failure and on Ctrl-C.
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
from conftest import FAKE, FAKE_BOARDS, read_log

from lem_energy_nvml.testing import write_pynvml

EXPERIMENT = """
model = "{model}"
backend = "tensorrt"
precision = "bfloat16"

[dataset]
source = "synthetic"
num_prompts = 4
input_length = 16

[generation]
max_output_tokens = {tokens}
ignore_eos = true

[traffic]
mode = "concurrency"
concurrency = 2

[measurement]
warmup_requests = 1
cycles = 1
idle_seconds = 0.0
energy_meter = "none"

[tensorrt]
max_batch_size = 8
gpu_memory_utilization = 0.5
"""


def lem(
    tmp_path: Path, model: Path, script: dict[str, Any], tokens: int = 8, *flags: str, extra: str = "", **popen: Any
) -> Any:
    """``lem run`` in a subprocess on the fake; ``extra`` is appended to the file (inside its ``[tensorrt]`` table)."""
    (tmp_path / "exp.toml").write_text(EXPERIMENT.format(model=model, tokens=tokens) + extra)
    nvml = write_pynvml(tmp_path / "fake-nvml", FAKE_BOARDS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FAKE), str(nvml), os.environ.get("PYTHONPATH", "")]),
        "LEM_FAKE_TRTLLM": json.dumps({"log": str(tmp_path / "fake.jsonl"), **script}),
        "HF_HUB_OFFLINE": "1",
    }
    argv = [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "out", "-q", *flags]
    if popen:
        return subprocess.Popen(argv, cwd=tmp_path, env=env, text=True, **popen)
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_lem_run_through_the_cli_in_a_worker(tmp_path: Path, tiny_llama: Path) -> None:
    proc = lem(tmp_path, tiny_llama, {})
    assert proc.returncode == 0, proc.stderr
    [cycle_path] = list((tmp_path / "out").glob("*/*/cycle-001.json"))
    cycle = json.loads(cycle_path.read_text())
    assert cycle["metrics"]["output_tokens"] == 4 * 8
    assert cycle["metrics"]["input_tokens"] == 4 * 16
    setup = json.loads((cycle_path.parent / "setup.json").read_text())
    info = setup["model_info"]["info"]
    assert info["tensorrt_llm_version"] == "0.0.0+lem.fake"
    assert "kv_cache_config" in info["llm_args"]
    log = read_log(tmp_path / "fake.jsonl")
    assert [e["event"] for e in log if e["event"] != "in_flight"] == ["init", "shutdown"]
    assert {e["pid"] for e in log} != {os.getpid()}  # the worker ran the engine, not this process
    assert max(e["n"] for e in log if e["event"] == "in_flight") <= 2


def test_lem_run_builds_a_tensorrt_engine_once_and_reuses_it(tmp_path: Path, tiny_llama: Path) -> None:
    # runtime = "tensorrt": the first run builds (its own phase in setup.json), the second loads the cached engine.
    extra = f'runtime = "tensorrt"\nengine_cache_dir = "{tmp_path / "engines"}"\nmax_input_len = 64\n'
    first = lem(tmp_path, tiny_llama, {"build_s": 0.05}, extra=extra)
    assert first.returncode == 0, first.stderr
    second = lem(tmp_path, tiny_llama, {}, extra=extra)
    assert second.returncode == 0, second.stderr
    setups = sorted((tmp_path / "out").glob("*/*/setup.json"))
    assert len(setups) == 2
    built, reused = (json.loads(p.read_text()) for p in setups)
    assert built["load"]["phases"]["build"]["duration_s"] >= 0.05
    assert built["load"]["phases"]["build"]["energy_reason"].startswith("energy metering is off")
    assert reused["load"]["phases"] == {}
    info, again = built["model_info"]["info"]["engine_build"], reused["model_info"]["info"]["engine_build"]
    assert (info["cache"], again["cache"]) == ("miss", "hit") and info["path"] == again["path"]
    assert info["build_config"] == {"max_batch_size": 8, "max_input_len": 64}
    events = [e["event"] for e in read_log(tmp_path / "fake.jsonl") if e["event"] != "in_flight"]
    build, load = ["init", "build", "save", "shutdown"], ["init", "load_engine", "shutdown"]
    assert events == [*build, *load, *load]  # built, saved and shut down; then the saved engine loaded, twice
    cycle = json.loads(next(setups[1].parent.glob("cycle-001.json")).read_text())
    assert cycle["metrics"]["output_tokens"] == 4 * 8


def test_an_engine_failure_is_recorded_and_the_engine_shut_down(tmp_path: Path, tiny_llama: Path) -> None:
    proc = lem(tmp_path, tiny_llama, {"crash_on": 3})
    assert proc.returncode != 0
    assert "fake executor died" in proc.stdout + proc.stderr
    assert [e["event"] for e in read_log(tmp_path / "fake.jsonl")].count("shutdown") == 1


def test_a_config_error_is_one_line_before_anything_starts(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "exp.toml").write_text(EXPERIMENT.format(model=tiny_llama, tokens=8) + 'engine_path = "/x"\n')
    env = {**os.environ, "PYTHONPATH": str(FAKE), "LEM_FAKE_TRTLLM": json.dumps({"log": str(tmp_path / "f.jsonl")})}
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "tensorrt.engine_path = '/x'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "f.jsonl").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT")
def test_ctrl_c_shuts_the_engine_down(tmp_path: Path, tiny_llama: Path) -> None:
    # In this process (--in-process): on Ctrl-C lem's campaign runner kills a worker process at once, before
    # the worker's own cleanup can run, so the backend's shutdown on Ctrl-C is observable only here.
    log_path = tmp_path / "fake.jsonl"
    proc = lem(
        tmp_path,
        tiny_llama,
        {"step_s": 0.2},
        200,
        "--in-process",
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(e["event"] == "in_flight" for e in read_log(log_path)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends the whole foreground group on Ctrl-C
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    events = [e["event"] for e in read_log(log_path)]
    assert events.count("shutdown") == 1
