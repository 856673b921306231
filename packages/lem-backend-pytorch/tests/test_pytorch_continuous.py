"""engine = "continuous": transformers' ContinuousBatchingManager run for real on the CPU with the tiny Llama."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from pytorch_helpers import load, make_config, per_request, serve, token_requests

from lem.plugins import get_plugin_manager
from lem.types import LoadedModel, Request, TokenEvent

#: A cache sized for the tests: transformers would size it from system memory on the CPU (slow).
CACHE = {"num_blocks": 64, "page_size": 16, "max_batch_tokens": 256}
GEN = {"max_output_tokens": 6, "ignore_eos": True}


def _config(model: str, generation: dict[str, Any] | None = None, **tables: Any) -> Any:
    pytorch = {"engine": "continuous", "continuous": dict(CACHE), **tables.pop("pytorch", {})}
    return make_config(model, generation=generation or GEN, pytorch=pytorch, **tables)


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(scope="module")
def cb_model(tiny_llama: Path) -> Iterator[LoadedModel]:
    """The tiny Llama served by a continuous batching manager, built once for the module."""
    model = load(_config(str(tiny_llama)))
    yield model
    model.close()


def _arriving(requests: list[Request], gaps_s: list[float]) -> list[Request]:
    t0 = time.monotonic_ns() + 20_000_000
    return [attrs.evolve(r, arrival_ns=t0 + int(g * 1e9)) for r, g in zip(requests, gaps_s, strict=True)]


def test_one_event_per_token_and_exact_counts(cb_model: LoadedModel, tiny_llama: Path) -> None:
    config = _config(str(tiny_llama))
    events = serve(cb_model, token_requests(3), config)
    for evs in per_request(events).values():
        assert evs[0].n_tokens == 0  # submitted (no arrival time given)
        assert [e.n_tokens for e in evs[1:]] == [1] * 6
        assert [e.finished for e in evs] == [False] * 6 + [True]
        assert all(len(e.token_ids) == e.n_tokens for e in evs)
        assert [e.t_ns for e in evs] == sorted(e.t_ns for e in evs)
    assert cb_model.info["engine"] == "continuous"
    assert cb_model.info["continuous"]["continuous_batching_config"]["num_blocks"] == CACHE["num_blocks"]


def test_greedy_tokens_equal_the_static_engine(
    cb_model: LoadedModel, tiny_model: LoadedModel, tiny_llama: Path
) -> None:
    requests = token_requests(4)
    static = make_config(str(tiny_llama), generation=GEN)
    want = {
        i: [t for e in evs for t in e.token_ids] for i, evs in per_request(serve(tiny_model, requests, static)).items()
    }
    got = serve(cb_model, requests, _config(str(tiny_llama)))
    assert {i: [t for e in evs for t in e.token_ids] for i, evs in per_request(got).items()} == want


def test_open_loop_requests_join_the_running_batch_never_before_arrival(
    cb_model: LoadedModel, tiny_llama: Path
) -> None:
    config = _config(str(tiny_llama), generation={"max_output_tokens": 48, "ignore_eos": True})
    requests = _arriving(token_requests(3), [0.0, 0.01, 0.02])
    by_id = per_request(serve(cb_model, requests, config))
    for r in requests:
        evs = by_id[r.id]
        assert r.arrival_ns is not None and evs[0].t_ns >= r.arrival_ns
        assert sum(e.n_tokens for e in evs) == 48 and evs[-1].finished
    # Continuous batching: a later arrival starts while the first request is still decoding.
    assert by_id[1][0].t_ns < by_id[0][-1].t_ns


def test_closed_loop_keeps_concurrency_in_flight(cb_model: LoadedModel, tiny_llama: Path) -> None:
    config = _config(str(tiny_llama), traffic={"mode": "concurrency", "concurrency": 2})
    events = serve(cb_model, token_requests(5), config)
    spans = {i: (evs[0].t_ns, evs[-1].t_ns) for i, evs in per_request(events).items()}
    assert len(spans) == 5 and all(sum(e.n_tokens for e in evs) == 6 for evs in per_request(events).values())
    for i, (start, _) in spans.items():
        in_flight = [j for j, (s, end) in spans.items() if j != i and s <= start < end]
        assert len(in_flight) <= 1, f"request {i} started with {in_flight} in flight"


def test_eos_ends_a_request_counted_unless_ignore_eos(cb_model: LoadedModel, tiny_llama: Path, tmp_path: Path) -> None:
    (request,) = token_requests(1)
    tokens = [t for e in serve(cb_model, [request], _config(str(tiny_llama))) for t in e.token_ids]
    eos = tokens[2]  # a token the model is known to produce at step 3
    model_dir = tmp_path / "eos"
    shutil.copytree(tiny_llama, model_dir)
    for name in ("config.json", "generation_config.json"):
        doc = json.loads((model_dir / name).read_text())
        doc["eos_token_id"] = eos
        (model_dir / name).write_text(json.dumps(doc))
    model = load(_config(str(model_dir), generation={"max_output_tokens": 6}))
    try:
        stopped = [
            t for e in serve(model, [request], _config(str(model_dir), {"max_output_tokens": 6})) for t in e.token_ids
        ]
        assert stopped == tokens[: tokens.index(eos) + 1]
        manager = model.handle.continuous.manager
        full = serve(model, [request], _config(str(model_dir)))  # ignore_eos goes with the request
        assert [t for e in full for t in e.token_ids] == tokens
        assert model.handle.continuous.manager is manager  # not rebuilt for another length or EOS rule
        sampled = _config(str(model_dir), {**GEN, "do_sample": True, "temperature": 0.7})
        assert sum(e.n_tokens for e in serve(model, [request], sampled)) == 6
        assert model.handle.continuous.manager is not manager  # rebuilt for other decoding parameters
        assert model.info["continuous"] is model.handle.continuous.info
    finally:
        model.close()


def test_every_option_reaches_the_manager(tiny_llama: Path) -> None:
    table = {
        "page_size": 32,
        "num_blocks": 24,
        "max_batch_tokens": 96,
        "max_requests_per_batch": 3,
        "max_memory_percent": 0.5,
        "cuda_graphs": False,
        "graph_q_padding": 32,
        "graph_kv_padding": 512,
        "compile_level": 0,
        "scheduler": "prefill_first",
        "prefix_sharing": False,
        "async_batching": False,
    }
    from lem_backend_pytorch.continuous.options import TABLE

    assert set(table) == set(TABLE)  # every key of the table is exercised here
    model = load(make_config(str(tiny_llama), generation=GEN, pytorch={"engine": "continuous", "continuous": table}))
    try:
        cb = model.handle.continuous.manager.continuous_batching_config
        got = {
            "page_size": getattr(cb, "page_size", None) or cb.block_size,
            "num_blocks": cb.num_blocks,
            "max_batch_tokens": cb.max_batch_tokens,
            "max_requests_per_batch": cb.max_requests_per_batch,
            "max_memory_percent": cb.max_memory_percent,
            "cuda_graphs": cb.use_cuda_graph in (False, (False, False)),
            "graph_q_padding": cb.q_padding_interval_size,
            "graph_kv_padding": cb.kv_padding_interval_size,
            "compile_level": cb.default_compile_level,
            "scheduler": cb.scheduler_type,
            "prefix_sharing": cb.allow_block_sharing,
            "async_batching": cb.use_async_batching,
        }
        assert got == {**table, "cuda_graphs": True}
        # transformers 5.17 names the paged variant it switches to ("paged|sdpa"); 5.2x keeps "sdpa".
        assert cb.seed == 42 and model.info["continuous"]["attn_implementation_used"] in ("sdpa", "paged|sdpa")
        assert (
            sum(e.n_tokens for e in serve(model, token_requests(2), make_config(str(tiny_llama), generation=GEN))) == 12
        )
    finally:
        model.close()


@pytest.fixture
def manager_configs(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ContinuousBatchingConfig transformers' manager is built with (a spy: the real manager is built)."""
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    given: list[Any] = []
    real_init = ContinuousBatchingManager.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        given.append(copy.deepcopy(kwargs["continuous_batching_config"]))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(ContinuousBatchingManager, "__init__", init)
    return given


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_are_on_by_default_on_cuda(tiny_llama: Path, manager_configs: list[Any]) -> None:
    model = load(_config(str(tiny_llama), pytorch={"device": "cuda"}))
    try:
        (given,) = manager_configs
        assert given.use_cuda_graph is True  # lem's default, passed to transformers
        assert model.handle.continuous.manager.continuous_batching_config.use_cuda_graph == (True, True)
        assert model.info["continuous"]["cuda_graphs"]["used"] == [True, True]
        assert model.info["continuous"]["cuda_graphs"]["note"].startswith("on: lem's default on CUDA")
        assert sum(e.n_tokens for e in serve(model, token_requests(3), _config(str(tiny_llama)))) == 18
    finally:
        model.close()


