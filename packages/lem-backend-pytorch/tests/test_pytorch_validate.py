"""validate_config of the pytorch backend and its presets, through real TOML files and lem.configfile.loading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lem.configfile.loading import load, presets, structure, validate
from lem.errors import ConfigError


def _problems(doc: dict) -> list:
    config, problems = structure(doc)
    return problems if config is None else validate(config)


def _pt(problems: list, path: str) -> list:
    return [p for p in problems if p.path == path]


def test_unknown_key_gets_did_you_mean() -> None:
    found = _pt(
        _problems({"model": "random:tiny-llama", "pytorch": {"attn_implemntation": "sdpa"}}),
        "pytorch.attn_implemntation",
    )
    assert found and found[0].severity == "error"
    assert "attn_implementation" in found[0].hint


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("torch_compile", "fast"),
        ("torch_compile", True),
        ("use_cache", "yes"),
        ("attn_implementation", "flash"),
        ("device", "tpu"),
        ("device_map", "autp"),
        ("max_memory", {"0": 3.5}),
        ("assistant_model", 3),
        ("low_cpu_mem_usage", 1),
    ],
)
def test_wrong_types_and_values_are_errors(key: str, value: object) -> None:
    found = _pt(_problems({"model": "random:tiny-llama", "pytorch": {key: value}}), f"pytorch.{key}")
    assert [p.severity for p in found] == ["error"]
    assert found[0].value == value


def test_other_backend_is_not_checked() -> None:
    # The [pytorch] table of an experiment that runs elsewhere is not ours to judge.
    from lem_backend_pytorch.plugin import validate_config

    config, _ = structure({"model": "random:tiny-llama", "pytorch": {"bogus": 1}})
    assert config is not None
    import attrs

    assert validate_config(attrs.evolve(config, backend="vllm")) == []


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_package_is_an_error() -> None:
    found = _pt(
        _problems({"model": "random:tiny-llama", "pytorch": {"attn_implementation": "flash_attention_2"}}),
        "pytorch.attn_implementation",
    )
    assert found[0].severity == "error" and "flash_attn" in found[0].message


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed here")
def test_bnb_without_bitsandbytes_is_an_error() -> None:
    found = _pt(_problems({"model": "some/model", "quantization": {"method": "bnb-4bit"}}), "quantization.method")
    assert any(p.severity == "error" and "bitsandbytes" in p.message for p in found)


def test_quantized_random_model_is_an_error() -> None:
    found = _pt(_problems({"model": "random:tiny-llama", "quantization": {"method": "gptq"}}), "quantization.method")
    assert found[0].severity == "error"


def test_beams_warn_that_latency_is_not_per_token() -> None:
    found = _pt(_problems({"model": "random:tiny-llama", "generation": {"num_beams": 2}}), "generation.num_beams")
    assert [p.severity for p in found] == ["warning"] and "TTFT" in found[0].message


def test_assistant_needs_batch_size_one_and_no_static_cache() -> None:
    doc = {
        "model": "random:tiny-llama",
        "batching": {"batch_size": 4},
        "pytorch": {"assistant_model": "random:tiny-llama", "cache_implementation": "static"},
    }
    messages = [p.message for p in _pt(_problems(doc), "pytorch.assistant_model")]
    assert any("batch size 1" in m for m in messages) and any("static" in m for m in messages)


def test_compile_needs_a_static_cache() -> None:
    doc = {"model": "random:tiny-llama", "pytorch": {"torch_compile": "default", "cache_implementation": "dynamic"}}
    assert any(p.severity == "error" for p in _pt(_problems(doc), "pytorch.torch_compile"))


def test_pipeline_parallel_is_refused_with_a_hint() -> None:
    doc = {"model": "random:tiny-llama", "sharding": {"pipeline_parallel_size": 2}}
    found = _pt(_problems(doc), "sharding.pipeline_parallel_size")
    assert found[0].severity == "error" and "device_map" in found[0].hint


@pytest.mark.parametrize("name", ["pytorch-optimized", "pytorch-speculative", "pytorch-compatible"])
def test_presets_are_registered_and_valid(name: str, tmp_path: Path) -> None:
    assert name in presets()
    toml = tmp_path / "exp.toml"
    toml.write_text('model = "random:tiny-llama"\n[dataset]\nnum_prompts = 2\n')
    loaded = load(toml, preset=name)
    (exp,) = loaded.experiments
    assert exp.config.backend == "pytorch" and exp.config.preset == name
    assert exp.config.options_for("pytorch") == presets()[name]["pytorch"]


def test_bad_pytorch_table_in_a_toml_file_fails_with_its_path(tmp_path: Path) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text('model = "random:tiny-llama"\n[pytorch]\ntorch_compile = "turbo"\n')
    with pytest.raises(ConfigError) as info:
        load(toml)
    assert "pytorch.torch_compile = 'turbo'" in str(info.value)
