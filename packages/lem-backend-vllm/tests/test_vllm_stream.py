"""The streaming backend for real: AsyncLLM (engine core in its own process) on the tiny Llama, float32, CPU.

One engine for the whole module (it takes ~30 s to start here); the last test closes it and checks that
no engine process or shared-memory file is left behind.
"""

from __future__ import annotations

import gc
import os
import random
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lem.types import LoadedModel, Request, TokenEvent
from lem_backend_vllm import plugin, processes

MAX_NUM_SEQS = 8


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    """Child processes and /dev/shm entries before the engine started."""
    return {"children": {p.pid for p in psutil.Process().children(recursive=True)}, "shm": _shm()}


@pytest.fixture(scope="module")
def model(tiny_llama: Path, make_config: Any, before: dict[str, Any]) -> Iterator[LoadedModel]:
    config = make_config(str(tiny_llama), vllm={"max_num_seqs": MAX_NUM_SEQS})
    loaded = plugin.load_model(backend="vllm", config=config)
    assert loaded is not None
    yield loaded
    loaded.close()  # idempotent: the last test has closed it already


def _requests(n: int, arrivals: list[int] | None = None) -> list[Request]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        ids = tuple(rng.randrange(4, 2000) for _ in range(6))
        out.append(Request(i, "", len(ids), prompt_token_ids=ids, arrival_ns=arrivals[i] if arrivals else None))
    return out


def _run(model: LoadedModel, config: Any, requests: list[Request]) -> list[tuple[int, TokenEvent]]:
    """Events with the instant each one reached the consumer."""
    stream = plugin.generate_stream(model=model, requests=requests, params=config.generation, config=config)
    assert stream is not None
    return [(time.monotonic_ns(), e) for e in stream]


def _by_request(events: list[TokenEvent]) -> dict[int, list[TokenEvent]]:
    out: dict[int, list[TokenEvent]] = {}
    for e in events:
        out.setdefault(e.request_id, []).append(e)
    return out


def test_loaded_model_facts(model: LoadedModel) -> None:
    assert model.backend == "vllm"
    assert model.devices == ()  # CPU: nothing for an energy meter
    assert model.info["mode"] == "stream" and "per token" in model.info["timing"]
    assert model.model_config["hidden_size"] == 128
    # What the engine resolved, beside what lem asked for: KV-cache size comes from the engine core.
    eff = model.info["effective_config"]
    vllm_config = model.handle.engine.vllm_config
    assert eff["max_num_seqs"] == MAX_NUM_SEQS and eff["max_model_len"] == 256
    assert eff["block_size"] == vllm_config.cache_config.block_size > 0
    assert eff["kv_cache_blocks"] == vllm_config.cache_config.num_gpu_blocks > 0
    assert eff["kv_cache_tokens"] >= eff["kv_cache_blocks"]
    assert eff["kv_cache_dtype"] == "float32" and eff["dtype"] == "float32"  # "auto" resolved to the model's
    assert isinstance(eff["enable_chunked_prefill"], bool) and isinstance(eff["enable_prefix_caching"], bool)
    assert "block_size" not in model.info["engine_args"]  # lem did not ask: only the engine knows
    assert model.tokenizer.decode(model.tokenizer.encode("energy model")).strip().endswith("energy model")
    model.synchronize()


def test_options_reach_the_running_engine(model: LoadedModel) -> None:
    vllm_config = model.handle.engine.vllm_config
    assert vllm_config.scheduler_config.max_num_seqs == MAX_NUM_SEQS
    assert vllm_config.model_config.max_model_len == 256
    assert vllm_config.model_config.enforce_eager is True
    assert str(vllm_config.model_config.dtype) == "torch.float32"


def test_every_token_once_in_real_time(model: LoadedModel, make_config: Any) -> None:
    config = make_config(model.info["engine_args"]["model"], generation={"max_output_tokens": 12})
    requests = _requests(3)
    received = _run(model, config, requests)
    events = [e for _, e in received]
    for req in requests:
        mine = _by_request(events)[req.id]
        assert mine[0].n_tokens == 0  # submission (no arrival_ns: it arrives when submitted)
        assert sum(e.n_tokens for e in mine) == 12
        assert all(e.n_tokens == len(e.token_ids) for e in mine)
        assert [e.finished for e in mine] == [False] * (len(mine) - 1) + [True]
        stamps = [e.t_ns for e in mine]
        assert stamps == sorted(stamps)
        # Streamed, not collected: several token events per request, with measured gaps between them.
        token_events = [e for e in mine if e.n_tokens]
        assert len(token_events) >= 6
        assert len({e.t_ns for e in token_events}) == len(token_events)
    # The consumer saw the first token before the last one was produced.
    first_token_seen = min(seen for seen, e in received if e.n_tokens)
    assert first_token_seen < max(e.t_ns for e in events)


