"""The ``[vllm]`` table and the experiment mapped onto vLLM's ``EngineArgs``, in one visible table.

:data:`ENGINE_OPTIONS` lists every ``[vllm]`` key that is passed to vLLM's
engine unchanged (only renamed where vLLM's name is clumsier);
:func:`engine_args` adds what comes from the core config (precision, seed,
sharding, quantization, random weights, LoRA, speculative decoding) and the
``extra`` escape hatch, then checks every name against the ``EngineArgs``
dataclass of the installed vLLM so an option it no longer accepts fails with
a clear message instead of a ``TypeError`` deep inside vLLM.

Nothing here imports vLLM at module import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lem import architectures
from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.options import Option, Table, accepted_arguments, check, did_you_mean, unapplied
from lem.types import Problem, error, warning

#: Core config -> ``EngineArgs`` field (see :func:`engine_args` for the conversions).
CORE_OPTIONS: dict[str, str] = {
    "model": "model",
    "precision": "dtype",
    "seed": "seed",
    "revision": "revision",
    "trust_remote_code": "trust_remote_code",
    "load_format": "load_format",
    "adapter": "enable_lora",
    "sharding.tensor_parallel_size": "tensor_parallel_size",
    "sharding.pipeline_parallel_size": "pipeline_parallel_size",
    "quantization.method": "quantization",
    "batching.batch_size": "max_num_seqs",
}

#: ``quantization.method`` -> vLLM ``quantization`` (``None``: not quantized).
QUANTIZATION: dict[str, str | None] = {
    "none": None,
    "gptq": "gptq",
    "awq": "awq",
    "fp8": "fp8",
    "bnb-4bit": "bitsandbytes",
    # vLLM quantizes in flight to 4 bits only; 8-bit needs a pre-quantized checkpoint (validate_config warns).
    "bnb-8bit": "bitsandbytes",
}

#: ``[vllm.speculative].method`` -> vLLM ``speculative_config["method"]`` (``None``: vLLM infers it from ``model``).
SPECULATIVE_METHODS: dict[str, str | None] = {
    "ngram": "ngram",
    "draft": None,
    "eagle": "eagle",
    "eagle3": "eagle3",
    "mtp": "mtp",
}
MODES = ("stream", "offline")
_ENGINE = "EngineArgs"
_COUNT = {"ge": 1}


def _engine(key: str, tp: Any, doc: str, argument: str | None = None, **bounds: Any) -> Option:
    return Option(key, tp, doc, call=_ENGINE, argument=argument, **bounds)


#: ``[vllm.speculative]`` -> vLLM's ``speculative_config`` dict.
SPECULATIVE = Table(
    "vllm.speculative",
    (
        Option("method", str, "how drafts are made (draft: a draft model)", choices=tuple(SPECULATIVE_METHODS)),
        Option("num_speculative_tokens", int, "tokens drafted per step", call="speculative_config", **_COUNT),
        Option("model", str, "the draft (or EAGLE/MTP head) model", call="speculative_config"),
        Option("prompt_lookup_min", int, "ngram: shortest match", call="speculative_config", **_COUNT),
        Option("prompt_lookup_max", int, "ngram: longest match", call="speculative_config", **_COUNT),
        Option(
            "draft_tensor_parallel_size", int, "tensor parallel size of the draft", call="speculative_config", **_COUNT
        ),
    ),
)

#: The one visible table: ``[vllm]`` key -> ``EngineArgs`` field (``call=None``: lem handles it).
TABLE = Table(
    "vllm",
    (
        _engine("max_num_seqs", int, "sequences per engine step", **_COUNT),
        _engine("max_num_batched_tokens", int, "tokens per engine step", **_COUNT),
        _engine("gpu_memory_utilization", float, "share of GPU memory for weights and KV cache", gt=0, le=1),
        _engine("swap_space", float, "CPU swap space per GPU (GiB)", ge=0),
        _engine("cpu_offload_gb", float, "weights offloaded to the CPU (GiB)", ge=0),
        _engine("enable_prefix_caching", bool, "reuse the KV cache of shared prefixes"),
        _engine("enable_chunked_prefill", bool, "split long prefills over steps"),
        _engine("kv_cache_dtype", str, "KV-cache dtype (auto: the model's)"),
        _engine("block_size", int, "tokens per KV-cache block", **_COUNT),
        _engine("max_model_len", int, "context length", **_COUNT),
        _engine("enforce_eager", bool, "no CUDA graphs"),
        _engine("distributed_backend", str, "mp or ray", argument="distributed_executor_backend"),
        _engine("attention_backend", str, "vLLM's attention backend name"),
        _engine("load_format", str, "checkpoint format (auto, safetensors, dummy...)"),
        _engine("max_lora_rank", int, "largest LoRA rank served", **_COUNT),
        _engine("max_loras", int, "LoRA adapters in one batch", **_COUNT),
        _engine("tokenizer", str, "tokenizer path or id (default: model)"),
        Option(
            "mode",
            str,
            "stream: AsyncLLM, per-token events; offline: LLM.generate, per-request",
            default="stream",
            choices=MODES,
        ),
        Option(
            "speculative",
            Mapping[str, Any],
            "speculative decoding: the [vllm.speculative] table",
            call=_ENGINE,
            argument="speculative_config",
            table=SPECULATIVE,
        ),
        Option(
            "lora_adapters",
            list[str | dict[str, str]],
            "adapter paths (or {name, path} tables); requests use them round-robin",
        ),
        Option("n", int, "parallel samples per request", call="SamplingParams", **_COUNT),
        Option("best_of", int, "where the installed vLLM still has it", call="SamplingParams", **_COUNT),
        Option("extra", Mapping[str, Any], "table passed to EngineArgs unchanged (overrides everything above)"),
    ),
    doc="vLLM's engine (EngineArgs) and lem's stream/offline mode",
    calls={_ENGINE: "vllm.engine.arg_utils:EngineArgs", "SamplingParams": "vllm:SamplingParams"},
)
TABLES = (TABLE,)
#: ``[vllm]`` key -> ``EngineArgs`` field, passed through as is.
ENGINE_OPTIONS: dict[str, str] = {
    o.key: o.names[0] for o in TABLE.options if o.call == _ENGINE and o.key != "speculative"
}
#: ``[generation]`` keys vLLM does not apply -> what to use instead.
NOT_APPLIED = {"no_repeat_ngram_size": "use generation.repetition_penalty"}


def check_options(config: ExperimentConfig) -> list[Problem]:
    """Problems with the ``[vllm]`` table and with core options vLLM serves differently."""
    opts = config.options_for("vllm")
    problems = check(TABLE, opts)
    mode = opts.get("mode", "stream")
    if mode == "offline" and config.traffic.mode != "offline":
        problems.append(
            error(
                "vllm.mode",
                f"'offline' (LLM.generate) submits every request at once and cannot follow "
                f"traffic.mode = '{config.traffic.mode}'",
                "use vllm.mode = 'stream', or traffic.mode = 'offline'",
                value=mode,
            )
        )
    spec = opts.get("speculative")
    if isinstance(spec, Mapping):
        method = spec.get("method")
        if method is None:
            problems.append(
                error("vllm.speculative.method", "must be one of " + ", ".join(SPECULATIVE_METHODS), value=method)
            )
        elif method in SPECULATIVE_METHODS and method != "ngram" and not spec.get("model"):
            problems.append(error("vllm.speculative.model", f"is required for method '{method}'"))
    g = config.generation
    if config.batching.batch_size != 1:
        used = "is ignored: vllm.max_num_seqs is set" if "max_num_seqs" in opts else "becomes vllm.max_num_seqs"
        problems.append(
            warning(
                "batching.batch_size",
                f"{used}; vLLM batches continuously, so this only caps the sequences per step",
                "set vllm.max_num_seqs directly",
                value=config.batching.batch_size,
            )
        )
    if config.quantization.method == "bnb-8bit":
        problems.append(
            warning(
                "quantization.method",
                "vLLM quantizes bitsandbytes in flight to 4 bits only; 8-bit needs a pre-quantized checkpoint",
                "use 'bnb-4bit', or a bitsandbytes 8-bit checkpoint",
                value="bnb-8bit",
            )
        )
    problems += unapplied(g, NOT_APPLIED, "vLLM")
    if g.num_beams > 1 and mode != "offline":
        problems.append(
            error(
                "generation.num_beams",
                "beam search has no token stream in vLLM; it runs only with vllm.mode = 'offline'",
                "set vllm.mode = 'offline', or num_beams = 1",
                value=g.num_beams,
            )
        )
    return problems


def model_path(config: ExperimentConfig) -> tuple[str, bool]:
    """The model vLLM loads, and whether it gets random weights.

    ``random:<name>`` models are materialized to a directory (config and
    tokenizer, no weights) and loaded with ``load_format="dummy"``.
    """
    return architectures.resolve(config.model, config.load_format)


def lora_adapters(config: ExperimentConfig) -> list[tuple[str, str]]:
    """(name, path) of every LoRA adapter: the top-level ``adapter`` first, then ``[vllm].lora_adapters``."""
    found: list[tuple[str, str]] = []
    if config.adapter:
        found.append((Path(config.adapter).name or "adapter", config.adapter))
    for i, item in enumerate(config.options_for("vllm").get("lora_adapters") or []):
        if isinstance(item, Mapping):
            found.append((str(item.get("name", f"adapter{i}")), str(item["path"])))
        else:
            found.append((Path(str(item)).name or f"adapter{i}", str(item)))
    return found


def _speculative_config(spec: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in spec.items() if k != "method"}
    method = SPECULATIVE_METHODS.get(str(spec.get("method")))
    if method is not None:
        out["method"] = method
    return out


def engine_args(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for ``EngineArgs`` / ``AsyncEngineArgs`` / ``LLM`` built from the experiment.

    Does not import vLLM; :func:`check_against_vllm` checks the names.
    """
    opts = config.options_for("vllm")
    model, random_weights = model_path(config)
    args: dict[str, Any] = {
        "model": model,
        "dtype": config.precision,
        "seed": config.seed,
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "tensor_parallel_size": config.sharding.tensor_parallel_size,
        "pipeline_parallel_size": config.sharding.pipeline_parallel_size,
    }
    quant = QUANTIZATION[config.quantization.method]
    if quant is not None:
        args["quantization"] = quant
    if random_weights:
        args["load_format"] = "dummy"
    if config.batching.batch_size != 1:
        args["max_num_seqs"] = config.batching.batch_size
    for key, field in ENGINE_OPTIONS.items():
        if key in opts:
            args[field] = opts[key]
    adapters = lora_adapters(config)
    if adapters:
        args["enable_lora"] = True
        args.setdefault("max_loras", len(adapters))
    if opts.get("speculative"):
        args["speculative_config"] = _speculative_config(opts["speculative"])
    args.update(opts.get("extra") or {})
    return {k: v for k, v in args.items() if v is not None}


