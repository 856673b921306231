"""Fixtures: a fake pynvml standing in for GPU hardware (this machine and CI have none)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

import pytest
from fake_pynvml import FakeGpu, make_pynvml


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """Install a fake ``pynvml`` over the given :class:`FakeGpu` boards; CUDA_VISIBLE_DEVICES starts unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def install(gpus: list[FakeGpu], init_error: str | None = None) -> ModuleType:
        module = make_pynvml(gpus, init_error)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    return install
