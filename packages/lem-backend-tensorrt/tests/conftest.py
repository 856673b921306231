"""Tests of the TensorRT-LLM backend run against a FAKE ``tensorrt_llm`` (``tests/fake``), not TensorRT-LLM.

TensorRT-LLM cannot be installed on the machines these tests run on (see
``tests/fake/tensorrt_llm/__init__.py``). The fake directory goes first on
``sys.path`` (and on ``PYTHONPATH`` for the ``lem`` subprocesses), so
``import tensorrt_llm`` finds the fake. A fake ``pynvml`` (``tests/fake_nvml``: GPUs
are hardware this machine lacks) answers the compute-capability check: it is put in
``sys.modules`` for these tests only, and on the subprocesses' ``PYTHONPATH``.
Tests marked ``gpu`` and ``tensorrt`` run the real library in a clean subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FAKE = Path(__file__).resolve().parent / "fake"
FAKE_NVML = Path(__file__).resolve().parent / "fake_nvml"
sys.path.insert(0, str(FAKE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pynvml", module)


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
