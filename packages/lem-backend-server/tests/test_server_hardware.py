"""Which GPU a server's model runs on, through real ``lem run`` subprocesses against the fake server on 127.0.0.1.

lem-energy-nvml's FAKE pynvml stands in for the GPU (this machine has none): one board named
"NVIDIA H100 80GB HBM3", on the worker's PYTHONPATH. A server lem starts is given that GPU, so the
roofline figures use the H100's peaks; an external server's device cannot be seen, so they are null
with the reason, unless ``[hardware]`` gives the peaks. The server is lem_backend_server.testing's
fake (it streams tokens, it runs no model); the tokenizer and config are the tiny Llama's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lem.figures.hardware import PEAKS
from lem_backend_server.testing import running
from lem_energy_nvml.testing import write_pynvml

H100 = "NVIDIA H100 80GB HBM3"
MBU = "efficiency.memory_bandwidth_utilization"


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pynvml(tmp_path_factory.mktemp("nvml"), f'GPUS = [FakeGpu(uuid="GPU-0", name="{H100}")]')


def _run(tmp_path: Path, fake_nvml: Path, tiny_llama: Path, server: str, extra: str = "") -> dict[str, Any]:
    """``lem run`` one experiment; its summary and the backend's ``info["hardware"]``."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "exp.toml").write_text(
        f"""model = "{tiny_llama}"
backend = "server"
precision = "float32"
[server]
{server}
tokenizer = "{tiny_llama}"
[dataset]
num_prompts = 3
input_length = 8
[generation]
max_output_tokens = 8
[traffic]
mode = "concurrency"
concurrency = 1
[measurement]
energy_meter = "none"
idle_seconds = 0
warmup_requests = 0
cycles = 1
{extra}
"""
    )
    path = os.pathsep.join([str(fake_nvml), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "out", "--no-report", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (exp,) = [p for run in (tmp_path / "out").iterdir() for p in run.iterdir() if p.is_dir()]
    summary = json.loads((exp / "summary.json").read_text())
    setup = json.loads((exp / "setup.json").read_text())
    return {"summary": summary, "hardware": setup["model_info"]["info"]["hardware"]}


def test_a_server_lem_starts_is_named_and_measured_against_its_peaks(
    tmp_path: Path, fake_nvml: Path, tiny_llama: Path
) -> None:
    command = json.dumps([sys.executable, "-m", "lem_backend_server.testing", "--port", "{port}", "--itl-ms", "2"])
    got = _run(tmp_path, fake_nvml, tiny_llama, f"command = {command}")
    assert got["hardware"]["device_name"] == H100 and got["hardware"]["devices"] == [0]
    figures, block = got["summary"]["figures"], got["summary"]["hardware"]
    assert block["device_name"] == H100 and block["peak_memory_bandwidth_gbs"] == PEAKS[H100].memory_bandwidth_gbs
    achieved = figures["efficiency.achieved_memory_bandwidth_gbs"]["mean"]
    assert achieved > 0
    assert figures[MBU]["mean"] == pytest.approx(achieved / PEAKS[H100].memory_bandwidth_gbs)


def test_an_external_server_is_not_named_and_hardware_gives_the_peaks(
    tmp_path: Path, fake_nvml: Path, tiny_llama: Path
) -> None:
    with running("--itl-ms", "2") as url:
        plain = _run(tmp_path / "plain", fake_nvml, tiny_llama, f'url = "{url}"')
        given = _run(
            tmp_path / "given", fake_nvml, tiny_llama, f'url = "{url}"', "[hardware]\npeak_memory_bandwidth_gbs = 50.0"
        )
    # The fake board is on this machine, but an external server's is not: it is never named after it.
    assert plain["hardware"]["device_name"] is None
    assert f"server.url = '{url}' is a server on hardware lem cannot see" in plain["hardware"]["device_reason"]
    assert plain["summary"]["figures"][MBU]["mean"] is None
    reason = plain["summary"]["hardware"]["peak_memory_bandwidth_reason"]
    assert "lem cannot see" in reason and reason.endswith("set [hardware] peak_memory_bandwidth_gbs")
    figures = given["summary"]["figures"]
    assert given["summary"]["hardware"]["peak_memory_bandwidth_source"] == "[hardware] peak_memory_bandwidth_gbs"
    assert figures[MBU]["mean"] == pytest.approx(figures["efficiency.achieved_memory_bandwidth_gbs"]["mean"] / 50.0)
