"""The backend for real against llama-cpp-python's server (``python -m llama_cpp.server``) on the tiny Llama.

One managed server for the module (it starts in ~2 s here); the external-mode tests reach that same server
by URL. The last test closes it and checks that no process of its group is left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_server import plugin

pytest.importorskip("llama_cpp.server")

N_CTX = 512


@pytest.fixture(scope="module")
def config(tiny_gguf: Path, tiny_llama: Path, make_config: Any) -> Any:
    server = {"engine": "llamacpp", "tokenizer": str(tiny_llama), "args": ["--n_ctx", str(N_CTX)]}
    return make_config(str(tiny_gguf), server)


@pytest.fixture(scope="module")
def model(config: Any) -> Iterator[LoadedModel]:
    loaded = plugin.load_model(backend="server", config=config)
    assert loaded is not None
    yield loaded
    loaded.close()  # idempotent: the last test closed it


def _requests(n: int, arrivals: list[int] | None = None) -> list[Request]:
    return [
        Request(i, f"energy per token {i}", 4, arrival_ns=None if arrivals is None else arrivals[i]) for i in range(n)
    ]


def _run(model: LoadedModel, config: Any, requests: list[Request]) -> list[TokenEvent]:
    stream = plugin.generate_stream(model=model, requests=requests, params=config.generation, config=config)
    assert stream is not None
    return list(stream)


def _tokens(events: list[TokenEvent]) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in events:
        out[e.request_id] = out.get(e.request_id, 0) + e.n_tokens
    return out


def _usage(model: LoadedModel, prompt: str, max_tokens: int) -> int:
    """The server's own count for the same greedy request, not streamed."""
    import httpx

    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "seed": 42, "logit_bias": {"2": -1e9}}
    r = httpx.post(model.info["url"] + "/v1/completions", json=body, timeout=60)
    return int(r.json()["usage"]["completion_tokens"])


def test_managed_server_facts(model: LoadedModel) -> None:
    import llama_cpp

    info = model.info
    assert info["mode"] == "managed" and info["engine"] == "llamacpp"
    assert info["engine_version"] == llama_cpp.__version__
    assert info["command"][1:4] == ["-m", "llama_cpp.server", "--model"] and "--n_ctx" in info["command"]
    assert info["url"].startswith("http://127.0.0.1:") and "--host" in info["command"]
    assert info["health_wait_s"] > 0 and info["spawn_s"] >= 0 and info["started_at"].endswith("+00:00")
    assert Path(info["log_file"]).is_file()
    assert info["prompt_format"].startswith("text")
    # The server's interpreter runs a CPU build of llama.cpp here: the model is on the CPU, not on a GPU.
    assert not llama_cpp.llama_supports_gpu_offload()
    assert info["hardware"]["device_name"] is None and "has no GPU offload" in info["hardware"]["device_reason"]
    assert model.model_config["hidden_size"] == 128 and model.tokenizer.eos_token_id == 2


def test_token_counts_are_the_servers(model: LoadedModel, config: Any) -> None:
    reqs = _requests(3)
    events = _run(model, config, reqs)
    counts = _tokens(events)
    # llama-cpp-python can run a few tokens past max_tokens on byte-level tokens; its own usage says so too.
    assert counts == {r.id: _usage(model, r.prompt, 8) for r in reqs}
    assert all(n >= 8 for n in counts.values())
    finished = [e for e in events if e.finished]
    assert sorted(e.request_id for e in finished) == [0, 1, 2] and all(e.error is None for e in finished)
    # One event per streamed token chunk: more than one event per request, timestamps in order.
    per = [e for e in events if e.request_id == 0 and e.n_tokens]
    assert len(per) >= 8 and [e.t_ns for e in per] == sorted(e.t_ns for e in per)


@pytest.mark.parametrize("mode", ["offline", "constant", "poisson", "concurrency"])
def test_traffic_patterns(model: LoadedModel, config: Any, make_config: Any, mode: str) -> None:
    import attrs

    from lem.run import traffic

    tcfg = {"mode": mode, "rate": 20.0} if mode in ("constant", "poisson") else {"mode": mode}
    if mode == "concurrency":
        tcfg["concurrency"] = 2
    cfg = attrs.evolve(config, traffic=attrs.evolve(config.traffic, **tcfg))
    n = 6
    offsets = traffic.arrival_offsets_ns(cfg.traffic, n, seed=1)
    t0 = time.monotonic_ns()
    reqs = _requests(n, None if offsets is None else [t0 + o for o in offsets])
    events = _run(model, cfg, reqs)
    assert set(_tokens(events)) == set(range(n)) and all(v >= 8 for v in _tokens(events).values())
    first_token = {e.request_id: e.t_ns for e in reversed(events) if e.n_tokens}
    for r in reqs:
        if r.arrival_ns is not None:
            assert first_token[r.id] > r.arrival_ns  # never served before it arrived
    if mode == "concurrency":
        submitted = {e.request_id: e.t_ns for e in events if e.n_tokens == 0 and not e.finished}
        done = {e.request_id: e.t_ns for e in events if e.finished}
        assert len(submitted) == n
        for r in range(n):  # never more than 2 in flight
            in_flight = sum(1 for o in range(n) if submitted[o] <= submitted[r] < done[o])
            assert in_flight <= 2


def test_failed_request_is_recorded_and_others_go_on(model: LoadedModel, config: Any) -> None:
    reqs = [*_requests(2), Request(2, "word " * (N_CTX + 50), N_CTX + 50)]
    events = _run(model, config, reqs)
    last = {e.request_id: e for e in events if e.finished}
    assert last[2].error is not None and "without [DONE]" in last[2].error
    assert last[0].error is None and last[1].error is None and _tokens(events)[0] >= 8


def test_request_timeout_fails_the_request(model: LoadedModel, config: Any) -> None:
    import attrs

    # The same server and client, with server.request_timeout_s far below a 400-token generation.
    hurried = attrs.evolve(model, handle=attrs.evolve(model.handle, request_timeout_s=0.05))
    cfg = attrs.evolve(config, generation=attrs.evolve(config.generation, max_output_tokens=400))
    last = [e for e in _run(hurried, cfg, _requests(1)) if e.finished]
    assert len(last) == 1 and last[0].error == "timed out after 0.05 s (server.request_timeout_s)"


def test_external_mode(model: LoadedModel, tiny_gguf: Path, tiny_llama: Path, make_config: Any) -> None:
    url = model.info["url"]
    cfg = make_config(str(tiny_gguf), {"url": url, "engine": "llamacpp", "tokenizer": str(tiny_llama)})
    assert any("this machine's GPUs only" in p.message for p in plugin.validate_config(config=cfg))
    ext = plugin.load_model(backend="server", config=cfg)
    assert ext is not None
    try:
        assert ext.info["mode"] == "external" and "this machine's GPUs only" in ext.info["energy_scope"]
        assert "command" not in ext.info and ext.info["served_model"] == model.info["served_model"]
        assert set(_tokens(_run(ext, cfg, _requests(2))).values()) >= {8}
    finally:
        ext.close()
    # Closing an external model leaves the server running.
    import httpx

    assert httpx.get(url + "/v1/models", timeout=10).status_code == 200


def test_close_leaves_no_process(model: LoadedModel) -> None:
    from conftest import group_alive

    server = model.handle.server
    pgid = server.proc.pid
    assert group_alive(pgid)
    model.close()
    assert not group_alive(pgid)
    assert server.exit_code is not None
    model.close()  # twice is fine
