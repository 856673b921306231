"""The ``[tensorrt]`` table and the experiment mapped onto TensorRT-LLM's own argument classes, in one table.

:data:`TENSORRT_OPTIONS` is the one visible table: every ``[tensorrt]`` key
that reaches TensorRT-LLM, with the class and field it becomes under the
default PyTorch runtime (``TorchLlmArgs`` for the ``LLM(...)`` keyword
arguments; ``KvCacheConfig``, ``CudaGraphConfig``, ``SchedulerConfig`` and
``DraftTargetDecodingConfig`` for the nested configs :data:`NESTED` names).
:data:`ENGINE_OPTIONS` says where a key goes instead under
``runtime = "tensorrt"``, the TensorRT engine flow (``TrtLlmArgs`` and the
``BuildConfig`` an engine is built with); :data:`PYTORCH_ONLY` lists the keys
that runtime does not take. :data:`CORE_OPTIONS` adds what comes from the
core config, :data:`LEM_OPTIONS` the keys lem handles itself and
:data:`REFUSED` the keys TensorRT-LLM has no argument for. :func:`llm_args`
and :func:`build_config_args` build the arguments as plain data;
:mod:`lem_backend_tensorrt.engine` checks them against the installed library
and turns the nested tables into TensorRT-LLM's classes;
:mod:`lem_backend_tensorrt.checks` finds what is wrong with a ``[tensorrt]``
table before anything loads. The ``[generation]`` parameters are in
:mod:`lem_backend_tensorrt.sampling`.

Nothing here imports TensorRT-LLM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lem import architectures
from lem.config import ExperimentConfig
from lem.options import Option, Table

MODES = ("stream", "offline")
RUNTIMES = ("pytorch", "tensorrt")
#: ``quantization.method`` -> the checkpoint's ModelOpt ``quant_algo`` (``hf_quant_config.json``).
QUANTIZATION: dict[str, str | None] = {
    "none": None,
    "fp8": "FP8",
    "int8_sq": "W8A8_SQ_PER_CHANNEL",
    "int8_weight_only": "W8A16",
    "int4_awq": "W4A16_AWQ",
    "int4_gptq": "W4A16_GPTQ",
}
_COUNT = {"ge": 1}


def _torch(key: str, tp: Any, doc: str, argument: str | None = None, cls: str = "TorchLlmArgs", **b: Any) -> Option:
    return Option(key, tp, doc, call=cls, argument=argument, **b)


#: ``[tensorrt.quantization.calibration]`` -> ``CalibConfig`` (see :data:`ENGINE_QUANTIZATION`).
CALIBRATION = Table(
    "tensorrt.quantization.calibration",
    (
        Option("dataset", str, "calibration dataset name", call="CalibConfig", argument="calib_dataset"),
        Option("split", str, "not taken by TensorRT-LLM's CalibConfig (refused with runtime = 'tensorrt')"),
        Option("num_samples", int, "calibration samples", call="CalibConfig", argument="calib_batches", **_COUNT),
        Option(
            "max_length",
            int,
            "calibration sequence length",
            call="CalibConfig",
            argument="calib_max_seq_length",
            **_COUNT,
        ),
    ),
)
#: ``[tensorrt.quantization]``: the checkpoint's (or, in the engine flow, the build's) quantization.
QUANTIZATION_TABLE = Table(
    "tensorrt.quantization",
    (
        Option(
            "method",
            str,
            "the ModelOpt quant_algo",
            default="none",
            call="QuantConfig",
            argument="quant_algo",
            choices=tuple(QUANTIZATION),
        ),
        Option(
            "calibration", Mapping[str, Any], "calibration while building (runtime = 'tensorrt')", table=CALIBRATION
        ),
    ),
)

#: The one visible table: ``[tensorrt]`` key -> TensorRT-LLM class and field under the default PyTorch runtime
#: (``call=None``: lem handles it). :data:`ENGINE_OPTIONS` says where a key goes instead in the engine flow.
TABLE = Table(
    "tensorrt",
    (
        _torch("max_batch_size", int, "requests per step", **_COUNT),
        _torch("max_input_len", int, "longest prompt", **_COUNT),
        _torch("max_output_len", int, "longest output (max_seq_len = max_input_len + this)", "max_seq_len", **_COUNT),
        _torch("max_num_tokens", int, "tokens per step", **_COUNT),
        _torch("enable_chunked_context", bool, "chunked prefill", "enable_chunked_prefill"),
        _torch("tp_size", int, "default: sharding.tensor_parallel_size", "tensor_parallel_size", **_COUNT),
        _torch("pp_size", int, "default: sharding.pipeline_parallel_size", "pipeline_parallel_size", **_COUNT),
        _torch("attention_backend", str, "attention kernels", "attn_backend"),
        _torch("disable_overlap_scheduler", bool, "no CPU/GPU overlap between steps"),
        _torch("stream_interval", int, "steps between streamed outputs", **_COUNT),
        _torch(
            "gpu_memory_utilization",
            float,
            "share of free GPU memory for the KV cache",
            "free_gpu_memory_fraction",
            "KvCacheConfig",
            gt=0,
            le=1,
        ),
        _torch("kv_cache_dtype", str, "KV-cache dtype", "dtype", "KvCacheConfig"),
        _torch("enable_block_reuse", bool, "prefix caching", cls="KvCacheConfig"),
        _torch("kv_cache_max_tokens", int, "KV-cache size in tokens", "max_tokens", "KvCacheConfig", **_COUNT),
        _torch("tokens_per_block", int, "tokens per KV-cache block", cls="KvCacheConfig", **_COUNT),
        _torch("cuda_graph_batch_sizes", list[int], "batch sizes captured", "batch_sizes", "CudaGraphConfig", ge=1),
        _torch("cuda_graph_max_batch_size", int, "largest batch captured", "max_batch_size", "CudaGraphConfig", ge=0),
        _torch("cuda_graph_padding", bool, "pad batches to a captured size", "enable_padding", "CudaGraphConfig"),
        _torch("capacity_scheduler_policy", str, "which requests get KV cache", cls="SchedulerConfig"),
        _torch("context_chunking_policy", str, "how prefills are chunked", cls="SchedulerConfig"),
        # speculative_model_dir: the 1.x name, still accepted (an alias) where the field is now speculative_model.
        _torch(
            "draft_model",
            str,
            "draft model (with num_draft_tokens)",
            "speculative_model_dir",
            "DraftTargetDecodingConfig",
        ),
        _torch(
            "num_draft_tokens", int, "tokens drafted per step", "max_draft_len", "DraftTargetDecodingConfig", **_COUNT
        ),
        _torch("strongly_typed", bool, "runtime = 'tensorrt': build a strongly typed engine", cls="BuildConfig"),
        _torch(
            "engine_path",
            str,
            "runtime = 'tensorrt': a saved engine directory, loaded as the model",
            "model",
            "TrtLlmArgs",
        ),
        Option(
            "mode",
            str,
            "stream: generate_async(streaming=True), per-token events; offline: LLM.generate",
            default="stream",
            choices=MODES,
        ),
        Option(
            "runtime",
            str,
            "pytorch: tensorrt_llm.LLM; tensorrt: a built engine, cached (engine_path implies it)",
            default="pytorch",
            choices=RUNTIMES,
        ),
        Option(
            "engine_cache_dir",
            str,
            "where built engines are cached (default $LEM_CACHE_DIR/tensorrt, "
            "$XDG_CACHE_HOME/lem/tensorrt or ~/.cache/lem/tensorrt)",
        ),
        Option("force_rebuild", bool, "build the engine again even when the cache has it", default=False),
        Option("cuda_graphs", bool, "false: cuda_graph_config = None (no CUDA graphs)", default=True),
        Option(
            "kv_cache_type",
            str,
            "the PyTorch runtime always pages the KV cache, and lem builds paged engines",
            default="paged",
            choices=("paged",),
        ),
        Option("quantization", Mapping[str, Any], "the [tensorrt.quantization] table", table=QUANTIZATION_TABLE),
        Option("extra_build_args", Mapping[str, Any], "table passed to BuildConfig(...) unchanged, last"),
        Option("extra_runtime_args", Mapping[str, Any], "table passed to LLM(...) unchanged (overrides all above)"),
    ),
    doc="TensorRT-LLM's LLM API (PyTorch runtime or a built TensorRT engine)",
)
TABLES = (TABLE,)

_CLASSES = ("TorchLlmArgs", "KvCacheConfig", "CudaGraphConfig", "SchedulerConfig", "DraftTargetDecodingConfig")
#: ``[tensorrt]`` key -> (TensorRT-LLM class, field) under the PyTorch runtime; a view of :data:`TABLE`.
#: Conversions are in :func:`llm_args`.
TENSORRT_OPTIONS: dict[str, tuple[str, str]] = {
    o.key: (str(o.call), o.names[0]) for o in TABLE.options if o.call in _CLASSES
}

#: Nested TensorRT-LLM config class -> the ``LLM(...)`` argument it is passed as.
NESTED: dict[str, str] = {
    "KvCacheConfig": "kv_cache_config",
    "CudaGraphConfig": "cuda_graph_config",
    "SchedulerConfig": "scheduler_config",
    "DraftTargetDecodingConfig": "speculative_config",
}

#: Core config -> ``TorchLlmArgs`` field.
CORE_OPTIONS: dict[str, str] = {
    "model": "model",
    "precision": "dtype",
    "revision": "revision",
    "trust_remote_code": "trust_remote_code",
    "load_format": "load_format",  # "random" -> "dummy"
    "sharding.tensor_parallel_size": "tensor_parallel_size",
    "sharding.pipeline_parallel_size": "pipeline_parallel_size",
    "batching.batch_size": "max_batch_size",
    "generation.num_beams": "max_beam_width",
}

#: Under ``runtime = "tensorrt"`` (the TensorRT engine flow): ``[tensorrt]`` key -> (class, field) where it
#: differs from :data:`TENSORRT_OPTIONS`. The build-time limits go to the ``BuildConfig`` the engine is built with;
#: the other keys of :data:`TENSORRT_OPTIONS` not in :data:`PYTORCH_ONLY` go to ``TrtLlmArgs`` unchanged (it
#: inherits them from ``BaseLlmArgs``).
ENGINE_OPTIONS: dict[str, tuple[str, str]] = {
    "max_batch_size": ("BuildConfig", "max_batch_size"),
    "max_input_len": ("BuildConfig", "max_input_len"),
    "max_output_len": ("BuildConfig", "max_seq_len"),  # max_input_len + max_output_len
    "max_num_tokens": ("BuildConfig", "max_num_tokens"),
    "strongly_typed": ("BuildConfig", "strongly_typed"),
    "engine_path": ("TrtLlmArgs", "model"),  # a saved engine directory is what TensorRT-LLM loads as the model
}
#: Under ``runtime = "tensorrt"``, TensorRT-LLM quantizes while it builds: ``[tensorrt.quantization]`` ->
#: (class, field) of ``TrtLlmArgs.quant_config`` / ``calib_config``. The method's algorithm is :data:`QUANTIZATION`'s.
ENGINE_QUANTIZATION: dict[str, tuple[str, str]] = {
    "method": ("QuantConfig", "quant_algo"),
    "calibration.dataset": ("CalibConfig", "calib_dataset"),
    "calibration.num_samples": ("CalibConfig", "calib_batches"),  # batches of calib_batch_size = 1
    "calibration.max_length": ("CalibConfig", "calib_max_seq_length"),
}
#: Those classes -> the ``TrtLlmArgs`` argument they are passed as.
ENGINE_NESTED: dict[str, str] = {"QuantConfig": "quant_config", "CalibConfig": "calib_config"}

#: Core config -> ``BuildConfig`` field, under ``runtime = "tensorrt"``.
ENGINE_CORE_OPTIONS: dict[str, str] = {
    "batching.batch_size": "max_batch_size",
    "generation.num_beams": "max_beam_width",
}
#: Keys only the PyTorch runtime has (``TorchLlmArgs`` fields, or what TrtLlmArgs refuses), with why.
PYTORCH_ONLY: dict[str, str] = {
    "attention_backend": "TorchLlmArgs.attn_backend",
    "disable_overlap_scheduler": "TorchLlmArgs.disable_overlap_scheduler",
    "stream_interval": "TorchLlmArgs.stream_interval",
    "cuda_graph_batch_sizes": "TorchLlmArgs.cuda_graph_config",
    "cuda_graph_max_batch_size": "TorchLlmArgs.cuda_graph_config",
    "cuda_graph_padding": "TorchLlmArgs.cuda_graph_config",
    "cuda_graphs": "TorchLlmArgs.cuda_graph_config",
    # TrtLlmArgs.validate_kv_cache_dtype asserts KvCacheConfig.dtype == "auto".
    "kv_cache_dtype": "KvCacheConfig.dtype (TrtLlmArgs accepts only 'auto')",
    "draft_model": "DraftTargetDecodingConfig (an engine is built for one speculative mode)",
    "num_draft_tokens": "DraftTargetDecodingConfig (an engine is built for one speculative mode)",
}
#: Keys that exist only in the engine flow: an error under the PyTorch runtime.
ENGINE_ONLY = ("engine_path", "engine_cache_dir", "force_rebuild", "strongly_typed", "extra_build_args")

#: Keys TensorRT-LLM has no argument for: refused, with why.
REFUSED: dict[str, str] = {
    "builder_opt_level": (
        "TensorRT's builder optimization level is not a field of TensorRT-LLM's BuildConfig (builder.py) "
        "in the source lem is checked against"
    ),
}

#: The core ``[quantization] method`` -> ours.
CORE_QUANTIZATION: dict[str, str | None] = {"none": None, "fp8": "fp8", "awq": "int4_awq", "gptq": "int4_gptq"}

#: ``BaseLlmArgs.max_input_len``'s default: ``max_output_len`` alone extends it to ``max_seq_len``.
TRTLLM_DEFAULT_MAX_INPUT_LEN = 1024

#: Minimum compute capability of the backend, and of fp8 (weights or KV cache).
MIN_CAPABILITY = (8, 0)
MIN_FP8_CAPABILITY = (9, 0)


def quantization_method(config: ExperimentConfig) -> str | None:
    """Our quantization method name (``[tensorrt.quantization] method``, else the core's), ``None`` if none."""
    table = config.options_for("tensorrt").get("quantization") or {}
    method = table.get("method") if isinstance(table, Mapping) else None
    if method is None:
        method = CORE_QUANTIZATION.get(config.quantization.method)
    return None if method in (None, "none") else str(method)


def uses_fp8(config: ExperimentConfig) -> bool:
    """Whether the experiment needs fp8 hardware (fp8 weights or an fp8 KV cache)."""
    return quantization_method(config) == "fp8" or config.options_for("tensorrt").get("kv_cache_dtype") == "fp8"


def runtime(config: ExperimentConfig) -> str:
    """``[tensorrt] runtime``: ``"tensorrt"`` when set so or when ``engine_path`` is given, else ``"pytorch"``."""
    opts = config.options_for("tensorrt")
    return str(opts.get("runtime") or ("tensorrt" if "engine_path" in opts else "pytorch"))


def quantization_args(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """``quant_config`` and ``calib_config`` for the engine flow as plain data (empty without quantization)."""
    method = quantization_method(config)
    if method is None:
        return {}
    out: dict[str, dict[str, Any]] = {"quant_config": {"quant_algo": QUANTIZATION[method]}}
    table = config.options_for("tensorrt").get("quantization") or {}
    calibration = table.get("calibration") if isinstance(table, Mapping) else None
    if isinstance(calibration, Mapping):
        calib: dict[str, Any] = {"calib_batch_size": 1}
        for key, (_, field) in ENGINE_QUANTIZATION.items():
            name = key.removeprefix("calibration.")
            if key.startswith("calibration.") and name in calibration:
                calib[field] = calibration[name]
        out["calib_config"] = calib
    return out


def model_path(config: ExperimentConfig) -> tuple[str, bool]:
    """The model TensorRT-LLM loads, and whether it gets random weights (``random:<name>``: ``load_format="dummy"``)."""
    return architectures.resolve(config.model, config.load_format)


def llm_args(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for ``tensorrt_llm.LLM`` as plain data; nested configs are dicts keyed by :data:`NESTED`.

    Does not import TensorRT-LLM.
    """
    opts = config.options_for("tensorrt")
    engine_flow = runtime(config) == "tensorrt"
    model, random_weights = model_path(config)
    args: dict[str, Any] = {
        "model": model,
        "dtype": config.precision,
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "tensor_parallel_size": config.sharding.tensor_parallel_size,
        "pipeline_parallel_size": config.sharding.pipeline_parallel_size,
    }
    if random_weights:
        args["load_format"] = "dummy"
    if config.batching.batch_size != 1 and not engine_flow:
        args["max_batch_size"] = config.batching.batch_size
    if config.generation.num_beams > 1:
        args["max_beam_width"] = config.generation.num_beams
    nested: dict[str, dict[str, Any]] = {}
    for key, (cls, field) in TENSORRT_OPTIONS.items():
        if key not in opts or (engine_flow and (key in ENGINE_OPTIONS or key in PYTORCH_ONLY)):
            continue
        value = opts[key]
        if key == "max_output_len":
            value = int(opts.get("max_input_len", TRTLLM_DEFAULT_MAX_INPUT_LEN)) + int(value)
        if cls == "TorchLlmArgs":
            args[field] = value
        else:
            nested.setdefault(NESTED[cls], {})[field] = value
    if "speculative_config" in nested:
        nested["speculative_config"]["decoding_type"] = "Draft_Target"
    args.update(nested)
    if opts.get("cuda_graphs") is False and not engine_flow:
        args["cuda_graph_config"] = None
    if engine_flow and "engine_path" in opts:
        args["model"] = os.path.expanduser(str(opts["engine_path"]))
    elif engine_flow:
        args.update(quantization_args(config))
    args.update(opts.get("extra_runtime_args") or {})
    return {k: v for k, v in args.items() if v is not None or k == "cuda_graph_config"}


def build_config_args(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for the ``BuildConfig`` a TensorRT engine is built with (``runtime = "tensorrt"``).

    Does not import TensorRT-LLM.
    """
    opts = config.options_for("tensorrt")
    args: dict[str, Any] = {}
    if config.batching.batch_size != 1:
        args["max_batch_size"] = config.batching.batch_size
    if config.generation.num_beams > 1:
        args["max_beam_width"] = config.generation.num_beams
    for key, (cls, field) in ENGINE_OPTIONS.items():
        if cls != "BuildConfig" or key not in opts:
            continue
        value = opts[key]
        if key == "max_output_len":
            value = int(opts.get("max_input_len", TRTLLM_DEFAULT_MAX_INPUT_LEN)) + int(value)
        args[field] = value
    args.update(opts.get("extra_build_args") or {})
    return args