@pytest.mark.parametrize(("asked", "passed"), [(True, True), (False, False), (None, True)])
def test_cuda_graphs_reach_transformers_config_on_cuda(asked: bool | None, passed: bool) -> None:
    """What lem gives transformers' own ContinuousBatchingConfig for a model on CUDA (this machine may have none)."""
    from transformers import ContinuousBatchingConfig

    from lem_backend_pytorch.continuous.options import config_kwargs, cuda_graphs

    table = {} if asked is None else {"cuda_graphs": asked}
    graphs, note = cuda_graphs(table, "cuda", quantized=False)
    assert ContinuousBatchingConfig(**config_kwargs(table, 0, graphs)).use_cuda_graph is passed
    assert note.startswith("on" if passed else "off")
    left, why = cuda_graphs({}, "cuda", quantized=True)
    assert left is None and "quantized" in why
    assert ContinuousBatchingConfig(**config_kwargs({}, 0, left)).use_cuda_graph is None  # transformers decides


def test_cuda_graphs_off_cuda_are_ignored_with_a_note(tiny_llama: Path, manager_configs: list[Any]) -> None:
    config = _config(str(tiny_llama), pytorch={"device": "cpu", "continuous": {**CACHE, "cuda_graphs": True}})
    from lem.configfile.loading import validate

    (warned,) = [p for p in validate(config) if p.path == "pytorch.continuous.cuda_graphs"]
    assert warned.severity == "warning" and "CUDA device" in warned.message
    model = load(config)
    try:
        (given,) = manager_configs
        assert given.use_cuda_graph is None  # not passed: nothing to capture on the CPU
        assert model.handle.continuous.manager.continuous_batching_config.use_cuda_graph == (False, False)
        graphs = model.info["continuous"]["cuda_graphs"]
        assert graphs == {
            "used": [False, False],
            "note": "cuda_graphs = true ignored: CUDA graphs need a CUDA device, the model is on cpu",
        }
        assert sum(e.n_tokens for e in serve(model, token_requests(2), config)) == 12
    finally:
        model.close()


