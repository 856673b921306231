"""``load_model``: a Transformers model from a checkpoint, a local path or a random-weight architecture.

:func:`from_pretrained_kwargs` is the one table from our config to
``AutoModelForCausalLM.from_pretrained``; random-weight models get the same
dtype and attention implementation through ``from_config``, built directly on
the target device so an 8B model takes about a second on a GPU.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable
from typing import Any

import attrs
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig

from lem import architectures
from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.types import LoadedModel
from lem_backend_pytorch import bandwidth
from lem_backend_pytorch.continuous import engine as continuous
from lem_backend_pytorch.model import TorchModel, transformers_major, version
from lem_backend_pytorch.options import PytorchOptions, max_memory_for_accelerate, resolve
from lem_backend_pytorch.sharded import random_sharded
from lem_backend_pytorch.streaming import compile_warmup
from lem_backend_pytorch.tp import leader as tp
from lem_backend_pytorch.tp.shard import distributed_config, random_model

DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
#: device_map values that ask accelerate for a plan (anything else names one device).
PLANNED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
PRE_QUANTIZED = {"gptq": ("gptq",), "awq": ("awq",), "fp8": ("fp8", "fbgemm_fp8", "compressed-tensors")}


def target_device(options: PytorchOptions) -> str:
    """``cuda`` or ``cpu`` for ``[pytorch] device`` (``auto``: the GPU when there is one)."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise BackendError("pytorch.device = 'cuda' but torch sees no GPU (hint: use device = 'auto' or 'cpu')")
    if options.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return options.device


def quantization_config(config: ExperimentConfig, dtype: Any) -> Any:
    """``from_pretrained(quantization_config=)`` for ``[quantization]``.

    ``None`` for no quantization and for pre-quantized checkpoints (GPTQ, AWQ, FP8), which carry their own.
    """
    q = config.quantization
    if q.method not in ("bnb-4bit", "bnb-8bit"):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BackendError(
            f"quantization.method = '{q.method}' needs the bitsandbytes package (hint: pip install bitsandbytes)"
        )
    if q.method == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def from_pretrained_kwargs(config: ExperimentConfig, options: PytorchOptions, device: str) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``: every model option we accept, in one table."""
    dtype = getattr(torch, DTYPES[config.precision])
    tp_size = config.sharding.tensor_parallel_size
    placement = options.device_map if options.device_map is not None else device
    kwargs: dict[str, Any] = {
        # our key                          -> from_pretrained keyword
        "dtype": dtype,  # precision
        "attn_implementation": options.attn_implementation,  # pytorch.attn_implementation
        "device_map": None if tp_size > 1 else placement,  # pytorch.device_map / device
        "distributed_config": _tp_plan(tp_size),  # sharding.tensor_parallel_size (see tp/shard.py)
        "max_memory": max_memory_for_accelerate(options.max_memory),  # pytorch.max_memory
        "trust_remote_code": config.trust_remote_code,  # trust_remote_code
        "revision": config.revision,  # revision
        "quantization_config": quantization_config(config, dtype),  # [quantization] bnb-*
    }
    # transformers 5 removed low_cpu_mem_usage (loading is always low-memory); passing it would be a no-op.
    if transformers_major() < 5:
        kwargs["low_cpu_mem_usage"] = options.low_cpu_mem_usage
    return {k: v for k, v in kwargs.items() if v is not None}


def _tp_plan(size: int) -> Any:
    if size == 1:
        return None
    return distributed_config(size)


def _source(model: str, load_format: str) -> tuple[str, bool]:
    """(path or id to read config and tokenizer from, build with random weights?)."""
    return architectures.resolve(model, load_format)


def _random_model(path: str, kwargs: dict[str, Any], config: ExperimentConfig) -> Any:
    if "quantization_config" in kwargs or config.quantization.method != "none":
        raise BackendError(
            f"quantization.method = '{config.quantization.method}' needs real weights; "
            "random-weight models are built unquantized (hint: set quantization.method = 'none')"
        )
    hf_config = AutoConfig.from_pretrained(
        path, revision=kwargs.get("revision"), trust_remote_code=config.trust_remote_code
    )
    build = {
        "dtype": kwargs["dtype"],
        "attn_implementation": kwargs["attn_implementation"],
        "trust_remote_code": config.trust_remote_code,
    }
    if "distributed_config" in kwargs:  # tensor parallelism: each rank initialises its own shard
        return random_model(hf_config, {k: v for k, v in kwargs.items() if k != "revision"})
    device_map = kwargs["device_map"]
    if isinstance(device_map, str) and device_map not in PLANNED_MAPS:
        # Built directly on the target device in the target dtype: no CPU copy, no cast.
        with torch.device(device_map):
            return AutoModelForCausalLM.from_config(hf_config, **build)
    return random_sharded(hf_config, build, device_map, kwargs.get("max_memory"))


def _load_weights(path: str, kwargs: dict[str, Any], config: ExperimentConfig) -> Any:
    method = config.quantization.method
    if method in PRE_QUANTIZED:
        hf_config = AutoConfig.from_pretrained(
            path, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
        found = getattr(hf_config, "quantization_config", None) or {}
        found_method = found.get("quant_method") if isinstance(found, dict) else getattr(found, "quant_method", None)
        if str(found_method) not in PRE_QUANTIZED[method]:
            raise BackendError(
                f"quantization.method = '{method}': model '{config.model}' is not a {method} checkpoint "
                f"(its quantization_config says {found_method!r}; hint: use a pre-quantized {method} checkpoint)"
            )
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _tokenizer(path: str, config: ExperimentConfig, builtin: bool) -> Any:
    tok = AutoTokenizer.from_pretrained(
        path, revision=None if builtin else config.revision, trust_remote_code=config.trust_remote_code
    )
    tok.padding_side = "left"
    return tok


def build_model(model_id: str, config: ExperimentConfig, options: PytorchOptions, device: str) -> tuple[Any, Any, dict]:
    """Load ``model_id`` (a checkpoint, path or ``random:`` name) with our options: (model, tokenizer, kwargs)."""
    path, random_weights = _source(model_id, config.load_format)
    kwargs = from_pretrained_kwargs(config, options, device)
    tokenizer = _tokenizer(path, config, architectures.is_builtin(model_id))
    model = _random_model(path, kwargs, config) if random_weights else _load_weights(path, kwargs, config)
    model.eval()
    return model, tokenizer, kwargs


def _special_ids(model: Any, tokenizer: Any) -> tuple[tuple[int, ...], int]:
    eos: Any = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id if model.config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, int(pad)


def neutral_generation_config(model: Any) -> dict[str, Any]:
    """Replace the checkpoint's generation defaults by an empty one; returns what they were (for the record)."""
    hub = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    # Every decoding value is passed explicitly per call; an empty default means none of the
    # checkpoint's (sampling defaults, eos ids) can come back through transformers' None-filling.
    model.generation_config = GenerationConfig()
    return hub


