"""Tests of the TensorRT-LLM backend run against a FAKE ``tensorrt_llm`` (``tests/fake``), not TensorRT-LLM.

TensorRT-LLM cannot be installed on the machines these tests run on (see
``tests/fake/tensorrt_llm/__init__.py``). The fake directory goes first on
``sys.path`` (and on ``PYTHONPATH`` for the ``lem`` subprocesses), so
``import tensorrt_llm`` finds the fake. lem-energy-nvml's fake ``pynvml``
(``lem_energy_nvml.testing``: GPUs are hardware this machine lacks) answers the
compute-capability check: it is put in ``sys.modules`` for these tests only, and
on the subprocesses' ``PYTHONPATH``.
Tests marked ``gpu`` and ``tensorrt`` run the real library in a clean subprocess.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lem_energy_nvml.testing import FakeGpu, install

FAKE = Path(__file__).resolve().parent / "fake"
sys.path.insert(0, str(FAKE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
#: The fake boards' source for a subprocess's ``pynvml`` (:func:`lem_energy_nvml.testing.write_pynvml`).
FAKE_BOARDS = 'GPUS = [FakeGpu(uuid=f"GPU-{i}", name="Fake GPU") for i in range(8)]'


@pytest.fixture(autouse=True)
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> list[FakeGpu]:
    """Eight fake boards of compute capability 9.0 behind ``pynvml``; set ``compute_capability`` to change it."""
    gpus = [FakeGpu(uuid=f"GPU-{i}", name="Fake GPU") for i in range(8)]
    install(monkeypatch, gpus)
    return gpus


def set_compute_capability(gpus: list[FakeGpu], cc: str) -> None:
    """Give every fake board the capability ``"major.minor"``."""
    major, minor = cc.split(".")
    for gpu in gpus:
        gpu.compute_capability = (int(major), int(minor))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tensorrt: runs the real TensorRT-LLM (skipped where it is not installed)")


@pytest.fixture
def fake_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``fake_script(step_s=..., fail_every=...)`` scripts the fake TensorRT-LLM; returns its JSONL log's path."""

    def script(**fields: Any) -> Path:
        log = tmp_path / "fake-trtllm.jsonl"
        monkeypatch.setenv("LEM_FAKE_TRTLLM", json.dumps({"log": str(log), **fields}))
        return log

    return script


def read_log(path: Path) -> list[dict[str, Any]]:
    """The fake's log lines (``init``, ``shutdown``, ``abort``, ``in_flight``)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def config(model: str, **tables: Any) -> Any:
    """An experiment on the tensorrt backend, tables merged over small defaults (validated by lem's loader)."""
    from lem.configfile.loading import config_from_dict

    doc: dict[str, Any] = {
        "model": model,
        "backend": "tensorrt",
        "generation": {"max_output_tokens": 8, "ignore_eos": True},
    }
    for key, value in tables.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return config_from_dict(doc)
