"""generate_stream: per-step events in batches, exact token counts, decoder parameters reaching generate."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from pytorch_helpers import load, make_config, per_request, serve, token_requests

from lem.plugins import get_plugin_manager
from lem.types import Request

GEN = {"max_output_tokens": 6, "ignore_eos": True}


def test_hook_returns_none_for_other_backends(tiny_model: Any) -> None:
    from lem_backend_pytorch.plugin import generate_stream

    config = make_config("random:tiny-llama")
    assert generate_stream(attrs.evolve(tiny_model, backend="vllm"), [], config.generation, config) is None


def test_one_event_per_sequence_per_step_in_a_batch(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation=GEN, batching={"batch_size": 3})
    events = serve(tiny_model, token_requests(3), config)
    by_id = per_request(events)
    for evs in by_id.values():
        assert evs[0].n_tokens == 0  # submission
        assert [e.n_tokens for e in evs[1:]] == [1] * 6
        assert [e.finished for e in evs] == [False] * 6 + [True]
        assert [e.t_ns for e in evs] == sorted(e.t_ns for e in evs)
        assert len({e.t_ns for e in evs[1:]}) == 6  # a distinct timestamp per decode step
    # The rows of one step share that step's timestamp.
    assert [e.t_ns for e in by_id[0]] == [e.t_ns for e in by_id[2]]


def test_streamed_tokens_equal_plain_generate(tiny_model: Any) -> None:
    # prompt_token_ids are used as they are (no re-tokenizing): the stream equals model.generate on those ids.
    config = make_config("random:tiny-llama", generation=GEN)
    (request,) = token_requests(1)
    streamed = [t for e in serve(tiny_model, [request], config) for t in e.token_ids]
    ids = torch.tensor([list(request.prompt_token_ids or ())])
    plain = tiny_model.handle.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert streamed == plain[0, ids.shape[1] :].tolist()


def test_text_prompts_are_tokenized(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation=GEN)
    events = serve(tiny_model, [Request(id=7, prompt="Explain the energy of a batch.", input_tokens=0)], config)
    assert sum(e.n_tokens for e in events) == 6 and events[-1].finished


def _eos_model(tiny_llama: Path, tmp_path: Path, eos: int) -> Path:
    # The same weights with a different EOS id: a token the model is known to produce.
    model_dir = tmp_path / "eos"
    shutil.copytree(tiny_llama, model_dir)
    for name in ("config.json", "generation_config.json"):
        doc = json.loads((model_dir / name).read_text())
        doc["eos_token_id"] = eos
        (model_dir / name).write_text(json.dumps(doc))
    return model_dir


def test_exact_counts_stop_at_eos_and_exclude_pads(tiny_llama: Path, tiny_model: Any, tmp_path: Path) -> None:
    requests = token_requests(4)
    # Sampling (seeded) so that sequences vary; the tiny model's greedy output repeats one token.
    free = make_config(
        "random:tiny-llama",
        generation={"max_output_tokens": 12, "ignore_eos": True, "do_sample": True, "temperature": 3.0},
        batching={"batch_size": 4},
    )
    by_id = per_request(serve(tiny_model, requests, free))
    runs = {i: [t for e in evs for t in e.token_ids] for i, evs in by_id.items()}
    eos = runs[0][6]
    expected = {i: (toks.index(eos) + 1 if eos in toks else 12) for i, toks in runs.items()}

    model = load(make_config(str(_eos_model(tiny_llama, tmp_path, eos))))
    stopping = attrs.evolve(free, generation=attrs.evolve(free.generation, ignore_eos=False))
    by_id = per_request(serve(model, requests, stopping))
    assert {i: sum(e.n_tokens for e in evs) for i, evs in by_id.items()} == expected
    for i, evs in by_id.items():
        assert evs[-1].finished and sum(e.finished for e in evs) == 1
        assert [t for e in evs for t in e.token_ids] == runs[i][: expected[i]]
    # ignore_eos on the same model: every request runs to max_output_tokens.
    assert {i: sum(e.n_tokens for e in evs) for i, evs in per_request(serve(model, requests, free)).items()} == {
        i: 12 for i in runs
    }


def test_decoder_parameters_reach_generate(tiny_model: Any, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    generation = {
        "max_output_tokens": 5,
        "min_output_tokens": 2,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 3,
    }
    config = make_config("random:tiny-llama", generation=generation, pytorch={"use_cache": True})
    serve(tiny_model, token_requests(1), config)
    gc = calls[0]["generation_config"]
    assert (gc.max_new_tokens, gc.min_new_tokens, gc.do_sample) == (5, 2, True)
    assert (gc.temperature, gc.top_p, gc.top_k, gc.min_p) == (0.7, 0.9, 40, 0.05)
    assert (gc.repetition_penalty, gc.no_repeat_ngram_size, gc.use_cache) == (1.3, 3, True)
    assert gc.eos_token_id == list(tiny_model.handle.eos_token_ids)
    assert gc.pad_token_id == tiny_model.tokenizer.pad_token_id


def test_beam_parameters_reach_generate_and_end_in_one_event(tiny_model: Any, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    config = make_config(
        "random:tiny-llama",
        generation={**GEN, "num_beams": 2, "length_penalty": 0.5, "early_stopping": True},
        batching={"batch_size": 2},
    )
    by_id = per_request(serve(tiny_model, token_requests(2), config))
    gc = calls[0]["generation_config"]
    assert (gc.num_beams, gc.length_penalty, gc.early_stopping) == (2, 0.5, True)
    assert calls[0]["stopping_criteria"] is None  # no step clock: transformers cannot stream beams
    for evs in by_id.values():
        assert [(e.n_tokens, e.finished) for e in evs] == [(0, False), (6, True)]


def test_temperature_zero_is_greedy_and_ignore_eos_drops_the_eos(tiny_model: Any, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    serve(
        tiny_model,
        token_requests(1),
        make_config("random:tiny-llama", generation={**GEN, "do_sample": True, "temperature": 0.0}),
    )
    gc = calls[0]["generation_config"]
    assert gc.do_sample is False and gc.eos_token_id is None


def test_seed_makes_sampling_reproducible(tiny_model: Any) -> None:
    gen = {**GEN, "max_output_tokens": 10, "do_sample": True, "temperature": 1.5}

    def tokens(seed: int) -> list[int]:
        config = make_config("random:tiny-llama", seed=seed, generation=gen)
        return [t for e in serve(tiny_model, token_requests(1), config) for t in e.token_ids]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_no_repeat_ngram_size_changes_the_output(tiny_model: Any) -> None:
    # The built-in's greedy output is diverse: only a long sequence is sure to repeat a token unblocked.
    plain = make_config("random:tiny-llama", generation={**GEN, "max_output_tokens": 200})
    blocked = make_config("random:tiny-llama", generation={**GEN, "max_output_tokens": 200, "no_repeat_ngram_size": 1})
    tokens = [t for e in serve(tiny_model, token_requests(1), blocked) for t in e.token_ids]
    assert len(set(tokens)) == len(tokens)  # no unigram twice
    assert tokens != [t for e in serve(tiny_model, token_requests(1), plain) for t in e.token_ids]


def test_assistant_model_is_passed_and_streams(tiny_llama: Path, spy_generate: Any) -> None:
    config = make_config(
        str(tiny_llama), generation={**GEN, "max_output_tokens": 8}, pytorch={"assistant_model": "random:tiny-llama"}
    )
    model = load(config)
    calls = spy_generate(model)
    events = serve(model, token_requests(1), config)
    assert calls[0]["assistant_model"] is model.handle.assistant
    assert sum(e.n_tokens for e in events) == 8 and events[-1].finished
    # Greedy assisted decoding yields the target model's own greedy tokens.
    plain = load(make_config(str(tiny_llama)))
    assert [t for e in events for t in e.token_ids] == [
        t for e in serve(plain, token_requests(1), config) for t in e.token_ids
    ]


@pytest.mark.parametrize("strategy", ["static", "dynamic", "sorted_static", "sorted_dynamic"])
def test_every_strategy_serves_every_request(tiny_model: Any, strategy: str, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    config = make_config(
        "random:tiny-llama",
        generation={**GEN, "max_output_tokens": 2},
        batching={"batch_size": 2, "strategy": strategy, "max_tokens_per_batch": 64},
    )
    by_id = per_request(serve(tiny_model, token_requests(5), config))
    assert sorted(by_id) == [0, 1, 2, 3, 4]
    assert all(sum(e.n_tokens for e in evs) == 2 for evs in by_id.values())
    assert all(c["input_ids"].shape[0] <= 2 for c in calls)
    assert all(c["attention_mask"][:, -1].all() for c in calls)  # left padding: the last column is real


def test_arrivals_are_honoured(tiny_model: Any) -> None:
    now = time.monotonic_ns()
    later = now + 300_000_000
    requests = [attrs.evolve(r, arrival_ns=a) for r, a in zip(token_requests(2), (now, later), strict=True)]
    config = make_config(
        "random:tiny-llama",
        generation={**GEN, "max_output_tokens": 2},
        batching={"batch_size": 2, "strategy": "dynamic"},
        traffic={"mode": "poisson", "rate": 5.0},
    )
    by_id = per_request(serve(tiny_model, requests, config))
    assert by_id[1][0].t_ns >= later  # submitted only once it had arrived
    assert by_id[0][0].t_ns < later  # the first did not wait for it


def test_closed_loop_batches_hold_concurrency_requests(tiny_model: Any, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    config = make_config(
        "random:tiny-llama",
        generation={**GEN, "max_output_tokens": 2},
        traffic={"mode": "concurrency", "concurrency": 2},
    )
    by_id = per_request(serve(tiny_model, token_requests(5), config))
    assert [c["input_ids"].shape[0] for c in calls] == [2, 2, 1]
    assert all(evs[0].n_tokens == 0 for evs in by_id.values())  # the submission event


def test_stopping_early_does_not_hang(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation={"max_output_tokens": 200, "ignore_eos": True})
    it = get_plugin_manager().hook.generate_stream(
        model=tiny_model, requests=token_requests(1), params=config.generation, config=config
    )
    for i, _ in enumerate(it):
        if i == 3:
            break
    it.close()  # the worker is told to stop and joined
    assert (
        sum(e.n_tokens for e in serve(tiny_model, token_requests(1), make_config("random:tiny-llama", generation=GEN)))
        == 6
    )


def test_an_error_in_generate_reaches_the_caller(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation=GEN)
    bad = Request(id=0, prompt="", input_tokens=2, prompt_token_ids=(5, 10**6))  # beyond the vocabulary
    with pytest.raises(IndexError):
        serve(tiny_model, [bad], config)


def test_generate_runs_on_the_calling_thread(tiny_llama: Path, spy_generate: Any) -> None:
    # No helper thread: a generate thread plus a consumer measured a few percent slower than a bare
    # generate on a GPU (and a fresh thread per call ~3x slower). Timestamps come from the streamer.
    import threading

    model = load(make_config(str(tiny_llama)))
    calls = spy_generate(model)
    seen: list[threading.Thread] = []
    real = model.handle.model.generate

    def where(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    model.handle.model.generate = where
    config = make_config("random:tiny-llama", generation=GEN)
    before = threading.active_count()
    serve(model, token_requests(1), config)
    serve(model, token_requests(1), config)
    assert len(calls) == 2 and seen == [threading.current_thread()] * 2
    assert threading.active_count() == before
    model.close()


def test_events_carry_step_times_not_delivery_times(tiny_llama: Path) -> None:
    # Events of a batch are handed over when it ends, but each keeps the instant of its decode step.
    from lem_backend_pytorch.plugin import generate_stream

    model = load(make_config(str(tiny_llama)))
    config = make_config("random:tiny-llama", generation=GEN)
    received = []
    for event in generate_stream(model=model, requests=token_requests(2), params=config.generation, config=config):
        received.append((time.monotonic_ns(), event))
    tokens = [(got, e) for got, e in received if e.n_tokens]
    assert all(e.t_ns <= got for got, e in tokens)
    stamps = [e.t_ns for _, e in tokens if e.request_id == tokens[0][1].request_id]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # one distinct instant per step
    model.close()


def test_step_clock_turns_lengths_into_per_step_tokens() -> None:
    # One token per step, then an assisted step that added three, then a step transformers undid (no tokens).
    from lem_backend_pytorch.streaming import StepClock, steps

    clock = StepClock("cpu")
    clock.lengths, clock.marks = [5, 6, 9, 10], [100, 200, 300, 400]
    new = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert list(steps(clock, new, prompt_len=4)) == [
        (100, [1, 6]),
        (200, [2, 7]),
        (300, [[3, 4, 5], [8, 9, 10]]),
    ]


def test_step_clock_never_stops_generation_and_stamps_each_call(tiny_model: Any) -> None:
    import torch

    from lem_backend_pytorch.streaming import StepClock

    clock = StepClock("cpu")
    ids = torch.zeros((3, 5), dtype=torch.long)
    for width in (4, 5):
        out = clock(ids[:, :width], None)
        assert out.dtype == torch.bool and out.shape == (3,) and not out.any()
    assert clock.lengths == [4, 5] and clock.stamps_ns() == sorted(clock.stamps_ns())
