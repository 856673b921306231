"""Helpers for the llama.cpp backend tests, called through the plugin manager as the runner calls them."""

from __future__ import annotations

from typing import Any

from lem.configfile.loading import config_from_dict
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


def refuse_amx_build() -> None:
    """Fail (one test, not the run) where llama.cpp was built with its AMX kernels.

    They segfault in the first decode of a q8_0 or q4_k_m model on AMX CPUs (ggml-org/llama.cpp#20824),
    taking the whole pytest process with them; nox builds llama-cpp-python without them.
    """
    import llama_cpp
    import pytest

    if "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode(errors="replace"):
        pytest.fail(
            "llama-cpp-python was built with llama.cpp's AMX kernels, which segfault on quantized models "
            "(ggml-org/llama.cpp#20824): `pip cache remove llama_cpp_python`, then rebuild it through nox "
            "(noxfile.py _llama_cpp_build_env)",
            pytrace=False,
        )