def test_consumer_stopping_early_cancels_and_the_engine_goes_on(cb_model: LoadedModel, tiny_llama: Path) -> None:
    config = _config(str(tiny_llama), generation={"max_output_tokens": 200, "ignore_eos": True})
    it = get_plugin_manager().hook.generate_stream(
        model=cb_model, requests=token_requests(3), params=config.generation, config=config
    )
    seen = [next(it) for _ in range(8)]
    it.close()  # returns once what was in flight is cancelled
    assert all(isinstance(e, TokenEvent) for e in seen)
    manager = cb_model.handle.continuous.manager
    assert not manager.output_router.result_handlers  # no handler left for the cancelled requests
    after = serve(cb_model, token_requests(2), config)
    assert sum(e.n_tokens for e in after) == 400


def test_a_hard_stop_fails_the_requests_in_flight(cb_model: LoadedModel, tiny_llama: Path) -> None:
    config = _config(str(tiny_llama), generation={"max_output_tokens": 500, "ignore_eos": True})
    it = get_plugin_manager().hook.generate_stream(
        model=cb_model, requests=token_requests(2), params=config.generation, config=config
    )
    events = [next(it) for _ in range(6)]
    # From another thread with block=True: transformers' stop(block=False) drops the batch processor
    # while the generation thread may still be stepping (which then dies with a fatal error instead).
    stopper = threading.Thread(target=cb_model.handle.continuous.manager.stop, kwargs={"hard_stop": True})
    stopper.start()
    events += list(it)
    stopper.join()
    last = {e.request_id: e for e in events}
    assert all(e.finished and e.error for e in last.values()), last
    # The next call finds the manager stopped and builds a new one.
    assert sum(e.n_tokens for e in serve(cb_model, token_requests(1), _config(str(tiny_llama)))) == 6


def test_close_leaves_no_thread_running(tiny_llama: Path) -> None:
    before = _threads()
    model = load(_config(str(tiny_llama)))
    assert len(_threads() - before) == 2  # the manager's generation thread and lem's event loop
    serve(model, token_requests(2), _config(str(tiny_llama)))
    model.close()
    model.close()  # idempotent
    assert _threads() - before == set()


