"""Every config key reaches vLLM's EngineArgs or SamplingParams; validation; presets. No engine is started."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
from vllm.sampling_params import RequestOutputKind

from lem.configfile.loading import load, structure
from lem.errors import BackendError, ConfigError
from lem_backend_vllm import options, plugin, sampling


def _config(**doc: Any) -> Any:
    """A config structured but not validated, so invalid combinations can be checked directly."""
    # A built-in random model: a real local directory, so EngineArgs never looks at the hub.
    base: dict[str, Any] = {"model": "random:tiny-llama", "backend": "vllm"}
    config, problems = structure({**base, **doc})
    assert config is not None, problems
    return config


# Every [vllm] engine option with a value that differs from vLLM's default.
ENGINE_VALUES: dict[str, Any] = {
    "max_num_seqs": 7,
    "max_num_batched_tokens": 1234,
    "gpu_memory_utilization": 0.55,
    "cpu_offload_gb": 1.5,
    "enable_prefix_caching": False,
    "enable_chunked_prefill": False,
    "kv_cache_dtype": "fp8",
    "block_size": 32,
    "max_model_len": 300,
    "enforce_eager": True,
    "distributed_backend": "mp",
    "attention_backend": "CPU_ATTN",
    "load_format": "safetensors",
    "max_lora_rank": 32,
    "max_loras": 3,
    "tokenizer": "TOKENIZER",  # replaced by a real directory in the test
    "swap_space": 4,  # gone from vLLM's V1 engine: must fail clearly (below)
}


def test_every_engine_option_reaches_engine_args() -> None:
    assert set(ENGINE_VALUES) == set(options.ENGINE_OPTIONS), "test a value for every option in the table"
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    accepted = {k: v for k, v in ENGINE_VALUES.items() if options.ENGINE_OPTIONS[k] in fields}
    assert len(accepted) >= len(ENGINE_VALUES) - 1
    for key in set(ENGINE_VALUES) - set(accepted):
        with pytest.raises(BackendError, match=rf"vllm\.{key}: vLLM"):
            options.check_against_vllm(options.engine_args(_config(vllm={key: ENGINE_VALUES[key]})))
    accepted["tokenizer"] = options.model_path(_config())[0]
    config = _config(vllm=accepted)
    args = options.engine_args(config)
    options.check_against_vllm(args)
    built = AsyncEngineArgs(**args)
    for key, value in accepted.items():
        got = getattr(built, options.ENGINE_OPTIONS[key])
        got = getattr(got, "name", got)  # vLLM may turn a backend name into its enum
        assert got == value, key


def test_core_options_reach_engine_args(tmp_path: Path) -> None:
    config = _config(
        precision="float16",
        seed=7,
        revision="abc",
        trust_remote_code=True,
        adapter=str(tmp_path / "my-lora"),
        sharding={"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
        quantization={"method": "awq"},
        batching={"batch_size": 16},
        load_format="random",
    )
    built = EngineArgs(**options.engine_args(config))
    assert built.model == options.model_path(config)[0]
    assert (built.dtype, built.seed, built.revision) == ("float16", 7, "abc")
    assert built.trust_remote_code is True
    assert (built.tensor_parallel_size, built.pipeline_parallel_size) == (2, 2)
    assert built.quantization == "awq"
    assert built.max_num_seqs == 16  # batch_size is the hint for max_num_seqs
    assert built.load_format == "dummy"  # random weights
    assert built.enable_lora is True and built.max_loras == 1


def test_explicit_max_num_seqs_wins_over_batch_size() -> None:
    args = options.engine_args(_config(batching={"batch_size": 16}, vllm={"max_num_seqs": 3}))
    assert args["max_num_seqs"] == 3


def test_random_builtin_model_is_materialized_with_dummy_weights() -> None:
    args = options.engine_args(_config(model="random:tiny-llama"))
    assert args["load_format"] == "dummy"
    assert (Path(args["model"]) / "config.json").exists()
    assert (Path(args["model"]) / "tokenizer.json").exists()


def test_unknown_builtin_model_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match=r"random:nope.*known: random:tiny-llama"):
        options.engine_args(_config(model="random:nope"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1},
            {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1},
        ),
        ({"method": "draft", "model": "/d", "num_speculative_tokens": 2}, {"model": "/d", "num_speculative_tokens": 2}),
        (
            {"method": "eagle", "model": "/e", "num_speculative_tokens": 2},
            {"method": "eagle", "model": "/e", "num_speculative_tokens": 2},
        ),
    ],
)
def test_speculative_table_becomes_speculative_config(spec: dict[str, Any], expected: dict[str, Any]) -> None:
    args = options.engine_args(_config(vllm={"speculative": spec}))
    options.check_against_vllm(args)
    assert args["speculative_config"] == expected
    assert EngineArgs(**args).speculative_config == expected


def test_lora_adapters_single_and_multiple(tmp_path: Path) -> None:
    config = _config(adapter="/a/top", vllm={"lora_adapters": ["/a/one", {"name": "two", "path": "/a/2"}]})
    assert options.lora_adapters(config) == [("top", "/a/top"), ("one", "/a/one"), ("two", "/a/2")]
    built = EngineArgs(**options.engine_args(config))
    assert built.enable_lora is True and built.max_loras == 3
    chooser = plugin._lora_chooser(config)
    from lem.types import Request

    picked = [chooser(Request(i, "p", 1)) for i in range(4)]
    assert [p.lora_name for p in picked] == ["top", "one", "two", "top"]
    assert [p.lora_path for p in picked[:3]] == ["/a/top", "/a/one", "/a/2"]
    assert len({p.lora_int_id for p in picked}) == 3


def test_extra_is_passed_through_and_overrides() -> None:
    args = options.engine_args(_config(vllm={"max_num_seqs": 4, "extra": {"max_num_seqs": 9, "max_logprobs": 3}}))
    built = EngineArgs(**args)
    assert (built.max_num_seqs, built.max_logprobs) == (9, 3)


def test_option_the_installed_vllm_no_longer_accepts_is_a_clear_error() -> None:
    import vllm

    # swap_space was an engine argument in vLLM 0.x (V0 engine) and is gone from this one.
    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    assert "swap_space" not in fields
    with pytest.raises(BackendError, match=rf"vllm\.swap_space: vLLM {vllm.__version__} has no engine argument"):
        options.check_against_vllm(options.engine_args(_config(vllm={"swap_space": 4})))
    with pytest.raises(BackendError, match=r"vllm\.extra\.not_a_field: .*has no engine argument 'not_a_field'"):
        options.check_against_vllm(options.engine_args(_config(vllm={"extra": {"not_a_field": 1}})))


def test_sampling_options_reach_sampling_params() -> None:
    config = _config(
        seed=11,
        generation={
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 5,
            "min_p": 0.05,
            "repetition_penalty": 1.2,
            "min_output_tokens": 3,
            "max_output_tokens": 20,
            "ignore_eos": True,
        },
        vllm={"n": 2},
    )
    sp = sampling.sampling_params(config.generation, config, stream=True)
    assert isinstance(sp, SamplingParams)
    got = (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty)
    assert got == (0.7, 0.9, 5, 0.05, 1.2)
    assert (sp.min_tokens, sp.max_tokens, sp.ignore_eos, sp.seed, sp.n) == (3, 20, True, 11, 2)
    assert sp.output_kind == RequestOutputKind.DELTA
    assert sampling.sampling_params(config.generation, config, stream=False).output_kind == RequestOutputKind.FINAL_ONLY


def test_greedy_and_top_k_off() -> None:
    config = _config(generation={"do_sample": True, "temperature": 0.0, "top_k": 0})
    sp = sampling.sampling_params(config.generation, config, stream=True)
    assert sp.temperature == 0.0
    # This vLLM spells "off" as its default (0 here, -1 in older versions).
    assert sp.top_k == sampling.top_k_off() == SamplingParams().top_k
    config = _config(generation={"do_sample": False, "temperature": 0.8})
    assert sampling.sampling_params(config.generation, config, stream=True).temperature == 0.0


def test_best_of_not_in_this_vllm_is_a_clear_error() -> None:
    config = _config(vllm={"best_of": 2})
    with pytest.raises(BackendError, match=r"vllm\.best_of: vLLM .* has no 'best_of'"):
        sampling.sampling_params(config.generation, config, stream=True)


def test_beam_search_params() -> None:
    config = _config(
        generation={"num_beams": 3, "max_output_tokens": 5, "length_penalty": 0.5}, vllm={"mode": "offline"}
    )
    bp = sampling.beam_search_params(config.generation)
    assert (bp.beam_width, bp.max_tokens, bp.length_penalty) == (3, 5, 0.5)


def _messages(problems: list[Any]) -> dict[str, str]:
    return {p.path: f"{p.severity}: {p.message} {p.hint}" for p in problems}


def test_validate_config_only_for_vllm() -> None:
    assert plugin.validate_config(config=_config(backend="pytorch", vllm={"bogus": 1})) == []


def test_validate_config_errors_and_warnings() -> None:
    config = _config(
        batching={"batch_size": 8},
        quantization={"method": "bnb-8bit"},
        generation={"no_repeat_ngram_size": 3, "num_beams": 2},
        traffic={"mode": "poisson", "rate": 2.0},
        vllm={"max_num_seq": 4, "speculative": {"method": "eagle"}},
    )
    found = _messages(plugin.validate_config(config=config))
    assert (
        found["vllm.max_num_seq"].startswith("error: unknown key")
        and "did you mean 'max_num_seqs'" in found["vllm.max_num_seq"]
    )
    assert found["batching.batch_size"].startswith("warning: becomes vllm.max_num_seqs")
    assert found["quantization.method"].startswith("warning:") and "8-bit" in found["quantization.method"]
    assert found["generation.no_repeat_ngram_size"].startswith("warning: is not supported")
    assert found["generation.num_beams"].startswith("error:")
    assert found["vllm.speculative.model"].startswith("error: is required")
    offline = _config(traffic={"mode": "poisson", "rate": 2.0}, vllm={"mode": "offline"})
    assert _messages(plugin.validate_config(config=offline))["vllm.mode"].startswith("error:")


def test_unknown_key_in_a_real_toml_file_is_reported_by_lem_load(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('model = "m"\nbackend = "vllm"\n[vllm]\nenable_prefix_cachin = true\n')
    with pytest.raises(ConfigError, match=r"vllm\.enable_prefix_cachin: unknown key .*enable_prefix_caching"):
        load(path)


@pytest.mark.parametrize("name", sorted(plugin.register_presets()))
def test_presets_load_and_map_to_engine_args(tmp_path: Path, name: str) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('model = "random:tiny-llama"\n')
    config = load(path, preset=name).experiments[0].config
    assert config.backend == "vllm" and config.preset == name
    args = options.engine_args(config)
    options.check_against_vllm(args)
    EngineArgs(**args)
    assert set(plugin.register_presets()) == {
        "vllm-throughput",
        "vllm-speculative",
        "vllm-memory-efficient",
        "vllm-low-latency",
    }


def test_plugin_import_loads_neither_vllm_nor_torch() -> None:
    # lem discovers plugins on every command: importing this one must stay cheap and must not touch CUDA.
    import subprocess
    import sys

    code = "import sys, lem_backend_vllm.plugin; print(sorted({'vllm', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
