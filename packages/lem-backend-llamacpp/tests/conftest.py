"""Fixtures for the llama.cpp backend tests: real GGUF conversions of tiny models, real llama.cpp on the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from llamacpp_helpers import load, make_config

from lem.types import LoadedModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One GGUF cache for the whole session, so each tiny model is converted once."""
    return str(tmp_path_factory.mktemp("gguf-cache"))


@pytest.fixture(scope="session")
def tiny_model(gguf_cache: str) -> Iterator[LoadedModel]:
    """``random:tiny-llama`` converted to an f32 GGUF and loaded once."""
    model = load(make_config("random:tiny-llama", llamacpp={"cache_dir": gguf_cache}))
    yield model
    model.close()


@pytest.fixture
def spy_generate(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Record the keyword arguments each real ``Llama.generate`` call receives (it still runs)."""

    def install(model: LoadedModel) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        llm = model.handle.llm
        real = llm.generate

        def recording(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(llm, "generate", recording)
        return calls

    return install
