"""The ``[llamacpp]`` table: validation, and every key reaching the real ``Llama(...)`` / ``Llama.generate``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from llamacpp_helpers import load, make_config, serve, token_requests

from lem.configfile.loading import config_from_dict, structure
from lem.errors import BackendError, ConfigError
from lem.plugins import get_plugin_manager
from lem_backend_llamacpp import options


def _problems(doc: dict[str, Any]) -> dict[str, str]:
    config, problems = structure({"backend": "llamacpp", "precision": "float32", **doc})
    assert config is not None, problems
    found = get_plugin_manager().hook.validate_config(config=config)
    return {p.path: p.format() for group in found for p in group if p.path}


def test_unknown_key_and_bad_values_are_errors_with_the_dotted_key() -> None:
    found = _problems({"model": "random:tiny-llama", "llamacpp": {"n_ctxx": 8, "split_mode": "diagonal"}})
    assert "did you mean 'n_ctx'" in found["llamacpp.n_ctxx"]
    assert found["llamacpp.split_mode"].startswith("error: llamacpp.split_mode = 'diagonal': must be 'none'")
    found = _problems({"model": "random:tiny-llama", "llamacpp": {"quantization": "q9_9", "type_k": "q1"}})
    assert "must be one of f32" in found["llamacpp.quantization"]
    assert "must be one of f32" in found["llamacpp.type_k"]


def test_what_llama_cpp_cannot_do_is_an_error_or_a_warning() -> None:
    found = _problems(
        {
            "model": "random:tiny-llama",
            "batching": {"batch_size": 4},
            "generation": {"num_beams": 2, "no_repeat_ngram_size": 3},
            "quantization": {"method": "bnb-4bit"},
            "sharding": {"tensor_parallel_size": 2},
        }
    )
    assert (
        found["batching.batch_size"].startswith("warning:") and "one sequence at a time" in found["batching.batch_size"]
    )
    assert found["generation.num_beams"].startswith("error:") and "no beam search" in found["generation.num_beams"]
    assert found["generation.no_repeat_ngram_size"].startswith("warning:")
    assert found["quantization.method"].startswith("error:") and "llamacpp.quantization" in found["quantization.method"]
    assert found["sharding"].startswith("error:") and "tensor_split" in found["sharding"]


def test_quantization_of_a_gguf_file_is_ignored_with_a_warning() -> None:
    found = _problems({"model": "model.gguf", "llamacpp": {"quantization": "q8_0"}})
    assert found["llamacpp.quantization"].startswith("warning:") and "own types" in found["llamacpp.quantization"]


def test_a_bad_table_stops_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"llamacpp\.use_mmap = 'yes': must be true or false"):
        config_from_dict({"model": "random:tiny-llama", "backend": "llamacpp", "llamacpp": {"use_mmap": "yes"}})


def test_every_model_option_reaches_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    table = {
        "n_gpu_layers": 0,
        "main_gpu": 0,
        "split_mode": "none",
        "tensor_split": [1.0],
        "n_ctx": 384,
        "n_batch": 64,
        "n_ubatch": 32,
        "n_threads": 1,
        "n_threads_batch": 2,
        "flash_attn": True,
        "type_k": "q8_0",
        "type_v": "q8_0",
        "offload_kqv": False,
        "use_mmap": False,
        "use_mlock": False,
    }
    assert set(table) == set(options.MODEL_OPTIONS)
    assert set(options.MODEL_OPTIONS) == {o.key for o in options.TABLE.options if o.call == "Llama"}
    seen: list[dict[str, Any]] = []
    real = llama_cpp.Llama.__init__

    @functools.wraps(real)  # keeps the signature that check_against_llama reads
    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(llama_cpp.Llama, "__init__", recording)
    model = load(make_config("random:tiny-llama", seed=7, llamacpp={**table, "extra": {"last_n_tokens_size": 32}}))
    try:
        (kwargs,) = seen
        expected = {options.TABLE[key].names[0]: options.to_library(key, table[key]) for key in options.MODEL_OPTIONS}
        assert {k: kwargs[k] for k in expected} == expected
        assert (kwargs["seed"], kwargs["last_n_tokens_size"]) == (7, 32)
        assert kwargs["split_mode"] == llama_cpp.LLAMA_SPLIT_MODE_NONE
        # ... and the running context has them.
        cp = model.handle.llm.context_params
        assert (cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch) == (384, 64, 32, 1, 2)
        assert (cp.type_k, cp.type_v, cp.offload_kqv) == (llama_cpp.GGML_TYPE_Q8_0, llama_cpp.GGML_TYPE_Q8_0, False)
        assert model.info["llama_kwargs"]["n_ctx"] == 384
        assert sum(e.n_tokens for e in serve(model, token_requests(1), make_config("random:tiny-llama"))) == 8
    finally:
        model.close()


def test_every_sampling_option_reaches_generate(tiny_model: Any, spy_generate: Any) -> None:
    calls = spy_generate(tiny_model)
    gen = {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 12,
        "min_p": 0.02,
        "repetition_penalty": 1.2,
        "max_output_tokens": 5,
        "ignore_eos": True,
    }
    events = serve(tiny_model, token_requests(1), make_config("random:tiny-llama", generation=gen))
    assert sum(e.n_tokens for e in events) == 5
    (kwargs,) = calls
    assert {k: kwargs[k] for k in ("temp", "top_p", "top_k", "min_p", "repeat_penalty")} == {
        "temp": 0.7,
        "top_p": 0.9,
        "top_k": 12,
        "min_p": 0.02,
        "repeat_penalty": 1.2,
    }
    # llama-cpp-python's own defaults (top_k 40, min_p 0.05...) never leak in: neutral values are explicit.
    assert {k: kwargs[k] for k in options.NEUTRAL_SAMPLING} == options.NEUTRAL_SAMPLING
    greedy = serve(
        tiny_model, token_requests(1), make_config("random:tiny-llama", generation={**gen, "do_sample": False})
    )
    assert calls[-1]["temp"] == 0.0 and sum(e.n_tokens for e in greedy) == 5


def test_sampling_with_the_same_seed_repeats(tiny_model: Any) -> None:
    gen = {"do_sample": True, "temperature": 1.5, "max_output_tokens": 12, "ignore_eos": True}

    def tokens(seed: int) -> list[int]:
        config = make_config("random:tiny-llama", seed=seed, generation=gen)
        return [t for e in serve(tiny_model, token_requests(1), config) for t in e.token_ids]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_an_argument_the_installed_library_does_not_have_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match=r"llamacpp\.extra\.n_ctxx: llama-cpp-python .* has no argument 'n_ctxx'"):
        options.check_against_llama({"model_path": "x", "n_ctxx": 1}, {})
    # As if a llama-cpp-python release renamed generate's top_p: the config key is named, not a TypeError.
    monkeypatch.setitem(options.SAMPLING, "top_p", "nucleus_p")
    sampling = options.generate_kwargs(make_config("random:tiny-llama").generation)
    with pytest.raises(BackendError, match=r"generation\.top_p: .*Llama\.generate has no argument 'nucleus_p'"):
        options.check_against_llama({}, sampling)


def test_float32_precision_keeps_the_kv_cache_in_f32(tiny_model: Any, gguf_cache: str) -> None:
    import llama_cpp

    cp = tiny_model.handle.llm.context_params
    assert (cp.type_k, cp.type_v) == (llama_cpp.GGML_TYPE_F32, llama_cpp.GGML_TYPE_F32)
    kwargs = options.llama_kwargs(make_config("random:tiny-llama", precision="float16"), "m.gguf")
    assert "type_k" not in kwargs and "type_v" not in kwargs  # llama.cpp's own default (f16)
