"""Helpers for the llama.cpp backend tests, called through the plugin manager as the runner calls them."""

from __future__ import annotations

from typing import Any

from lem.loading import config_from_dict
from lem.phases import unmetered
from lem.plugins import get_plugin_manager
from lem.types import LoadedModel, Request, TokenEvent

GREEDY = {"do_sample": False, "ignore_eos": True, "max_output_tokens": 8}


def make_config(model: str, **tables: Any) -> Any:
    """A validated ExperimentConfig for the llamacpp backend (float32 -> an f32 GGUF unless told otherwise)."""
    doc: dict[str, Any] = {"model": model, "precision": "float32", "backend": "llamacpp", "generation": GREEDY}
    doc.update(tables)
    return config_from_dict(doc)


def load(config: Any) -> LoadedModel:
    """load_model through the plugin manager."""
    model: LoadedModel = get_plugin_manager().hook.load_model(backend=config.backend, config=config, phases=unmetered())
    return model


def serve(model: LoadedModel, requests: list[Request], config: Any) -> list[TokenEvent]:
    """generate_stream through the plugin manager, drained."""
    it = get_plugin_manager().hook.generate_stream(
        model=model, requests=requests, params=config.generation, config=config
    )
    return list(it)


def token_requests(n: int, length: int = 8, start: int = 10, arrival_ns: int | None = None) -> list[Request]:
    """Requests carrying exact token ids (different per request)."""
    return [
        Request(i, "", length, tuple(start + (5 * i + j) % 500 for j in range(length)), arrival_ns) for i in range(n)
    ]
