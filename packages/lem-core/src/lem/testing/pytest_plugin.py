"""pytest fixtures for lem and its plugins (entry point ``pytest11``: ``lem``).

Plugin authors get real tiny models without a network: ``tiny_llama`` and
``tiny_gpt2`` are directories with a random-weight model and a tokenizer,
built once per test session. ``run_scripted`` runs whole campaigns on the
scripted backend (:mod:`lem.testing.scripted`), e.g. to test an energy meter
through the real runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lem.testing import ScriptedRunner


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama (float32) with the built-in tokenizer, saved to disk."""
    # Deferred: pytest loads this plugin in every session; lem.testing (the campaign) loads when a fixture is used.
    from lem.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight GPT-2 (float32) with the built-in tokenizer, saved to disk."""
    # Deferred: pytest loads this plugin in every session; lem.testing (the campaign) loads when a fixture is used.
    from lem.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "tiny-gpt2")


@pytest.fixture
def scripted_backend() -> Iterator[ModuleType]:
    """:mod:`lem.testing.scripted` registered as the backend and meter ``"scripted"`` for this test."""
    # Deferred: pytest loads this plugin in every session; lem.testing (the campaign) loads when a fixture is used.
    from lem.testing import registered, scripted

    with registered(scripted, scripted.NAME):
        yield scripted


@pytest.fixture
def run_scripted(scripted_backend: ModuleType, tmp_path: Path) -> ScriptedRunner:
    """Run experiments on the scripted backend (registered for this test) as one campaign in this process.

    ``run_scripted(tables_or_experiment, ...)`` returns a :class:`lem.testing.CampaignRun` (``ok``,
    ``run_dir``, ``experiment_dir("exp")``) and fails the test if an experiment failed (``check=False``
    returns it anyway); results go under ``tmp_path / "results"``.
    """
    # Deferred: pytest loads this plugin in every session; lem.testing (the campaign) loads when a fixture is used.
    from lem.testing import ScriptedRunner

    return ScriptedRunner(tmp_path / "results")


@pytest.fixture(autouse=True)
def _lem_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Built-in architectures materialize into a per-session cache, not ~/.cache.
    root = tmp_path_factory.getbasetemp() / "lem-cache"
    monkeypatch.setenv("LEM_CACHE_DIR", str(root))