def check_against_vllm(args: Mapping[str, Any]) -> None:
    """Raise :class:`BackendError` for an argument the installed vLLM's ``EngineArgs`` does not have."""
    import vllm
    from vllm.engine.arg_utils import EngineArgs

    fields = accepted_arguments(EngineArgs)
    ours = {field: key for key, field in ENGINE_OPTIONS.items()}
    ours.update({field: key for key, field in CORE_OPTIONS.items()})
    for name in args:
        if name not in fields:
            where = f"vllm.{ours[name]}" if ours.get(name) in ENGINE_OPTIONS else ours.get(name, f"vllm.extra.{name}")
            raise BackendError(
                f"{where}: vLLM {vllm.__version__} has no engine argument '{name}' "
                f"({did_you_mean(name, fields)}); remove the option or install a vLLM that accepts it"
            )


#: What the running engine resolved (``setup.json`` ``info.effective_config``) -> where vLLM keeps it on its
#: ``VllmConfig``. Read after start-up, when the engine core has reported its KV-cache size back.
EFFECTIVE_CONFIG: dict[str, str] = {
    "max_num_seqs": "scheduler_config.max_num_seqs",
    "max_num_batched_tokens": "scheduler_config.max_num_batched_tokens",
    "enable_chunked_prefill": "scheduler_config.enable_chunked_prefill",
    "enable_prefix_caching": "cache_config.enable_prefix_caching",
    "block_size": "cache_config.block_size",
    "kv_cache_dtype": "cache_config.cache_dtype",
    "kv_cache_blocks": "cache_config.num_gpu_blocks",
    "kv_cache_tokens": "cache_config.kv_cache_size_tokens",
    "kv_cache_max_concurrency": "cache_config.kv_cache_max_concurrency",
    "kv_cache_memory_bytes": "cache_config.kv_cache_memory_bytes",
    "gpu_memory_utilization": "cache_config.gpu_memory_utilization",
    "max_model_len": "model_config.max_model_len",
    "dtype": "model_config.dtype",
    "quantization": "model_config.quantization",
    "enforce_eager": "model_config.enforce_eager",
    "tensor_parallel_size": "parallel_config.tensor_parallel_size",
    "pipeline_parallel_size": "parallel_config.pipeline_parallel_size",
    "distributed_backend": "parallel_config.distributed_executor_backend",
    "speculative_method": "speculative_config.method",
    "num_speculative_tokens": "speculative_config.num_speculative_tokens",
}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value).removeprefix("torch.")


def effective_config(vllm_config: Any) -> dict[str, Any]:
    """The engine's resolved settings by :data:`EFFECTIVE_CONFIG` (``None`` where this vLLM does not have one)."""
    out: dict[str, Any] = {}
    for key, path in EFFECTIVE_CONFIG.items():
        value: Any = vllm_config
        for attr in path.split("."):
            value = getattr(value, attr, None)
        out[key] = _plain(value)
    if out["kv_cache_dtype"] == "auto":
        out["kv_cache_dtype"] = out["dtype"]  # vLLM's "auto": the KV cache is stored in the model's dtype
    if out["kv_cache_tokens"] is None and out["kv_cache_blocks"] is not None and out["block_size"] is not None:
        out["kv_cache_tokens"] = out["kv_cache_blocks"] * out["block_size"]
    # On the CPU the KV cache's size is set by this variable (GiB), not by gpu_memory_utilization.
    out["cpu_kvcache_space_gib"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    return out
