"""Tensor parallelism on the CPU: real ``lem run`` workers, real gloo ranks, the real tiny Llama.

Each ``lem run`` here is a real CLI subprocess whose worker is rank 0 and starts rank 1
(``python -m lem_backend_pytorch.tp.follower``); the ranks meet over env:// on 127.0.0.1.
There is no GPU here: energy is read from lem-energy-nvml's fake pynvml (``lem_energy_nvml.testing``:
three fake boards whose counters a thread advances), put in front of the real one on PYTHONPATH.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from lem.configfile.loading import structure, validate

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
#: CI's tests: gloo ranks on the CPU. Where torch sees a GPU the ranks would run there (see the gpu tests).
CPU_ONLY = pytest.mark.skipif(GPUS > 0, reason="tensor-parallel ranks run on the GPUs on this machine")
TWO_GPUS = pytest.mark.skipif(GPUS < 2, reason="needs 2 GPUs")
HERE = Path(__file__).resolve().parent
UUIDS = [f"GPU-{i}aaaaaaa-0000-0000-0000-000000000000" for i in range(3)]
#: The fake ``pynvml``'s boards; board 2 burns twice what board 0 does, board 1 five times.
FAKE_BOARDS = f"""
import threading, time
GPUS = [FakeGpu(uuid=u) for u in {UUIDS!r}]
def burn():
    while True:
        time.sleep(0.01)
        GPUS[2].energy_mj += 20
        GPUS[0].energy_mj += 10
        GPUS[1].energy_mj += 50
threading.Thread(target=burn, daemon=True).start()
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "LEM_CACHE_DIR": str(tmp_path)}


def _toml(path: Path, model: Path, body: str) -> Path:
    path.write_text(
        f'model = "{model}"\nbackend = "pytorch"\nprecision = "float32"\n'
        "[dataset]\nnum_prompts = 4\ninput_length = 12\n"
        "[generation]\nmax_output_tokens = 8\nignore_eos = true\n"
        '[measurement]\nwarmup_requests = 2\nidle_seconds = 0\nenergy_meter = "none"\n' + body
    )
    return path


def _lem(args: list[str], tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "lem", *args], _env(tmp_path)