def test_a_stopped_manager_is_rebuilt(tiny_llama: Path) -> None:
    model = load(_config(str(tiny_llama)))
    try:
        model.handle.continuous.manager.stop(block=True, timeout=10)
        assert sum(e.n_tokens for e in serve(model, token_requests(2), _config(str(tiny_llama)))) == 12
        assert model.handle.continuous.manager.is_running()
    finally:
        model.close()


def test_lem_run_serves_poisson_traffic_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text(
        f"""model = "{tiny_llama}"
backend = "pytorch"
precision = "float32"
[dataset]
num_prompts = 6
input_length = 16
[generation]
max_output_tokens = 8
ignore_eos = true
[traffic]
mode = "poisson"
rate = 50.0
[measurement]
warmup_requests = 2
cycles = 1
idle_seconds = 0.0
energy_meter = "none"
[pytorch]
engine = "continuous"
[pytorch.continuous]
num_blocks = 64
page_size = 16
max_batch_tokens = 256
"""
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    lem = [sys.executable, "-m", "lem", "run", str(toml), "--in-process", "--quiet", "--out", str(tmp_path / "out")]
    done = subprocess.run(lem, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (cycle,) = (tmp_path / "out").glob("*/exp/cycle-001.json")
    metrics = json.loads(cycle.read_text())["metrics"]
    assert (metrics["completed_requests"], metrics["output_tokens"]) == (6, 48)
    assert metrics["ttft_s"]["n"] == 6


SMALL_CACHE_RUN = """model = "{model}"
backend = "pytorch"
precision = "float32"
[dataset]
num_prompts = 4
input_length = 16
[generation]
max_output_tokens = 48
ignore_eos = true
[measurement]
warmup_requests = 0
cycles = 1
idle_seconds = 0.0
energy_meter = "none"
[pytorch]
engine = "continuous"
[pytorch.continuous]
num_blocks = 1
page_size = 16
max_batch_tokens = 256
"""


def test_a_cache_that_cannot_hold_one_request_fails_up_front(tiny_llama: Path, tmp_path: Path) -> None:
    """One block of 16 tokens against 16 prompt + 48 output tokens: failed before any request, naming the key."""
    toml = tmp_path / "small.toml"
    toml.write_text(SMALL_CACHE_RUN.format(model=tiny_llama))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    lem = [sys.executable, "-m", "lem", "run", str(toml), "--in-process", "--out", str(tmp_path / "out")]
    done = subprocess.run(lem, env=env, capture_output=True, text=True, timeout=180, check=False)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-2000:]
    assert "Traceback" not in said
    assert "pytorch.continuous.num_blocks = 1: the paged KV cache holds 16 tokens (1 block of 16)" in said
    assert "needs (63); set num_blocks to at least 4" in said
    (exp_dir,) = (tmp_path / "out").glob("*/exp")
    assert not list(exp_dir.glob("cycle-*.json"))  # not one request was sent
    from lem.results.files import experiment_status

    row = experiment_status(exp_dir)
    assert row["status"] == "failed" and "pytorch.continuous.num_blocks = 1" in row["reason"]


def test_a_request_longer_than_the_cache_fails_alone(cb_model: LoadedModel, tiny_llama: Path) -> None:
    """64 blocks of 16 hold 1024 tokens: a 1019-token prompt + 6 outputs needs 1024, one token more needs 1025."""
    engine = cb_model.handle.continuous
    assert engine.capacity == 1024
    fits, too_long = (
        Request(id=i, prompt="", input_tokens=n, prompt_token_ids=tuple(10 + j % 400 for j in range(n)))
        for i, n in enumerate((1019, 1020))
    )
    others = [attrs.evolve(r, id=r.id + 2) for r in token_requests(2, start=20)]
    by_id = per_request(serve(cb_model, [fits, too_long, *others], _config(str(tiny_llama))))
    assert sum(e.n_tokens for e in by_id[0]) == 6 and by_id[0][-1].error is None
    (failed,) = [e for e in by_id[1] if e.error]
    assert failed.error == (
        "pytorch.continuous.num_blocks = 64: the paged KV cache holds 1024 tokens (64 blocks of 16), fewer than "
        "this request (1020 prompt + 6 output tokens) needs (1025); set num_blocks to at least 65, "
        "or shorten the requests"
    )
    assert [sum(e.n_tokens for e in by_id[i]) for i in (2, 3)] == [6, 6]  # the others go on
    assert cb_model.handle.continuous is engine and engine.manager.is_running()


def test_the_managers_own_cache_error_names_the_key(tiny_llama: Path) -> None:
    """Without lem's length check transformers stops its thread on a request it cannot fit: the reason names the key."""
    config = _config(str(tiny_llama), pytorch={"continuous": {**CACHE, "num_blocks": 1}}, dataset={"input_length": 4})
    model = load(config)
    try:
        model.handle.continuous.capacity = None  # what lem knows of the cache, forgotten: the request reaches it
        (request,) = token_requests(1, length=16)
        events = serve(model, [request], _config(str(tiny_llama), {"max_output_tokens": 4, "ignore_eos": True}))
        (error,) = [e.error for e in events if e.error]
        assert "No requests can be scheduled" in error
        assert "raise pytorch.continuous.num_blocks" in error
    finally:
        model.close()


def _problems(**tables: Any) -> list[Any]:
    from lem.configfile.loading import structure, validate

    doc = {"model": "random:tiny-llama", "pytorch": {"engine": "continuous", "continuous": dict(CACHE)}}
    for key, value in tables.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    config, problems = structure(doc)
    return problems if config is None else validate(config)


def _at(problems: list[Any], path: str) -> list[str]:
    return [p.severity for p in problems if p.path == path]


@pytest.mark.parametrize(
    ("tables", "path"),
    [
        ({"generation": {"num_beams": 2}}, "generation.num_beams"),
        ({"pytorch": {"assistant_model": "random:tiny-llama"}}, "pytorch.assistant_model"),
        ({"pytorch": {"torch_compile": "default"}}, "pytorch.torch_compile"),
        ({"pytorch": {"cache_implementation": "static"}}, "pytorch.cache_implementation"),
        ({"pytorch": {"attn_implementation": "flex_attention"}}, "pytorch.attn_implementation"),
        ({"pytorch": {"device_map": "auto"}}, "pytorch.device_map"),
        ({"generation": {"repetition_penalty": 1.2}}, "generation.repetition_penalty"),
        ({"generation": {"min_output_tokens": 2}}, "generation.min_output_tokens"),
        ({"pytorch": {"continuous": {"page_sise": 16}}}, "pytorch.continuous.page_sise"),
        ({"pytorch": {"continuous": {"num_blocks": "many"}}}, "pytorch.continuous.num_blocks"),
        ({"pytorch": {"continuous": {"compile_level": 4}}}, "pytorch.continuous.compile_level"),
        ({"pytorch": {"continuous": {"scheduler": "lifo"}}}, "pytorch.continuous.scheduler"),
    ],
)
def test_what_continuous_batching_cannot_do_is_an_error(tables: dict[str, Any], path: str) -> None:
    problems = _problems(**tables)
    assert _at(problems, path) == ["error"], problems


def test_did_you_mean_and_warnings() -> None:
    (typo,) = [
        p for p in _problems(pytorch={"continuous": {"num_block": 8}}) if p.path == "pytorch.continuous.num_block"
    ]
    assert "num_blocks" in typo.hint
    assert _at(_problems(batching={"batch_size": 8}), "batching") == ["warning"]
    sized = _problems(pytorch={"device": "cpu", "continuous": {"num_blocks": 1}})
    assert _at(sized, "pytorch.continuous.num_blocks") == []
    assert _at(_problems(pytorch={"device": "cpu", "continuous": {}}), "pytorch.continuous.num_blocks") == ["warning"]
    assert _at(_problems(pytorch={"engine": "static"}), "pytorch.continuous") == ["warning"]
    clean = _problems(generation={"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20})
    assert [p for p in clean if p.severity == "error"] == []


def test_older_field_names_are_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for transformers 5.17, whose ContinuousBatchingConfig says block_size (not installed here)."""
    from lem_backend_pytorch.continuous import options as co

    fields_517 = (co.installed_fields() or frozenset()) - {"page_size", "auto_switch_to_flash"} | {"block_size"}
    monkeypatch.setattr(co, "installed_fields", lambda: fields_517)
    assert co.config_kwargs({"page_size": 64, "prefix_sharing": False}, seed=1) == {
        "block_size": 64,
        "allow_block_sharing": False,
        "seed": 1,
    }
    monkeypatch.setattr(co, "installed_fields", lambda: fields_517 - {"default_compile_level"})
    (problem,) = co.check({"compile_level": 2})
    assert problem.severity == "error" and co.transformers_version() in problem.message
    assert "default_compile_level" in problem.message
