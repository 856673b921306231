"""Per-token streaming on real llama.cpp: exact counts, token ids, end of generation, traffic schedule."""

from __future__ import annotations

import time
from typing import Any

from llamacpp_helpers import load, make_config, serve, token_requests

from lem.types import Request


def test_one_event_per_token_with_its_id(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation={"max_output_tokens": 16, "ignore_eos": True})
    events = serve(tiny_model, token_requests(3), config)
    for rid in range(3):
        submitted, *mine = [e for e in events if e.request_id == rid]
        # No arrival time: the request arrives when it is submitted, and a zero-token event says when.
        assert submitted.n_tokens == 0 and not submitted.finished
        assert [e.n_tokens for e in mine] == [1] * 16
        assert all(len(e.token_ids) == 1 for e in mine)
        assert [e.finished for e in mine] == [False] * 15 + [True]
        stamps = [e.t_ns for e in mine]
        assert stamps == sorted(stamps)
    # Greedy output of the built-in is diverse, not the last prompt token repeated.
    assert len({t for e in events if e.request_id == 0 for t in e.token_ids}) >= 12


def test_prompt_text_is_tokenized_by_the_models_tokenizer(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation={"max_output_tokens": 4, "ignore_eos": True})
    text = "Explain the energy of a token"
    ids = tuple(tiny_model.tokenizer.encode(text))
    by_text = serve(tiny_model, [Request(0, text, len(ids))], config)
    by_ids = serve(tiny_model, [Request(0, "", len(ids), ids)], config)
    assert [e.token_ids for e in by_text] == [e.token_ids for e in by_ids]


def test_end_of_generation_stops_unless_ignored_and_is_masked_before_min_tokens(gguf_cache: str) -> None:
    """The GGUF's EOS id is overridden (llama.cpp kv_overrides) to the 4th token greedy decoding produces."""
    base = {"max_output_tokens": 12}
    plain = make_config("random:tiny-llama", generation={**base, "ignore_eos": True})
    probe = load(plain)
    try:
        fourth = [t for e in serve(probe, token_requests(1), plain) for t in e.token_ids][3]
    finally:
        probe.close()
    table = {"cache_dir": gguf_cache, "extra": {"kv_overrides": {"tokenizer.ggml.eos_token_id": fourth}}}
    stops = make_config("random:tiny-llama", generation=base, llamacpp=table)
    model = load(stops)
    try:
        assert fourth in model.handle.eog_ids
        ended = serve(model, token_requests(1), stops)
        assert sum(e.n_tokens for e in ended) == 4 and ended[-1].finished and ended[-1].token_ids == (fourth,)
        ignored = serve(
            model, token_requests(1), make_config("random:tiny-llama", generation={**base, "ignore_eos": True})
        )
        assert sum(e.n_tokens for e in ignored) == 12
        at_least = make_config("random:tiny-llama", generation={**base, "min_output_tokens": 6})
        masked = [t for e in serve(model, token_requests(1), at_least) for t in e.token_ids]
        assert len(masked) >= 6 and fourth not in masked[:6]
    finally:
        model.close()


def test_requests_wait_for_their_arrival_and_queue_behind_each_other(tiny_model: Any) -> None:
    config = make_config("random:tiny-llama", generation={"max_output_tokens": 8, "ignore_eos": True})
    arrival = time.monotonic_ns() + 200_000_000
    events = serve(tiny_model, token_requests(2, arrival_ns=arrival), config)
    first = {rid: min(e.t_ns for e in events if e.request_id == rid) for rid in (0, 1)}
    last0 = max(e.t_ns for e in events if e.request_id == 0)
    assert first[0] >= arrival
    # One sequence at a time: the second request, arrived together with the first, starts after it ends.
    assert first[1] > last0
    assert not any(e.n_tokens == 0 for e in events)  # arrival times are known: no submission events


def test_closed_loop_concurrency_submits_as_slots_free(tiny_model: Any) -> None:
    config = make_config(
        "random:tiny-llama",
        generation={"max_output_tokens": 3, "ignore_eos": True},
        traffic={"mode": "concurrency", "concurrency": 2},
    )
    events = serve(tiny_model, token_requests(3), config)
    order = [(e.request_id, e.n_tokens, e.finished) for e in events]
    # Two submitted at once, the third when the first one finishes.
    assert order[:2] == [(0, 0, False), (1, 0, False)]
    done0 = order.index((0, 1, True))
    assert order[done0 + 1] == (2, 0, False)
    assert sum(n for _, n, _ in order) == 9


def test_load_records_llama_cpp_build_versions_and_conversion(tiny_model: Any) -> None:
    info = tiny_model.info
    assert info["system_info"].startswith("CPU :") and info["gpu_offload_supported"] is False
    assert info["versions"]["llama-cpp-python"] and info["versions"]["gguf"]
    conv = info["conversion"]
    assert conv["source"] == "random:tiny-llama" and conv["quantization"] == "f32"
    assert conv["seconds"] is not None and conv["seconds"] >= 0 and info["load_seconds"] > 0
    assert info["random_weights"] is True and tiny_model.devices == ()
    # A CPU build: no device is named, and the roofline figures say why.
    assert info["hardware"]["device_name"] is None and "has no GPU offload" in info["hardware"]["device_reason"]
    assert tiny_model.model_config["hidden_size"] == 128
    assert tiny_model.num_parameters == sum(
        p for p in (2048 * 128 * 2, 2 * (128 * 128 * 2 + 128 * 64 * 2 + 3 * 128 * 256 + 2 * 128), 128)
    )