def test_greedy_output_matches_transformers(model: LoadedModel, make_config: Any, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(str(tiny_llama), generation={"max_output_tokens": 16})
    requests = _requests(2)
    events = [e for _, e in _run(model, config, requests)]
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    for req in requests:
        ours = [t for e in _by_request(events)[req.id] for t in e.token_ids]
        ids = torch.tensor([req.prompt_token_ids])
        out = hf.generate(
            ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids)
        )
        assert ours == out[0, ids.shape[1] :].tolist()


def test_poisson_arrivals_are_honoured_and_batched(model: LoadedModel, make_config: Any) -> None:
    config = make_config(
        model.info["engine_args"]["model"],
        generation={"max_output_tokens": 24},
        traffic={"mode": "poisson", "rate": 40.0},
    )
    rng = random.Random(3)
    t = time.monotonic_ns() + 50_000_000
    arrivals = []
    for _ in range(6):
        t += int(rng.expovariate(40.0) * 1e9)
        arrivals.append(t)
    requests = _requests(6, arrivals)
    events = [e for _, e in _run(model, config, requests)]
    per = _by_request(events)
    assert sorted(per) == list(range(6))
    for req in requests:
        assert all(e.t_ns >= req.arrival_ns for e in per[req.id])  # never started before it arrived
        assert all(e.n_tokens > 0 for e in per[req.id])  # open loop: arrival is known, no submission event
        assert sum(e.n_tokens for e in per[req.id]) == 24
    # Requests overlapped inside the engine: at some instant several were between first token and finish.
    spans = [(per[i][0].t_ns, per[i][-1].t_ns) for i in per]
    overlap = max(sum(1 for a, b in spans if a <= t <= b) for t, _ in spans)
    assert overlap >= 2


def test_closed_loop_keeps_concurrency_in_flight(model: LoadedModel, make_config: Any) -> None:
    config = make_config(model.info["engine_args"]["model"], traffic={"mode": "concurrency", "concurrency": 2})
    events = [e for _, e in _run(model, config, _requests(5))]
    in_flight, most = 0, 0
    for e in events:
        if e.n_tokens == 0 and not e.finished:
            in_flight += 1
        if e.finished:
            in_flight -= 1
        most = max(most, in_flight)
    assert most == 2
    assert sum(1 for e in events if e.n_tokens == 0) == 5 and sum(e.finished for e in events) == 5


def test_consumer_stopping_early_aborts_requests(model: LoadedModel, make_config: Any) -> None:
    config = make_config(model.info["engine_args"]["model"], generation={"max_output_tokens": 200})
    stream = plugin.generate_stream(model=model, requests=_requests(2), params=config.generation, config=config)
    assert stream is not None
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    llm = model.handle.engine
    deadline = time.monotonic() + 10
    while llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert llm.get_num_unfinished_requests() == 0


def test_a_request_vllm_rejects_fails_alone(model: LoadedModel, make_config: Any) -> None:
    config = make_config(model.info["engine_args"]["model"], generation={"max_output_tokens": 4})
    ok = _requests(1)[0]
    too_long = Request(1, "", 300, prompt_token_ids=(7,) * 300)  # max_model_len is 256
    per = _by_request([e for _, e in _run(model, config, [ok, too_long])])
    assert per[1][-1].finished and per[1][-1].n_tokens == 0
    assert per[1][-1].error is not None and "VLLMValidationError" in per[1][-1].error and "300" in per[1][-1].error
    assert per[0][-1].finished and per[0][-1].error is None and sum(e.n_tokens for e in per[0]) == 4


def _mapped_by_others(exclude: set[int]) -> set[str]:
    """/dev/shm files mapped by live processes outside ``exclude`` (other programs on a shared machine)."""
    out: set[str] = set()
    for proc in psutil.process_iter():
        if proc.pid not in exclude:
            out |= processes.shm_mapped(proc.pid)
    return out


def test_close_leaves_no_processes_or_shared_memory(model: LoadedModel, before: dict[str, Any]) -> None:
    # Python's multiprocessing resource tracker stays until this process exits (then it frees what leaked);
    # it is not an engine process.
    running = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before["children"] and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert running, "the engine core runs in its own process"
    engine_shm = {name for p in running for name in processes.shm_mapped(p.pid)}
    assert engine_shm, "vLLM's message queues live in /dev/shm"
    engine_ref = weakref.ref(model.handle.engine)
    model.close()
    model.close()  # idempotent
    gc.collect()
    assert engine_ref() is None  # nothing keeps the AsyncLLM alive (its __del__ would shut down again at exit)
    # close() returns once the engine processes have exited; a loaded machine may still be reaping them.
    deadline = time.monotonic() + 30
    alive = running
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert alive == []
    assert {n for n in engine_shm if os.path.exists(f"/dev/shm/{n}")} == set()
    # Nothing else new either, but for what other programs on this machine map right now.
    left = _shm() - before["shm"] - _mapped_by_others({os.getpid(), *(p.pid for p in running)})
    assert left == set()
