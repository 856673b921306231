"""lem's TensorRT-LLM arguments checked against the API surface extracted from TensorRT-LLM's source.

``tests/data/trtllm_api.json`` was written by ``tools/extract_api.py`` (``ast``,
imports nothing) from TensorRT-LLM source files; its ``source`` block says which
files, at which commits, and how they were read. No TensorRT-LLM is installed:
these tests check names and types against that file, and the extractor itself on
a small source tree written here.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import lem_trt_surface as surface_check
import pytest
from conftest import config

from lem_backend_tensorrt import options, plugin, sampling

HERE = Path(__file__).resolve().parent
SURFACE = surface_check.load()
EXTRACTOR = HERE.parent / "tools" / "extract_api.py"

#: A value for every [tensorrt] key that reaches TensorRT-LLM (types as a user writes them in TOML).
EVERY_KEY: dict[str, Any] = {
    "max_batch_size": 64,
    "max_input_len": 2048,
    "max_output_len": 512,
    "max_num_tokens": 8192,
    "enable_chunked_context": True,
    "tp_size": 1,
    "pp_size": 1,
    "attention_backend": "TRTLLM",
    "disable_overlap_scheduler": False,
    "stream_interval": 1,
    "gpu_memory_utilization": 0.85,
    "kv_cache_dtype": "fp8",
    "enable_block_reuse": False,
    "kv_cache_max_tokens": 65536,
    "tokens_per_block": 64,
    "cuda_graph_batch_sizes": [1, 2, 4, 8],
    "cuda_graph_max_batch_size": 8,
    "cuda_graph_padding": True,
    "capacity_scheduler_policy": "MAX_UTILIZATION",
    "context_chunking_policy": "FIRST_COME_FIRST_SERVED",
    "draft_model": "/models/draft",
    "num_draft_tokens": 4,
}


def mapping_problems(surface: dict[str, Any]) -> list[str]:
    """Every lem key whose TensorRT-LLM class or field is not in ``surface``, named both ways."""
    problems = []
    for key, (cls, field) in options.TENSORRT_OPTIONS.items():
        name = surface_check.resolve(surface, cls)
        if name not in surface["classes"]:
            problems.append(f"tensorrt.{key} -> {cls}: no such class")
        elif field not in surface_check.field_names(surface, name):
            problems.append(f"tensorrt.{key} -> {cls}.{field}: no such field")
    for key, field in options.CORE_OPTIONS.items():
        if field not in surface_check.fields(surface, "TorchLlmArgs"):
            problems.append(f"{key} -> TorchLlmArgs.{field}: no such field")
    for field in options.NESTED.values():
        if field not in surface_check.fields(surface, "TorchLlmArgs"):
            problems.append(f"TorchLlmArgs.{field}: no such field")
    for key, field in sampling.SAMPLING_OPTIONS.items():
        if field not in surface_check.fields(surface, "SamplingParams"):
            problems.append(f"generation.{key} -> SamplingParams.{field}: no such field")
    # The engine flow (runtime = "tensorrt"): its own targets, and the shared keys on TrtLlmArgs.
    for key, (cls, field) in options.ENGINE_OPTIONS.items():
        if cls not in surface["classes"]:
            problems.append(f"tensorrt.{key} -> {cls}: no such class")
        elif field not in surface_check.field_names(surface, cls):
            problems.append(f"tensorrt.{key} -> {cls}.{field}: no such field (runtime = 'tensorrt')")
    for key, field in options.ENGINE_CORE_OPTIONS.items():
        if field not in surface_check.fields(surface, "BuildConfig"):
            problems.append(f"{key} -> BuildConfig.{field}: no such field (runtime = 'tensorrt')")
    trt_fields = surface_check.fields(surface, "TrtLlmArgs") if "TrtLlmArgs" in surface["classes"] else {}
    for key, (cls, field) in options.TENSORRT_OPTIONS.items():
        if key in options.ENGINE_OPTIONS or key in options.PYTORCH_ONLY:
            continue
        target = field if cls == "TorchLlmArgs" else options.NESTED[cls]
        if target not in trt_fields:
            problems.append(f"tensorrt.{key} -> TrtLlmArgs.{target}: no such field (runtime = 'tensorrt')")
    for key, (cls, field) in options.ENGINE_QUANTIZATION.items():
        if cls not in surface["classes"] or field not in surface_check.fields(surface, cls):
            problems.append(f"tensorrt.quantization.{key} -> {cls}.{field}: no such field (runtime = 'tensorrt')")
    for cls, field in options.ENGINE_NESTED.items():
        if field not in trt_fields:
            problems.append(f"TrtLlmArgs.{field}: no such field (lem passes {cls} as it)")
    for method, algo in options.QUANTIZATION.items():
        if algo is not None and algo not in surface["classes"].get("QuantAlgo", {}).get("members", {}):
            problems.append(f"tensorrt.quantization.method = {method!r} -> QuantAlgo.{algo}: no such member")
    for field in ("build_config", "tokenizer", "model"):
        if field not in trt_fields:
            problems.append(f"TrtLlmArgs.{field}: no such field (lem's engine flow passes it)")
    return problems


def test_surface_names_its_source() -> None:
    source = SURFACE["source"]
    assert source["repository"] == "NVIDIA/TensorRT-LLM"
    assert "tag" in source and len(source["commit"]) == 40
    assert set(source["files"]) == set(surface_check.load()["source"]["files"])
    assert all(len(sha) == 40 for sha in source["files"].values())


def test_every_key_reaches_a_tensorrt_llm_argument() -> None:
    assert mapping_problems(SURFACE) == []
    # ... and every key of the table is one lem knows (and validate_config accepts).
    assert set(EVERY_KEY) == set(options.TENSORRT_OPTIONS)


def test_a_renamed_argument_fails_and_names_itself() -> None:
    renamed = copy.deepcopy(SURFACE)
    kv = renamed["classes"]["KvCacheConfig"]["fields"]
    kv["free_gpu_mem_fraction"] = kv.pop("free_gpu_memory_fraction")
    assert mapping_problems(renamed) == [
        "tensorrt.gpu_memory_utilization -> KvCacheConfig.free_gpu_memory_fraction: no such field"
    ]
    args = options.llm_args(config("org/model", tensorrt={"gpu_memory_utilization": 0.5}))
    problems = surface_check.check_kwargs(renamed, "TorchLlmArgs", args)
    assert any("KvCacheConfig.free_gpu_memory_fraction: no such field" in p for p in problems), problems


def test_every_argument_lem_passes_has_a_compatible_type() -> None:
    exp = config(
        "org/model",
        precision="bfloat16",
        revision="main",
        trust_remote_code=True,
        batching={"batch_size": 8},
        tensorrt={**EVERY_KEY, "extra_runtime_args": {"enable_autotuner": False}},
    )
    args = options.llm_args(exp)
    assert surface_check.check_kwargs(SURFACE, "TorchLlmArgs", args) == []
    # The nested tables became what TensorRT-LLM's classes take.
    assert args["kv_cache_config"] == {
        "free_gpu_memory_fraction": 0.85,
        "dtype": "fp8",
        "enable_block_reuse": False,
        "max_tokens": 65536,
        "tokens_per_block": 64,
    }
    assert args["speculative_config"]["decoding_type"] == "Draft_Target"
    assert args["max_seq_len"] == 2048 + 512


#: Every [tensorrt] key the engine flow (runtime = "tensorrt") passes on, with a value.
ENGINE_KEYS: dict[str, Any] = {
    **{k: v for k, v in EVERY_KEY.items() if k not in options.PYTORCH_ONLY},
    "runtime": "tensorrt",
    "strongly_typed": True,
    "extra_build_args": {"opt_num_tokens": 1024},
    "extra_runtime_args": {"normalize_log_probs": False},
    "quantization": {
        "method": "int4_awq",
        "calibration": {"dataset": "cnn_dailymail", "num_samples": 64, "max_length": 256},
    },
}


def test_every_argument_of_the_engine_flow_fits_trt_llm_args_and_build_config() -> None:
    exp = config("org/model", precision="float16", batching={"batch_size": 8}, tensorrt=ENGINE_KEYS)
    args = options.llm_args(exp)
    assert surface_check.check_kwargs(SURFACE, "TrtLlmArgs", {**args, "tokenizer": "org/model"}) == []
    assert args["quant_config"] == {"quant_algo": "W4A16_AWQ"}
    assert args["calib_config"] == {
        "calib_batch_size": 1,
        "calib_dataset": "cnn_dailymail",
        "calib_batches": 64,
        "calib_max_seq_length": 256,
    }
    build = options.build_config_args(exp)
    assert build["max_seq_len"] == 2048 + 512 and build["strongly_typed"] is True
    assert surface_check.check_kwargs(SURFACE, "BuildConfig", build) == []
    assert surface_check.check_call(SURFACE, "TrtLLM.__init__", [args["model"]], {}) == []
    assert surface_check.check_call(SURFACE, "TrtLLM.save", ["/engines/x"], {}) == []


def test_a_renamed_quantization_algorithm_fails_and_names_itself() -> None:
    renamed = copy.deepcopy(SURFACE)
    members = renamed["classes"]["QuantAlgo"]["members"]
    members["W4A16_AWQ_V2"] = members.pop("W4A16_AWQ")
    assert mapping_problems(renamed) == [
        "tensorrt.quantization.method = 'int4_awq' -> QuantAlgo.W4A16_AWQ: no such member"
    ]


def test_a_renamed_build_config_field_fails_and_names_itself() -> None:
    renamed = copy.deepcopy(SURFACE)
    bc = renamed["classes"]["BuildConfig"]["fields"]
    bc["max_sequence_len"] = bc.pop("max_seq_len")
    assert mapping_problems(renamed) == [
        "tensorrt.max_output_len -> BuildConfig.max_seq_len: no such field (runtime = 'tensorrt')"
    ]
    build = options.build_config_args(config("org/model", tensorrt={"runtime": "tensorrt", "max_output_len": 8}))
    assert surface_check.check_kwargs(renamed, "BuildConfig", build) == [
        "BuildConfig.max_seq_len: no such field in TensorRT-LLM"
    ]


def test_a_value_of_the_wrong_type_is_caught() -> None:
    from lem.configfile.loading import structure

    # lem config validate refuses 2.5 first (lem.options); the surface check would catch it behind validation too.
    doc = {"model": "org/model", "backend": "tensorrt"}
    exp, _ = structure({**doc, "tensorrt": {"capacity_scheduler_policy": "FASTEST", "max_batch_size": 2.5}})
    assert [p.path for p in plugin.validate_config(config=exp)] == ["tensorrt.max_batch_size"]
    args = options.llm_args(exp)
    problems = surface_check.check_kwargs(SURFACE, "TorchLlmArgs", args)
    assert any(p.startswith("TorchLlmArgs.max_batch_size: 2.5") for p in problems)
    assert any(p.startswith("TorchLlmArgs.scheduler_config:") for p in problems)


@pytest.mark.parametrize(
    "generation",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.1},
        {"do_sample": True, "top_k": 0, "min_output_tokens": 4},
        {"num_beams": 4, "length_penalty": 0.8, "early_stopping": True},
    ],
)
def test_sampling_params_fit_the_surface(generation: dict[str, Any]) -> None:
    tables: dict[str, Any] = {"generation": generation}
    if generation.get("num_beams", 1) > 1:
        tables["tensorrt"] = {"mode": "offline"}
    exp = config("org/model", **tables)
    kwargs = sampling.sampling_kwargs(exp.generation, exp)
    assert surface_check.check_kwargs(SURFACE, "SamplingParams", kwargs) == []


def test_the_calls_lem_makes_fit_the_signatures() -> None:
    sp = object()  # any SamplingParams: Optional[SamplingParams] is checked by name below
    params = {p["name"]: p for p in SURFACE["classes"]["LLM"]["methods"]["generate_async"]["params"]}
    assert [p["name"] for p in SURFACE["classes"]["LLM"]["methods"]["generate_async"]["params"][:2]] == [
        "inputs",
        "sampling_params",
    ]
    assert params["streaming"]["annotation"] == "bool"
    assert surface_check.check_call(SURFACE, "LLM.generate_async", [[1, 2, 3]], {"streaming": True}) == []
    assert surface_check.check_call(SURFACE, "LLM.generate", [[[1, 2], "text"]], {"use_tqdm": False}) == []
    assert "shutdown" in SURFACE["classes"]["LLM"]["methods"]
    del sp


def test_streaming_outputs_expose_new_tokens_as_lem_reads_them() -> None:
    completion = SURFACE["classes"]["CompletionOutput"]
    assert "token_ids" in completion["fields"]
    assert "token_ids_diff" in completion["properties"]


def test_constants_agree_with_the_source_defaults() -> None:
    base = surface_check.fields(SURFACE, "BaseLlmArgs")
    assert base["max_input_len"]["default"] == str(options.TRTLLM_DEFAULT_MAX_INPUT_LEN)
    # builder_opt_level is refused because BuildConfig has no such field (nor any "opt_level").
    assert not [f for f in surface_check.fields(SURFACE, "BuildConfig") if "opt" in f and "level" in f]
    assert set(options.REFUSED) == {"builder_opt_level"}
    # The engine flow's LLM saves what it built; lem loads the saved directory as the model.
    assert [p["name"] for p in SURFACE["classes"]["TrtLLM"]["methods"]["save"]["params"]] == ["engine_dir"]
    assert surface_check.fields(SURFACE, "TrtLlmArgs")["enable_build_cache"]["default"] == "False"
    assert set(options.QUANTIZATION) == {"none", "fp8", "int8_sq", "int8_weight_only", "int4_awq", "int4_gptq"}


def test_the_fake_is_checked_against_the_surface() -> None:
    import tensorrt_llm
    from tensorrt_llm.llmapi import KvCacheConfig
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

    assert tensorrt_llm.__file__.startswith(str(HERE / "fake"))
    assert set(TorchLlmArgs.model_fields) == set(surface_check.fields(SURFACE, "TorchLlmArgs"))
    with pytest.raises(TypeError, match=r"KvCacheConfig\.free_gpu_mem: no such field"):
        KvCacheConfig(free_gpu_mem=0.5)
    with pytest.raises(TypeError, match=r"SamplingParams\.top_k: 'a' does not fit"):
        tensorrt_llm.SamplingParams(top_k="a")


SOURCE_TREE = {
    "tensorrt_llm/llmapi/llm_args.py": """
