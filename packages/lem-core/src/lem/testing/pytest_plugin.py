"""pytest fixtures for lem and its plugins (entry point ``pytest11``: ``lem``).

Plugin authors get real tiny models without a network: ``tiny_llama`` and
``tiny_gpt2`` are directories with a random-weight model and a tokenizer,
built once per test session.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama (float32) with the built-in tokenizer, saved to disk."""
    from lem.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight GPT-2 (float32) with the built-in tokenizer, saved to disk."""
    from lem.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "tiny-gpt2")


@pytest.fixture(autouse=True)
def _lem_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Built-in architectures materialize into a per-session cache, not ~/.cache.
    root = tmp_path_factory.getbasetemp() / "lem-cache"
    monkeypatch.setenv("LEM_CACHE_DIR", str(root))
