"""Fixtures: lem_energy_nvml.testing's fake pynvml stands in for GPU hardware (this machine and CI have none)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from lem_energy_nvml.testing import FakeGpu, install


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., ModuleType]:
    """Install a fake ``pynvml`` over the given :class:`FakeGpu` boards; CUDA_VISIBLE_DEVICES starts unset."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)

    def install_boards(gpus: list[FakeGpu], init_error: str | None = None) -> ModuleType:
        return install(monkeypatch, gpus, init_error)

    return install_boards
