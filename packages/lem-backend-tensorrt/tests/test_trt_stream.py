"""The backend's load, streaming and shutdown, run through the FAKE ``tensorrt_llm`` (``tests/fake``).

TensorRT-LLM cannot run here (see ``tests/fake/tensorrt_llm/__init__.py``). The
fake checks every argument against the surface extracted from TensorRT-LLM's
source and streams scripted tokens as TensorRT-LLM's ``RequestOutput`` does;
lem's own code (options, the shared serving driver, the event conversion,
shutdown) is real. The tiny model gives the fake a real tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import config, read_log, set_compute_capability

from lem.errors import BackendError
from lem.types import LoadedModel, Request
from lem_backend_tensorrt import engine as engines
from lem_backend_tensorrt import plugin
from lem_energy_nvml.testing import FakeGpu


def requests(n: int, *, start_ns: int | None = None, gap_ns: int = 0) -> list[Request]:
    return [
        Request(
            i,
            "",
            4,
            prompt_token_ids=(10 + i, 11, 12, 13),
            arrival_ns=None if start_ns is None else start_ns + i * gap_ns,
        )
        for i in range(n)
    ]


def expected_ids(req: Request, n: int) -> tuple[int, ...]:
    # The fake's scripted tokens (tensorrt_llm/_fake.py): a function of the prompt.
    base = sum(req.prompt_token_ids or ())
    return tuple(3 + (base + i) % 997 for i in range(n))


@pytest.fixture
def load(tiny_llama: Path, fake_script: Callable[..., Path]) -> Callable[..., tuple[LoadedModel, Any, Path]]:
    def _load(script: dict[str, Any] | None = None, **tables: Any) -> tuple[LoadedModel, Any, Path]:
        log = fake_script(**(script or {}))
        exp = config(str(tiny_llama), **tables)
        model = plugin.load_model(backend="tensorrt", config=exp)
        assert model is not None
        return model, exp, log

    return _load


def test_load_passes_the_mapped_arguments_and_records_them(load: Callable[..., Any]) -> None:
    model, _, log = load(
        tensorrt={"max_batch_size": 16, "gpu_memory_utilization": 0.5, "cuda_graph_batch_sizes": [1, 2]}
    )
    try:
        llm = model.handle.llm
        assert llm.args["max_batch_size"] == 16
        assert llm.args["kv_cache_config"].surface_class == "KvCacheConfig"
        assert llm.args["kv_cache_config"].free_gpu_memory_fraction == 0.5
        assert llm.args["cuda_graph_config"].batch_sizes == [1, 2]
        assert model.info["tensorrt_llm_version"] == "0.0.0+lem.fake"
        assert model.info["mode"] == "stream" and "per token" in model.info["timing"]
        assert model.info["engine_build"] is None
        assert model.devices == (0,)
        # The fake pynvml's boards (conftest): the GPU is named through NVML, as the peaks table keys it.
        assert model.info["hardware"]["device_name"] == "Fake GPU" and model.info["hardware"]["devices"] == [0]
        assert model.tokenizer.encode("hello")  # the Hugging Face tokenizer under TensorRT-LLM's wrapper
        assert model.model_config["model_type"] == "llama"
    finally:
        model.close()
    assert [e["event"] for e in read_log(log)] == ["init", "shutdown"]


def test_one_event_per_token_with_exact_counts(load: Callable[..., Any]) -> None:
    model, exp, _ = load()
    reqs = requests(5)
    try:
        events = list(plugin.generate_stream(model=model, requests=reqs, params=exp.generation, config=exp))
    finally:
        model.close()
    for req in reqs:
        mine = [e for e in events if e.request_id == req.id]
        tokens = [e for e in mine if e.n_tokens]
        assert all(e.n_tokens == 1 for e in tokens)  # stream_interval 1: one event per decode step
        assert sum(e.n_tokens for e in mine) == 8
        assert tuple(t for e in mine for t in e.token_ids) == expected_ids(req, 8)
        assert [e.finished for e in mine].count(True) == 1 and mine[-1].finished
        assert all(e.error is None for e in mine)
        assert [e.t_ns for e in mine] == sorted(e.t_ns for e in mine)


def test_open_loop_requests_start_at_their_arrival(load: Callable[..., Any]) -> None:
    model, exp, _ = load(traffic={"mode": "constant", "rate": 20.0})
    reqs = requests(3, start_ns=time.monotonic_ns() + 50_000_000, gap_ns=50_000_000)
    try:
        events = list(plugin.generate_stream(model=model, requests=reqs, params=exp.generation, config=exp))
    finally:
        model.close()
    for req in reqs:
        first = min(e.t_ns for e in events if e.request_id == req.id)
        assert req.arrival_ns is not None and first >= req.arrival_ns


def test_closed_loop_keeps_concurrency_requests_in_flight(load: Callable[..., Any]) -> None:
    model, exp, log = load(traffic={"mode": "concurrency", "concurrency": 2})
    reqs = requests(6)
    try:
        events = list(plugin.generate_stream(model=model, requests=reqs, params=exp.generation, config=exp))
    finally:
        model.close()
    in_flight = [e["n"] for e in read_log(log) if e["event"] == "in_flight"]
    assert max(in_flight) == 2
    # Each request arrives when it is submitted: a zero-token event marks it.
    assert sorted(e.request_id for e in events if e.n_tokens == 0 and not e.finished) == list(range(6))


def test_a_failed_request_fails_alone(load: Callable[..., Any]) -> None:
    model, exp, _ = load({"fail_every": 2})
    reqs = requests(4)
    try:
        events = list(plugin.generate_stream(model=model, requests=reqs, params=exp.generation, config=exp))
    finally:
        model.close()
    last = {e.request_id: e for e in events if e.finished}
    # The fake's requests are numbered from 1 as submitted: the 2nd and 4th fail after one token.
    failed = {rid for rid, e in last.items() if e.error}
    assert failed == {1, 3}
    assert all("failed in the fake executor" in (last[r].error or "") for r in failed)
    assert all(sum(e.n_tokens for e in events if e.request_id == r) == 8 for r in (0, 2))


def test_engine_failure_stops_the_stream_and_close_still_shuts_down(load: Callable[..., Any]) -> None:
    model, exp, log = load({"crash_on": 2})
    with pytest.raises(RuntimeError, match="fake executor died"):
        list(plugin.generate_stream(model=model, requests=requests(4), params=exp.generation, config=exp))
    model.close()
    model.close()  # idempotent
    assert [e["event"] for e in read_log(log)].count("shutdown") == 1


def test_stopping_early_aborts_what_is_in_flight(load: Callable[..., Any]) -> None:
    model, exp, log = load({"step_s": 0.02})
    stream = plugin.generate_stream(model=model, requests=requests(3), params=exp.generation, config=exp)
    try:
        next(e for e in stream if e.n_tokens)
        stream.close()  # the consumer stops (an exception, Ctrl-C in the runner)
    finally:
        model.close()
    events = [e["event"] for e in read_log(log)]
    assert events.count("abort") == 3
    assert events[-1] == "shutdown"


def test_offline_mode_serves_all_at_once(load: Callable[..., Any]) -> None:
    model, exp, _ = load(tensorrt={"mode": "offline"})
    reqs = requests(3)
    try:
        assert model.info["engine"] == "LLM.generate" and "not observed" in model.info["timing"]
        events = list(plugin.generate_stream(model=model, requests=reqs, params=exp.generation, config=exp))
    finally:
        model.close()
    for req in reqs:
        submit, done = [e for e in events if e.request_id == req.id]
        assert submit.n_tokens == 0 and done.finished and done.token_ids == expected_ids(req, 8)


def test_load_failure_leaves_nothing_running(load: Callable[..., Any]) -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="failed to load"):
        load({"fail_load": True})
    assert "lem-tensorrt" not in {t.name for t in threading.enumerate()} - before


def test_other_backends_are_not_ours(tiny_llama: Path) -> None:
    assert plugin.load_model(backend="vllm", config=config(str(tiny_llama))) is None
    other = LoadedModel(backend="pytorch", handle=None)
    assert plugin.generate_stream(model=other, requests=[], params=None, config=None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cc", "tables", "message"),
    [
        ("7.5", {}, "below 8.0"),
        ("8.6", {"tensorrt": {"kv_cache_dtype": "fp8"}}, "needs 9.0"),
    ],
)
def test_compute_capability_is_checked_before_the_engine_starts(
    load: Callable[..., Any], fake_gpus: list[FakeGpu], cc: str, tables: dict[str, Any], message: str
) -> None:
    set_compute_capability(fake_gpus, cc)  # the fake pynvml's answer (lem_energy_nvml.testing)
    with pytest.raises(BackendError, match=message):
        load(**tables)


def test_capability_is_read_through_nvml_without_cuda(
    monkeypatch: pytest.MonkeyPatch, fake_gpus: list[FakeGpu]
) -> None:
    set_compute_capability(fake_gpus, "9.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    # The fake pynvml answered, so torch.cuda was not asked (it would say no GPU here).
    assert engines.compute_capabilities(2) == [("Fake GPU", (9, 0)), ("Fake GPU", (9, 0))]


def test_quantized_methods_need_a_quantized_checkpoint(load: Callable[..., Any], tiny_llama: Path) -> None:
    with pytest.raises(BackendError, match=r"no hf_quant_config\.json"):
        load(tensorrt={"quantization": {"method": "int4_awq"}})
    exp = config(str(tiny_llama), tensorrt={"quantization": {"method": "int4_awq"}})
    (tmp := tiny_llama.parent / "quantized").mkdir(exist_ok=True)
    (tmp / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "FP8"}}')
    with pytest.raises(BackendError, match="expects quant_algo 'W4A16_AWQ'"):
        engines.check_checkpoint_quantization(exp, str(tmp))