class StrictBaseModel: ...
class KvCacheConfig(StrictBaseModel):
    free_gpu_memory_fraction: Optional[float] = Field(default=0.9, ge=0, le=1, description="x")
    _private: int = 0
    speculative_model: Optional[str] = Field(default=None, validation_alias=AliasChoices("speculative_model", "old"))
class CapacitySchedulerPolicy(StrEnum):
    MAX_UTILIZATION = "MAX_UTILIZATION"
class BaseLlmArgs(StrictBaseModel):
    model: Union[str, Path] = Field(description="required")
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
CudaGraphConfig = DecodeCudaGraphConfig
""",
}


def test_extractor_parses_source_without_importing_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rel, text in SOURCE_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    spec = importlib.util.spec_from_file_location("extract_api", EXTRACTOR)
    assert spec is not None and spec.loader is not None
    extract_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_api)
    monkeypatch.setattr(
        extract_api,
        "WANTED",
        {"tensorrt_llm/llmapi/llm_args.py": ("KvCacheConfig", "CapacitySchedulerPolicy", "BaseLlmArgs")},
    )
    surface = extract_api.extract(tmp_path, "v9.9.9", "a" * 40, {})
    kv = surface["classes"]["KvCacheConfig"]
    assert kv["fields"] == {
        "free_gpu_memory_fraction": {"annotation": "Optional[float]", "default": "0.9", "required": False},
        "speculative_model": {
            "annotation": "Optional[str]",
            "default": "None",
            "required": False,
            "aliases": ["old"],
        },
    }
    assert surface["classes"]["CapacitySchedulerPolicy"]["members"] == {"MAX_UTILIZATION": "MAX_UTILIZATION"}
    base = surface["classes"]["BaseLlmArgs"]["fields"]
    assert base["model"]["required"] and base["kv_cache_config"]["default"] == "factory:KvCacheConfig"
    assert surface["aliases"]["CudaGraphConfig"] == "DecodeCudaGraphConfig"
    assert surface["source"]["tag"] == "v9.9.9"
    # A class the backend relies on that the source no longer has stops the extraction, named.
    monkeypatch.setattr(extract_api, "WANTED", {"tensorrt_llm/llmapi/llm_args.py": ("KvCacheConfig", "TrtLlmArgs")})
    with pytest.raises(SystemExit, match="no class TrtLlmArgs"):
        extract_api.extract(tmp_path, "v9.9.9", "a" * 40, {})


def test_extractor_reads_a_1_2_tree_where_the_engine_flow_is_in_llmapi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Up to 1.2 the engine flow's LLM is llmapi/llm.py's _TrtLLM; _tensorrt_engine/llm.py does not exist.
    (tmp_path / "tensorrt_llm/llmapi").mkdir(parents=True)
    (tmp_path / "tensorrt_llm/llmapi/llm.py").write_text(
        "class _TrtLLM(BaseLLM):\n    def save(self, engine_dir: str) -> None: ...\n"
    )
    spec = importlib.util.spec_from_file_location("extract_api", EXTRACTOR)
    assert spec is not None and spec.loader is not None
    extract_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_api)
    monkeypatch.setattr(extract_api, "WANTED", {"tensorrt_llm/_tensorrt_engine/llm.py": ("LLM as TrtLLM",)})
    surface = extract_api.extract(tmp_path, "v1.2.0", "b" * 40, {})
    assert surface["classes"]["TrtLLM"]["source_name"] == "_TrtLLM"
    assert "save" in surface["classes"]["TrtLLM"]["methods"]
    assert list(surface["source"]["files"]) == ["tensorrt_llm/llmapi/llm.py"]


def test_extractor_command_line(tmp_path: Path) -> None:
    # The real script on a tree that lacks most of the files the backend relies on: it names them, writes nothing.
    for rel, text in SOURCE_TREE.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_text(text)
    out = tmp_path / "surface.json"
    proc = subprocess.run(
        [sys.executable, str(EXTRACTOR), str(tmp_path / "src"), "--tag", "t", "--commit", "c" * 40, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "no class BaseCudaGraphConfig" in proc.stderr
    assert not out.exists()