def _gone(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@CPU_ONLY
def test_tp2_through_the_cli_matches_tp1_and_meters_both_gpus(tiny_llama: Path, tmp_path: Path) -> None:
    exp = _toml(tmp_path / "tp.toml", tiny_llama, 'cycles = 1\n[sweep]\n"sharding.tensor_parallel_size" = [1, 2]\n')
    cmd, env = _lem(["run", str(exp), "--quiet", "--out", str(tmp_path / "out")], tmp_path)
    # CI's session has lem-energy-nvml (noxfile); elsewhere only the energy part is left out.
    nvml = importlib.util.find_spec("lem_energy_nvml") is not None
    if nvml:
        from lem_energy_nvml.testing import write_pynvml  # here: lem-energy-nvml is optional for this test

        exp.write_text(exp.read_text().replace('energy_meter = "none"', 'energy_meter = "nvml"'))
        shim = write_pynvml(tmp_path / "shim", FAKE_BOARDS)
        env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
        env["CUDA_VISIBLE_DEVICES"] = "2,0"  # CUDA ordinals 0 and 1 are NVML boards 2 and 0
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {d.name.split("-")[1]: d for d in (tmp_path / "out").glob("*/*") if d.is_dir()}
    one, two = runs["tensor_parallel_size=1"], runs["tensor_parallel_size=2"]
    metrics, energy = {}, {}
    for name, d in (("1", one), ("2", two)):
        cycle = json.loads((d / "cycle-001.json").read_text())
        metrics[name], energy[name] = cycle["metrics"], cycle["energy"]
        # Every request streamed: one TTFT each, exact counts (ignore_eos, 8 tokens each).
        m = cycle["metrics"]
        assert (m["completed_requests"], m["input_tokens"], m["output_tokens"]) == (4, 48, 32)
        assert m["ttft_s"]["n"] == 4
    if nvml:  # energy over exactly the ranks' GPUs, by UUID: tp = 1 board 2; tp = 2 boards 2 and 0, summed
        assert [d["uuid"] for d in energy["1"]["devices"]] == [UUIDS[2]]
        gpus = energy["2"]["devices"]
        assert [(d["device"], d["uuid"]) for d in gpus] == [(0, UUIDS[2]), (1, UUIDS[0])]
        assert energy["2"]["total_j"] == pytest.approx(sum(d["energy_j"] for d in gpus))
        assert gpus[0]["energy_j"] > gpus[1]["energy_j"] > 0
        assert json.loads((two / "setup.json").read_text())["metered_devices"] == [0, 1]
    # Greedy float32 outputs: exactly the same tokens at tp = 2 as at tp = 1 (the digest covers every token).
    assert metrics["1"]["output_digest"] == metrics["2"]["output_digest"]
    setup = json.loads((two / "setup.json").read_text())
    tp = setup["model_info"]["info"]["tensor_parallel"]
    assert tp["size"] == 2 and tp["backend"] == "gloo"
    assert [r["rank"] for r in tp["ranks"]] == [0, 1] and {r["device"] for r in tp["ranks"]} == {"cpu"}
    assert "distributed_config" in setup["model_info"]["info"]["from_pretrained"]
    assert setup["config"]["sharding.tensor_parallel_size"] == 2
    assert "tensor_parallel" not in json.loads((one / "setup.json").read_text())["model_info"]["info"]
    # No rank outlives its experiment.
    assert _gone([r["pid"] for r in tp["ranks"]]) == []


def _kill_a_follower(exp: Path, tmp_path: Path) -> None:
    """Run ``exp`` (many cycles), SIGKILL rank 1 after the second cycle, check the failure and that no rank is left."""
    out = tmp_path / "out"
    cmd, env = _lem(["run", str(exp), "--quiet", "--out", str(out)], tmp_path)
    stderr = ""
    lem = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/exp/cycle-002.json")) and time.monotonic() < deadline and lem.poll() is None:
            time.sleep(0.1)
        (setup,) = out.glob("*/exp/setup.json")
        ranks = json.loads(setup.read_text())["model_info"]["info"]["tensor_parallel"]["ranks"]
        pids = [r["pid"] for r in ranks]
        os.kill(pids[1], signal.SIGKILL)  # mid-run: cycles keep coming until it dies
        _, stderr = lem.communicate(timeout=60)
    finally:
        if lem.poll() is None:
            lem.kill()
    assert lem.returncode != 0, stderr[-2000:]
    (failure,) = out.glob("*/exp/failure.json")
    reason = json.loads(failure.read_text())["reason"]
    assert f"tensor-parallel rank 1 of 2 (pid {pids[1]}) was killed by SIGKILL" in reason, reason
    assert len(list(out.glob("*/exp/cycle-*.json"))) < 200
    assert _gone(pids) == []


@CPU_ONLY
def test_a_killed_follower_fails_the_experiment_with_its_reason(tiny_llama: Path, tmp_path: Path) -> None:
    _kill_a_follower(
        _toml(tmp_path / "tp.toml", tiny_llama, "cycles = 200\n[sharding]\ntensor_parallel_size = 2\n"), tmp_path
    )


@CPU_ONLY
def test_a_follower_dying_at_start_fails_the_experiment_at_once(tiny_llama: Path, tmp_path: Path) -> None:
    """Rank 1 exits with status 3 as it starts (a sitecustomize on its PYTHONPATH makes it): rank 0 does not
    wait in the rendezvous, the failure names the rank, its exit status and its last output."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('RANK') == '1' and 'LEM_TP_PARENT' in os.environ:\n"
        "    sys.stderr.write('RuntimeError: rank 1 cannot start\\n')\n"
        "    sys.stderr.flush()\n"
        "    os._exit(3)\n"
    )
    exp = _toml(tmp_path / "tp.toml", tiny_llama, "[sharding]\ntensor_parallel_size = 2\n")
    out = tmp_path / "out"
    cmd, env = _lem(["run", str(exp), "--quiet", "--out", str(out)], tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(shim), env.get("PYTHONPATH", "")])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    (failure,) = out.glob("*/exp/failure.json")
    reason = json.loads(failure.read_text())["reason"]
    assert "tensor-parallel rank 1 of 2" in reason and "exited with status 3" in reason, reason
    assert reason.endswith("its last output: RuntimeError: rank 1 cannot start"), reason


@CPU_ONLY
@pytest.mark.parametrize(
    ("tables", "path", "words"),
    [
        ({"pytorch": {"device_map": "auto"}}, "pytorch.device_map", "exclusive"),
        ({"pytorch": {"engine": "continuous"}}, "pytorch.engine", "continuous"),
        ({"pytorch": {"assistant_model": "random:tiny-llama"}}, "pytorch.assistant_model", "assisted"),
        ({"pytorch": {"torch_compile": "default"}}, "pytorch.torch_compile", "compile"),
        ({"generation": {"num_beams": 2}}, "generation.num_beams", "beam"),
        ({"sharding": {"tensor_parallel_size": 3}}, "sharding.tensor_parallel_size", "4 attention heads"),
        ({"sharding": {"tensor_parallel_size": 4}}, "sharding.tensor_parallel_size", "2 key/value heads"),
    ],
)
def test_combinations_that_cannot_run_are_errors(tables: dict, path: str, words: str) -> None:
    doc = {"model": "random:tiny-llama", "backend": "pytorch", "sharding": {"tensor_parallel_size": 2}}
    for key, table in tables.items():
        doc[key] = {**doc.get(key, {}), **table}
    config, problems = structure(doc)
    assert config is not None, problems
    found = [p for p in validate(config) if p.path == path and p.severity == "error"]
    assert len(found) == 1 and words in found[0].message, validate(config)


@CPU_ONLY
def test_a_valid_tp_config_has_no_errors() -> None:
    doc = {"model": "random:tiny-llama", "backend": "pytorch", "sharding": {"tensor_parallel_size": 2}}
    config, _ = structure(doc)
    assert config is not None and [p for p in validate(config) if p.severity == "error"] == []


@CPU_ONLY
def test_device_map_with_tp_is_one_line_from_lem_run(tiny_llama: Path, tmp_path: Path) -> None:
    exp = _toml(
        tmp_path / "bad.toml", tiny_llama, '[sharding]\ntensor_parallel_size = 2\n[pytorch]\ndevice_map = "auto"\n'
    )
    cmd, env = _lem(["run", str(exp), "--quiet", "--out", str(tmp_path / "out")], tmp_path)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pytorch.device_map" in lines[0] and "exclusive" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_follower_exits_when_rank_0_dies(tmp_path: Path) -> None:
    """A follower whose parent (rank 0) dies exits at once: here it has its job and waits for rank 0 to join."""
    parent = (
        "import os, pickle, subprocess, sys\n"
        "from lem.processes import free_port\n"
        "from lem_backend_pytorch.tp import leader as tp\n"
        "env = {**os.environ, **tp.rank_env(1, 2, free_port())}\n"
        "follower = [sys.executable, '-m', 'lem_backend_pytorch.tp.follower']\n"
        "p = subprocess.Popen(follower, stdin=subprocess.PIPE, env=env)\n"
        "from lem.configfile.loading import config_from_dict\n"
        "p.stdin.write(pickle.dumps(config_from_dict({'model': 'random:tiny-llama'})))\n"
        "p.stdin.flush()\n"
        "print(p.pid, flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    follower = int(proc.stdout.readline())
    time.sleep(2.0)  # the follower has its job and waits in the rendezvous for a rank 0 that never comes
    assert _gone([follower]) == [follower]
    proc.stdin.write("die\n")
    proc.stdin.close()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _gone([follower]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone([follower]) == []


@pytest.mark.gpu
@TWO_GPUS
def test_gpu_tp2_meters_both_gpus_with_nvml(tiny_llama: Path, tmp_path: Path) -> None:
    """On 2 GPUs: NCCL ranks on cuda:0 and cuda:1, both real NVML counters, their sum is the total."""
    body = 'cycles = 2\n[pytorch]\ndevice = "cuda"\n[sweep]\n"sharding.tensor_parallel_size" = [1, 2]\n'
    exp = _toml(tmp_path / "tp.toml", tiny_llama, body)
    exp.write_text(exp.read_text().replace('energy_meter = "none"', 'energy_meter = "nvml"'))
    cmd, env = _lem(["run", str(exp), "--quiet", "--out", str(tmp_path / "out")], tmp_path)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {d.name.split("-")[1]: d for d in (tmp_path / "out").glob("*/*") if d.is_dir()}
    two = runs["tensor_parallel_size=2"]
    setup = json.loads((two / "setup.json").read_text())
    tp = setup["model_info"]["info"]["tensor_parallel"]
    assert tp["backend"] == "nccl" and [r["device"] for r in tp["ranks"]] == ["cuda:0", "cuda:1"]
    assert setup["metered_devices"] == [0, 1] and setup["model_info"]["devices"] == [0, 1]
    energy = json.loads((two / "cycle-001.json").read_text())["energy"]
    gpus = energy["devices"]
    assert [d["device"] for d in gpus] == [0, 1] and len({d["uuid"] for d in gpus}) == 2
    assert all(d["energy_j"] > 0 and d["method"] == "counter" for d in gpus)
    assert energy["total_j"] == pytest.approx(sum(d["energy_j"] for d in gpus))
    m = json.loads((two / "cycle-001.json").read_text())["metrics"]
    assert (m["completed_requests"], m["output_tokens"]) == (4, 32)
    assert _gone([r["pid"] for r in tp["ranks"]]) == []


@pytest.mark.gpu
@TWO_GPUS
def test_gpu_a_killed_follower_fails_the_experiment(tiny_llama: Path, tmp_path: Path) -> None:
    """On 2 GPUs: rank 0 does not hang on NCCL after rank 1 dies (the communicators are aborted)."""
    body = 'cycles = 200\n[pytorch]\ndevice = "cuda"\n[sharding]\ntensor_parallel_size = 2\n'
    _kill_a_follower(_toml(tmp_path / "tp.toml", tiny_llama, body), tmp_path)
