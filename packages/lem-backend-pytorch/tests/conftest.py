"""Fixtures for the PyTorch backend tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pytorch_helpers import load, make_config

from lem.types import LoadedModel


@pytest.fixture(scope="session")
def tiny_model(tiny_llama: Any) -> LoadedModel:
    """The tiny Llama fixture loaded once (float32, CPU) with default options."""
    return load(make_config(str(tiny_llama)))


@pytest.fixture
def spy_generate(monkeypatch: pytest.MonkeyPatch) -> Callable[[LoadedModel], list[dict[str, Any]]]:
    """Record the keyword arguments each real ``model.generate`` call receives (it still runs)."""

    def install(model: LoadedModel) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        hf = model.handle.model
        real = hf.generate

        def recording(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(hf, "generate", recording)
        return calls

    return install
