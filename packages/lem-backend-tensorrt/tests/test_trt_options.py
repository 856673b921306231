"""``[tensorrt]`` validation, presets and the option mapping (no TensorRT-LLM needed: plain data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE, config

from lem.configfile.loading import load, structure
from lem.errors import ConfigError
from lem_backend_tensorrt import options, plugin
from lem_backend_tensorrt.engine import check_against_installed
from lem_backend_tensorrt.presets import PRESETS


def problems(**tables: Any) -> dict[str, str]:
    """Dotted path -> 'severity: message' of what validate_config says about the experiment."""
    doc: dict[str, Any] = {"model": "org/model", "backend": "tensorrt", **tables}
    exp, structure_problems = structure(doc)
    assert exp is not None, structure_problems
    return {p.path: f"{p.severity}: {p.message}" for p in plugin.validate_config(config=exp)}


def test_validate_config_is_only_for_tensorrt() -> None:
    exp, _ = structure({"model": "org/model", "backend": "pytorch", "tensorrt": {"nonsense": 1}})
    assert plugin.validate_config(config=exp) == []


def test_a_clean_config_has_no_problems() -> None:
    assert problems(tensorrt={"max_batch_size": 8, "gpu_memory_utilization": 0.8}) == {}


def test_unknown_key_suggests_the_right_one() -> None:
    found = problems(tensorrt={"max_batch_sizes": 8})
    assert found == {"tensorrt.max_batch_sizes": "error: unknown key"}
    exp, _ = structure({"model": "org/model", "backend": "tensorrt", "tensorrt": {"max_batch_sizes": 8}})
    [problem] = plugin.validate_config(config=exp)
    assert problem.hint == "did you mean 'max_batch_size'?"


def test_builder_opt_level_is_refused_with_the_reason() -> None:
    found = problems(tensorrt={"runtime": "tensorrt", "builder_opt_level": 3})
    assert "not a field of TensorRT-LLM's BuildConfig" in found["tensorrt.builder_opt_level"]


@pytest.mark.parametrize("key", ["engine_cache_dir", "force_rebuild", "strongly_typed", "extra_build_args"])
def test_engine_flow_keys_need_the_tensorrt_runtime(key: str) -> None:
    value = {"engine_cache_dir": "/tmp/x", "force_rebuild": True, "strongly_typed": True, "extra_build_args": {}}[key]
    found = problems(tensorrt={key: value})
    assert "tensorrt.runtime = 'pytorch'" in found[f"tensorrt.{key}"]
    assert f"tensorrt.{key}" not in problems(tensorrt={"runtime": "tensorrt", key: value})


@pytest.mark.parametrize("key", list(options.PYTORCH_ONLY))
def test_pytorch_runtime_keys_are_errors_in_the_engine_flow(key: str) -> None:
    exp, _ = structure({"model": "org/model", "backend": "tensorrt", "tensorrt": {"runtime": "tensorrt", key: 1}})
    messages = [p.message for p in plugin.validate_config(config=exp) if p.path == f"tensorrt.{key}"]
    assert any("is an option of the PyTorch runtime" in m for m in messages), messages


def test_runtime_and_engine_path(tmp_path: Path) -> None:
    assert "must be 'pytorch' or 'tensorrt'" in problems(tensorrt={"runtime": "trt"})["tensorrt.runtime"]
    assert "is not a directory" in problems(tensorrt={"engine_path": str(tmp_path / "no")})["tensorrt.engine_path"]
    # engine_path implies the engine flow; build options beside it are warned about (nothing is built).
    found = problems(tensorrt={"engine_path": str(tmp_path), "force_rebuild": True})
    assert found == {
        "tensorrt.force_rebuild": "warning: has no effect with tensorrt.engine_path: that engine is "
        "loaded as it is, not built"
    }
    exp = config("org/model", tensorrt={"engine_path": str(tmp_path)})
    assert options.runtime(exp) == "tensorrt" and options.llm_args(exp)["model"] == str(tmp_path)


def test_the_engine_flow_maps_build_limits_onto_build_config() -> None:
    exp = config(
        "org/model",
        batching={"batch_size": 8},
        tensorrt={
            "runtime": "tensorrt",
            "max_batch_size": 16,
            "max_input_len": 256,
            "max_output_len": 64,
            "max_num_tokens": 2048,
            "strongly_typed": False,
            "gpu_memory_utilization": 0.8,
            "extra_build_args": {"opt_num_tokens": 512},
        },
    )
    build = options.build_config_args(exp)
    assert build == {
        "max_batch_size": 16,
        "max_input_len": 256,
        "max_seq_len": 320,
        "max_num_tokens": 2048,
        "strongly_typed": False,
        "opt_num_tokens": 512,
    }
    args = options.llm_args(exp)
    assert not {"max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens"} & set(args)
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.8}
    assert (
        options.build_config_args(config("org/model", batching={"batch_size": 4}, tensorrt={"runtime": "tensorrt"}))[
            "max_batch_size"
        ]
        == 4
    )


def test_mode_and_traffic() -> None:
    assert "must be 'stream' or 'offline'" in problems(tensorrt={"mode": "batch"})["tensorrt.mode"]
    found = problems(tensorrt={"mode": "offline"}, traffic={"mode": "poisson", "rate": 2.0})
    assert "cannot follow traffic.mode = 'poisson'" in found["tensorrt.mode"]


def test_universal_parameters_refused_or_warned() -> None:
    found = problems(generation={"min_p": 0.1, "no_repeat_ngram_size": 3, "num_beams": 2})
    assert found["generation.min_p"].startswith("warning:")
    assert found["generation.no_repeat_ngram_size"].startswith("warning:")
    assert found["generation.num_beams"].startswith("error: beam search")
    assert "generation.num_beams" not in problems(
        generation={"num_beams": 2}, tensorrt={"mode": "offline"}, traffic={"mode": "offline"}
    )


def test_lora_and_bitsandbytes_are_refused(tmp_path: Path) -> None:
    found = problems(adapter="org/adapter", quantization={"method": "bnb-4bit"})
    assert found["adapter"].startswith("error: LoRA")
    assert found["quantization.method"] == "error: BitsAndBytes is not supported by TensorRT-LLM"
    exp, _ = structure({"model": "org/model", "backend": "tensorrt", "adapter": "org/adapter"})
    [problem] = [p for p in plugin.validate_config(config=exp) if p.path == "adapter"]
    assert "merge the adapter before building" in problem.hint


def test_quantization_table() -> None:
    assert problems(tensorrt={"quantization": {"method": "int4_awq"}}) == {}
    assert "must be one of" in problems(tensorrt={"quantization": {"method": "nf4"}})["tensorrt.quantization.method"]
    found = problems(tensorrt={"quantization": {"method": "fp8", "calibration": {"dataset": "cnn", "num_sample": 9}}})
    assert found["tensorrt.quantization.calibration.num_sample"] == "error: unknown key"
    assert "does not calibrate" in found["tensorrt.quantization.calibration"]


def test_the_engine_flow_quantizes_while_it_builds() -> None:
    table = {"method": "fp8", "calibration": {"dataset": "cnn_dailymail", "num_samples": 32, "max_length": 512}}
    assert problems(tensorrt={"runtime": "tensorrt", "quantization": table}) == {}
    args = options.llm_args(config("org/model", tensorrt={"runtime": "tensorrt", "quantization": table}))
    assert args["quant_config"] == {"quant_algo": "FP8"}
    assert args["calib_config"]["calib_batches"] == 32 and args["calib_config"]["calib_batch_size"] == 1
    # The core's [quantization] method works too; the PyTorch runtime passes no quant_config.
    core = config("org/model", quantization={"method": "awq"}, tensorrt={"runtime": "tensorrt"})
    assert options.llm_args(core)["quant_config"] == {"quant_algo": "W4A16_AWQ"}
    assert "quant_config" not in options.llm_args(config("org/model", tensorrt={"quantization": {"method": "fp8"}}))
    found = problems(tensorrt={"runtime": "tensorrt", "quantization": {"method": "fp8", "calibration": {"split": "t"}}})
    assert "takes no dataset split" in found["tensorrt.quantization.calibration.split"]
    found = problems(tensorrt={"runtime": "tensorrt", "quantization": {"calibration": {"num_samples": 8}}})
    assert "needs tensorrt.quantization.method" in found["tensorrt.quantization.calibration"]


def test_kv_cache_type_and_draft_pairing() -> None:
    assert "paged" in problems(tensorrt={"kv_cache_type": "continuous"})["tensorrt.kv_cache_type"]
    assert "go together" in problems(tensorrt={"draft_model": "org/draft"})["tensorrt.draft_model"]


def test_batch_size_becomes_max_batch_size_with_a_warning() -> None:
    found = problems(batching={"batch_size": 16})
    assert found["batching.batch_size"].startswith("warning: becomes max_batch_size")
    assert options.llm_args(config("org/model", batching={"batch_size": 16}))["max_batch_size"] == 16
    explicit = config("org/model", batching={"batch_size": 16}, tensorrt={"max_batch_size": 4})
    assert options.llm_args(explicit)["max_batch_size"] == 4


def test_vllm_in_the_same_environment_is_a_clear_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    found = problems()
    assert found["backend"].startswith("warning: vLLM is installed in the same environment as TensorRT-LLM")


def test_core_options_and_sharding_defaults() -> None:
    exp = config(
        "org/model",
        precision="float16",
        revision="abc",
        trust_remote_code=True,
        sharding={"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
    )
    args = options.llm_args(exp)
    assert args["model"] == "org/model" and args["dtype"] == "float16" and args["revision"] == "abc"
    assert args["trust_remote_code"] is True
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (2, 2)
    # [tensorrt] tp_size/pp_size override [sharding].
    args = options.llm_args(config("org/model", sharding={"tensor_parallel_size": 2}, tensorrt={"tp_size": 4}))
    assert args["tensor_parallel_size"] == 4


def test_random_builtin_model_loads_with_dummy_weights() -> None:
    args = options.llm_args(config("random:tiny-llama"))
    assert args["load_format"] == "dummy" and Path(args["model"], "config.json").is_file()


def test_cuda_graphs_off_and_extra_runtime_args() -> None:
    args = options.llm_args(config("org/model", tensorrt={"cuda_graphs": False}))
    assert "cuda_graph_config" in args and args["cuda_graph_config"] is None
    args = options.llm_args(
        config("org/model", tensorrt={"max_batch_size": 8, "extra_runtime_args": {"max_batch_size": 2}})
    )
    assert args["max_batch_size"] == 2


def test_an_argument_the_installed_library_lacks_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lem.errors import BackendError

    with pytest.raises(
        BackendError, match=r"tensorrt.extra_runtime_args.max_batch: TensorRT-LLM .* no TorchLlmArgs argument"
    ):
        check_against_installed({"model": "m", "max_batch": 2})
    # A BuildConfig (a dataclass in the source) that renamed max_input_len: the key that maps to it is named.
    import dataclasses

    import tensorrt_llm.llmapi

    renamed = dataclasses.make_dataclass("BuildConfig", [("max_input_length", int, 1024)])
    with monkeypatch.context() as m:
        m.setattr(tensorrt_llm.llmapi, "BuildConfig", renamed)
        with pytest.raises(BackendError, match=r"tensorrt.max_input_len: TensorRT-LLM .* no BuildConfig field"):
            check_against_installed({"model": "m"}, {"max_input_len": 2})
    check_against_installed({"model": "m"}, {"max_input_len": 2})
    with pytest.raises(BackendError, match=r"extra_build_args.opt_level: .* no BuildConfig field"):
        check_against_installed({"model": "m"}, {"opt_level": 2})
    with pytest.raises(BackendError, match=r"no TrtLlmArgs argument 'cuda_graph_config'"):
        check_against_installed({"model": "m", "cuda_graph_config": None}, {})


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_load_and_map(tmp_path: Path, name: str) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(f'preset = "{name}"\nmodel = "org/model"\n')
    [exp] = load(path).experiments
    assert exp.config.backend == "tensorrt"
    args = options.llm_args(exp.config)
    import lem_trt_surface as surface_check

    assert surface_check.check_kwargs(surface_check.load(), "TorchLlmArgs", args) == []


def test_fp8_preset_needs_hopper() -> None:
    exp = config("org/model", tensorrt=PRESETS["tensorrt-fp8"]["tensorrt"])
    assert options.uses_fp8(exp)
    from lem.errors import BackendError
    from lem_backend_tensorrt.engine import check_capability

    with pytest.raises(BackendError, match=r"A100.*8\.0.*needs 9\.0"):
        check_capability(exp, [("A100", (8, 0))])
    check_capability(exp, [("H100", (9, 0))])


def test_unknown_key_in_a_real_toml_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text('model = "org/model"\nbackend = "tensorrt"\n[tensorrt]\nengine_path = "/engines/x"\n')
    with pytest.raises(ConfigError, match=r"tensorrt.engine_path = '/engines/x'.*is not a directory"):
        load(path)


def test_plugin_import_loads_neither_tensorrt_llm_nor_torch() -> None:
    # lem discovers plugins on every command: importing this one must stay cheap and must not touch CUDA.
    code = (
        "import sys; import lem_backend_tensorrt.plugin; "
        "bad = [m for m in ('tensorrt_llm', 'torch', 'transformers', 'pynvml') if m in sys.modules]; print(bad)"
    )
    env = {"PYTHONPATH": str(FAKE)}  # even with (the fake) tensorrt_llm importable
    import os

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    assert out.stdout.strip() == "[]"