def cuda_devices(model: Any) -> tuple[int, ...]:
    """CUDA ordinals holding any of the model's parameters or buffers."""
    seen = {t.device.index for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"}
    return tuple(sorted(i if i is not None else 0 for i in seen))


def _synchronizer(devices: tuple[int, ...]) -> Callable[[], None]:
    if not devices:
        return lambda: None

    def synchronize() -> None:
        for d in devices:
            torch.cuda.synchronize(d)

    return synchronize


def _closer(handle: TorchModel) -> Callable[[], None]:
    def close() -> None:
        if handle.continuous is not None:
            engine, handle.continuous = handle.continuous, None
            continuous.close(engine)
        handle.model = None
        handle.assistant = None
        if handle.ranks is not None:
            ranks, handle.ranks = handle.ranks, None
            tp.close(ranks)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    return close


def _describe(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, dict)) else str(v)) for k, v in kwargs.items()}


def load(config: ExperimentConfig) -> LoadedModel:
    """Load ``config.model`` as the experiment says (see the module docstring)."""
    options = resolve(config)
    device = target_device(options)
    torch.manual_seed(config.seed)
    ranks = None
    if config.sharding.tensor_parallel_size > 1:
        ranks = tp.start(config, _source(config.model, config.load_format)[0], device)

    def build() -> tuple[Any, Any, dict]:
        return build_model(config.model, config, options, device)

    model, tokenizer, kwargs = build() if ranks is None else tp.on_ranks(ranks, build)
    eos_ids, pad_id = _special_ids(model, tokenizer)
    hub_defaults = neutral_generation_config(model)
    if config.adapter:
        from peft import PeftModel  # optional (only for [adapter]): not a dependency of this backend

        model = PeftModel.from_pretrained(model, config.adapter, revision=config.revision)
        model.eval()
    assistant = None
    if options.assistant_model:
        assistant, _, _ = build_model(options.assistant_model, config, attrs.evolve(options, device_map=None), device)
        neutral_generation_config(assistant)
    devices = cuda_devices(model)
    if assistant is not None:
        devices = tuple(sorted({*devices, *cuda_devices(assistant)}))
    own_devices = devices  # rank 0 synchronizes its own GPU; a step ends in a collective on every rank
    if ranks is not None and device == "cuda":
        devices = tuple(range(ranks.size))  # rank r computes on cuda:r: meter them all
    input_device = next(model.parameters()).device
    handle = TorchModel(model, tokenizer, eos_ids, pad_id, input_device, options, assistant, ranks=ranks)
    info: dict[str, Any] = {
        "versions": {d: version(d) for d in ("torch", "transformers", "accelerate", "peft", "bitsandbytes")},
        "from_pretrained": _describe(kwargs),
        "random_weights": architectures.is_builtin(config.model) or config.load_format == "random",
        "device": str(input_device),
        "hf_device_map": dict(getattr(model, "hf_device_map", {}) or {}),
        "checkpoint_generation_defaults_ignored": hub_defaults,
        "adapter": config.adapter,
        "assistant_model": options.assistant_model,
        "engine": options.engine,
        # The accelerator's name (lem's peaks table) and its measured copy bandwidth (lem.figures.hardware).
        "hardware": bandwidth.describe(input_device),
    }
    if ranks is not None:
        info["tensor_parallel"] = tp.describe(ranks)
    if architectures.is_builtin(config.model):
        info["tokenizer"] = "lem built-in byte-level BPE (not the real model's tokenizer)"
    if transformers_major() >= 5:
        info["low_cpu_mem_usage"] = "not passed: transformers >= 5 always loads with low memory"
    loaded = LoadedModel(
        backend="pytorch",
        handle=handle,
        tokenizer=tokenizer,
        devices=devices,
        model_config=_config_dict(model),
        num_parameters=sum(p.numel() for p in model.parameters()),
        info=info,
        synchronize=_synchronizer(own_devices),
        close=_closer(handle),
    )
    if options.torch_compile:
        info["compile_seconds"] = compile_warmup(loaded, config)
    if options.engine == "continuous":
        handle.continuous = continuous.start(loaded, config.generation, config)
        info["continuous"] = handle.continuous.info
    return loaded


def _config_dict(model: Any) -> dict[str, Any]:
    base = getattr(model, "get_base_model", None)
    inner = base() if callable(base) else model
    d: dict[str, Any] = inner.config.to_dict()
    return d
