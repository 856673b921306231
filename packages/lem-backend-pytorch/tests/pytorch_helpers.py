"""Helpers for the PyTorch backend tests: real tiny models on the CPU, called through the plugin manager."""

from __future__ import annotations

import os
from typing import Any

from lem.configfile.loading import config_from_dict
from lem.phases import unmetered
from lem.plugins import get_plugin_manager
from lem.types import LoadedModel, Request, TokenEvent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def make_config(model: str, **tables: Any) -> Any:
    """A validated ExperimentConfig for ``model`` (float32 on the CPU unless told otherwise)."""
    doc: dict[str, Any] = {"model": model, "precision": "float32", "backend": "pytorch"}
    doc.update(tables)
    return config_from_dict(doc)


def load(config: Any) -> LoadedModel:
    """load_model through the plugin manager, as the runner calls it."""
    return get_plugin_manager().hook.load_model(backend=config.backend, config=config, phases=unmetered())


def serve(model: LoadedModel, requests: list[Request], config: Any) -> list[TokenEvent]:
    """generate_stream through the plugin manager, drained."""
    it = get_plugin_manager().hook.generate_stream(
        model=model, requests=requests, params=config.generation, config=config
    )
    return list(it)


def token_requests(n: int, length: int = 8, start: int = 10) -> list[Request]:
    """Requests carrying exact token ids (different per request)."""
    return [
        Request(
            id=i,
            prompt="",
            input_tokens=length + i,
            prompt_token_ids=tuple(start + (5 * i + j) % 500 for j in range(length + i)),
        )
        for i in range(n)
    ]


def per_request(events: list[TokenEvent]) -> dict[int, list[TokenEvent]]:
    """Events grouped by request id, in order."""
    out: dict[int, list[TokenEvent]] = {}
    for e in events:
        out.setdefault(e.request_id, []).append(e)
    return out
