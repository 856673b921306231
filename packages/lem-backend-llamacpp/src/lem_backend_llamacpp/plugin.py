"""The ``llamacpp`` backend's hooks: load, stream, validate.

llama_cpp, transformers and torch are imported only inside ``load_model`` and
the functions it calls, so ``lem --help`` and ``validate_config`` stay fast.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lem import accelerators, hookimpl
from lem.config import ExperimentConfig, GenerationConfig
from lem.errors import BackendError
from lem.types import LoadedModel, Problem, Request, TokenEvent, error
from lem_backend_llamacpp import convert, options, stream

NAME = "llamacpp"
#: What a missing llama.cpp binding takes: the distribution, not the import name (``llama_cpp``).
INSTALL_HINT = "llama-cpp-python, which is not installed (pip install llama-cpp-python)"
TABLES = options.TABLES  # lem plugins --options llamacpp


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gguf_tokenizer(path: Path) -> Any:
    """A Hugging Face tokenizer read from the GGUF file itself (transformers' GGUF support), or ``None``."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception:  # transformers reads only some GGUF vocabularies; prompts then need token ids
        return None
    tok.padding_side = "left"
    return tok


def _tokenizer(converted: convert.Converted) -> Any:
    if converted.source is None:
        return _gguf_tokenizer(converted.path)
    from transformers import AutoTokenizer

    # The tokenizer of the model that was converted: prompts tokenize exactly as in the other backends.
    tok = AutoTokenizer.from_pretrained(converted.source.directory)
    tok.padding_side = "left"
    return tok


def _model_config(converted: convert.Converted, llm: Any) -> dict[str, Any]:
    """The architecture in Hugging Face config form (for FLOPs): the source's config, else the GGUF's metadata."""
    if converted.source is not None:
        from transformers import AutoConfig

        d: dict[str, Any] = AutoConfig.from_pretrained(converted.source.directory).to_dict()
        return d
    meta = dict(llm.metadata)
    arch = meta.get("general.architecture", "")

    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if value is not None else None

    heads = num("attention.head_count")
    hidden = num("embedding_length")
    found = {
        "model_type": arch,
        "hidden_size": hidden,
        "num_hidden_layers": num("block_count"),
        "intermediate_size": num("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": num("attention.head_count_kv") or heads,
        "head_dim": num("attention.key_length") or (hidden // heads if hidden and heads else None),
        "vocab_size": llm.n_vocab(),
        "max_position_embeddings": num("context_length"),
        # llama.cpp's decoder families (llama, mistral, qwen2, gemma...) use gated MLPs
        "hidden_act": "silu",
    }
    return {k: v for k, v in found.items() if v is not None}


def _devices(config: ExperimentConfig) -> tuple[int, ...]:
    """CUDA ordinals the model's layers are offloaded to (empty on a CPU build or with n_gpu_layers = 0)."""
    import llama_cpp

    opts = config.options_for(NAME)
    if not llama_cpp.llama_supports_gpu_offload() or not opts.get("n_gpu_layers"):
        return ()
    split = opts.get("tensor_split")
    if split:
        return tuple(i for i, share in enumerate(split) if share)
    if opts.get("split_mode", "layer") == "none":
        return (int(opts.get("main_gpu", 0)),)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return tuple(range(len([v for v in visible.split(",") if v.strip()])))
    return (int(opts.get("main_gpu", 0)),)


def _on_one_gpu(config: ExperimentConfig) -> bool:
    """The offloaded model sits on one GPU: split_mode "none", one share in tensor_split, or one GPU visible."""
    opts = config.options_for(NAME)
    if opts.get("split_mode", "layer") == "none" or len([s for s in opts.get("tensor_split") or () if s]) == 1:
        return True
    visible = accelerators.parse_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    return visible is not None and len(visible) == 1


def _hardware(config: ExperimentConfig, devices: tuple[int, ...], layers: int | None) -> dict[str, Any]:
    """``info["hardware"]``: the GPU's NVML name when every layer and the output sit on one GPU, else why not.

    A decode step partly offloaded reads weights from host memory and the GPU's, and a model split over
    several GPUs reads each GPU's share in turn (split_mode "layer") or at once ("row"): no one peak applies.
    """
    import llama_cpp

    offloaded = int(config.options_for(NAME).get("n_gpu_layers") or 0)
    if not llama_cpp.llama_supports_gpu_offload():
        why = "this llama.cpp build has no GPU offload: the model runs on the CPU, whose peaks lem's table lacks"
    elif not offloaded:
        why = "llamacpp.n_gpu_layers = 0: the model runs on the CPU, whose peaks lem's table lacks"
    elif offloaded != -1 and (layers is None or offloaded <= layers):
        # llama.cpp puts the output projection on the GPU only when n_gpu_layers exceeds the layer count.
        of = f"of {layers} " if layers is not None else ""
        why = f"llamacpp.n_gpu_layers = {offloaded} {of}leaves part of the model in host memory: no one peak applies"
    elif len(devices) > 1 or not _on_one_gpu(config):
        why = (
            "llama.cpp splits the model over every visible GPU unless llamacpp.split_mode = 'none' or one GPU is "
            "visible (CUDA_VISIBLE_DEVICES): lem has no peak for the split"
        )
    else:
        return accelerators.describe(devices)
    return accelerators.describe((), none_reason=why)


def _kv_types(config: ExperimentConfig) -> dict[str, str]:
    """The KV cache's GGUF types: ``[llamacpp]`` type_k / type_v, else f32 under float32, else llama.cpp's f16."""
    opts = config.options_for("llamacpp")
    default = "f32" if config.precision == "float32" else "f16"
    return {"k": str(opts.get("type_k", default)).upper(), "v": str(opts.get("type_v", default)).upper()}


def _info(
    config: ExperimentConfig,
    converted: convert.Converted,
    kwargs: dict[str, Any],
    load_s: float,
    devices: tuple[int, ...],
    layers: int | None,
) -> dict:
    import llama_cpp

    source = converted.source
    types = convert.tensor_types(converted.path)
    elements, embd = convert.tensor_elements(converted.path)
    fallback = convert.fallback_tensors(converted.quantization, types)
    warnings = (
        [
            f"llamacpp.quantization = {converted.quantization!r}: {fallback} of {sum(types.values())} tensors fell back"
            f" to other types (tensor types: {', '.join(f'{k} {n}' for k, n in types.items())}); the model's rows are"
            " not a multiple of the K-quant block, so its size and speed are not those of that quantization"
        ]
        if fallback
        else []
    )
    return {
        # Counts per GGUF tensor type as loaded: where a K-quant fell back, the file says what was made instead.
        "tensor_types": types,
        "fallback_tensors": fallback,
        # For the bytes a decode step reads (lem.figures.hardware): elements per tensor type, the token
        # embedding, and the KV cache's types.
        "tensor_elements": elements,
        "token_embd": embd,
        "kv_cache_types": _kv_types(config),
        "warnings": warnings,
        "versions": {d: _version(d) for d in ("llama-cpp-python", "gguf", "transformers", "torch")},
        # llama.cpp's build: CPU features, BLAS, GPU offload (e.g. "CPU : AVX2 = 1 | AVX512 = 1 | ...").
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        # The accelerator's name, for the peaks the roofline figures are measured against (lem.figures.hardware).
        "hardware": _hardware(config, devices, layers),
        "gguf": str(converted.path),
        "gguf_bytes": converted.path.stat().st_size,
        "conversion": None
        if source is None
        else {
            "source": source.model,
            "quantization": converted.quantization,
            "digest": converted.digest,
            "cached": converted.cached,
            "seconds": converted.seconds,
            "converter": convert.CONVERTER_VERSION,
        },
        "load_seconds": load_s,
        "llama_kwargs": {k: v if isinstance(v, (int, float, bool, str, list)) else str(v) for k, v in kwargs.items()},
        "random_weights": bool(source and source.random_weights),
        "timing": "per token: one event per token from Llama.generate, stamped on arrival (time.monotonic_ns); "
        "one sequence at a time, in arrival order",
        **(
            {"tokenizer": "lem built-in byte-level BPE (not the real model's tokenizer)"}
            if source and source.model.startswith("random:")
            else {}
        ),
    }


@hookimpl
def load_model(backend: str, config: ExperimentConfig, phases: Any = None) -> LoadedModel | None:
    """Load the experiment's model with llama.cpp, converting it to GGUF first unless it is one.

    The GGUF step (the cache lookup, and the conversion when the cache lacks the file) is the load's
    ``convert`` phase: its time and energy are ``load.phases.convert``, apart from the load.
    """
    if backend != NAME:
        return None
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise BackendError(f"backend = 'llamacpp' needs {INSTALL_HINT} ({exc})") from None

    if phases is None or convert.is_gguf(config.model):
        converted = convert.gguf_for(config)
    else:
        with phases("convert"):
            converted = convert.gguf_for(config)
    kwargs = options.llama_kwargs(config, str(converted.path))
    options.check_against_llama(kwargs, options.generate_kwargs(config.generation))
    t0 = time.perf_counter()
    try:
        llm = Llama(**kwargs)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise BackendError(f"model = {config.model!r}: llama.cpp could not load {converted.path} ({exc})") from None
    load_s = time.perf_counter() - t0
    import llama_cpp

    handle = stream.LlamaHandle(llm, stream.eog_ids(llm))
    devices, model_config = _devices(config), _model_config(converted, llm)

    def close() -> None:
        handle.llm = None
        llm.close()

    return LoadedModel(
        backend=NAME,
        handle=handle,
        tokenizer=_tokenizer(converted),
        devices=devices,
        model_config=model_config,
        num_parameters=int(llama_cpp.llama_model_n_params(llm.model)),
        info=_info(config, converted, kwargs, load_s, devices, model_config.get("num_hidden_layers")),
        close=close,
    )


def _prompt_ids(model: LoadedModel, requests: Sequence[Request]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for req in requests:
        if req.prompt_token_ids is not None:
            out[req.id] = list(req.prompt_token_ids)
        elif model.tokenizer is not None:
            out[req.id] = list(model.tokenizer.encode(req.prompt))
        else:  # no HF tokenizer for this GGUF: llama.cpp's own
            out[req.id] = list(model.handle.llm.tokenize(req.prompt.encode(), add_bos=True, special=True))
    return out


@hookimpl
def generate_stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent] | None:
    """Serve the requests one at a time, one event per token (see :mod:`lem_backend_llamacpp.stream`)."""
    if model.backend != NAME:
        return None
    sampling = options.generate_kwargs(params)
    return stream.serve(
        model.handle, requests, _prompt_ids(model, requests), params, sampling, config.traffic, config.seed
    )


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Check ``[llamacpp]`` and the core options llama.cpp serves differently (only when the backend is llamacpp)."""
    if config.backend != NAME:
        return []
    missing = [] if importlib.util.find_spec("llama_cpp") is not None else [error("backend", INSTALL_HINT, value=NAME)]
    return [*missing, *options.check_options(config)]
