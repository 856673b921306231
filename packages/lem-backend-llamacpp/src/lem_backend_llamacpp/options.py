"""The ``[llamacpp]`` table and the experiment mapped onto ``Llama(...)`` and ``Llama.generate``, in one place.

:data:`MODEL_OPTIONS` lists every ``[llamacpp]`` key passed to ``Llama(...)``
(with the conversion a TOML value needs, e.g. ``split_mode = "row"`` to
llama.cpp's constant); :data:`SAMPLING` maps ``[generation]`` onto the
arguments of ``Llama.generate``, the streaming generator under
``create_completion``. :func:`check_against_llama` checks every name against
the installed llama-cpp-python's signatures, so an argument it renamed fails
clearly instead of vanishing into ``Llama(**kwargs)``.

Nothing here imports llama_cpp at module import time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lem.config import ExperimentConfig, GenerationConfig
from lem.errors import BackendError
from lem.options import Option, Table, accepted_arguments, check, did_you_mean, unapplied
from lem.types import Problem, error, warning
from lem_backend_llamacpp import convert

#: ``split_mode`` names -> llama_cpp constants.
SPLIT_MODES = {"none": "LLAMA_SPLIT_MODE_NONE", "layer": "LLAMA_SPLIT_MODE_LAYER", "row": "LLAMA_SPLIT_MODE_ROW"}
#: KV-cache types (``type_k`` / ``type_v``) -> llama_cpp ``GGML_TYPE_*`` constants.
CACHE_TYPES = {
    "f32": "GGML_TYPE_F32",
    "f16": "GGML_TYPE_F16",
    "bf16": "GGML_TYPE_BF16",
    "q8_0": "GGML_TYPE_Q8_0",
    "q5_1": "GGML_TYPE_Q5_1",
    "q5_0": "GGML_TYPE_Q5_0",
    "q4_1": "GGML_TYPE_Q4_1",
    "q4_0": "GGML_TYPE_Q4_0",
    "iq4_nl": "GGML_TYPE_IQ4_NL",
}


def _constant(table: Mapping[str, str]) -> Callable[[Any], Any]:
    def to_library(value: Any) -> Any:
        import llama_cpp

        return getattr(llama_cpp, table[value])

    return to_library


_LLAMA = "Llama"

#: The one visible table: ``[llamacpp]`` key -> ``Llama(...)`` argument (``call=None``: lem handles it).
TABLE = Table(
    "llamacpp",
    (
        Option("n_gpu_layers", int, "layers offloaded to the GPU (-1: all)", call=_LLAMA, ge=-1),
        Option("main_gpu", int, "the GPU that holds the model when split_mode = 'none'", call=_LLAMA, ge=0),
        Option("split_mode", str, "how a model is split over GPUs", call=_LLAMA, choices=tuple(SPLIT_MODES)),
        Option("tensor_split", list[float], "per-GPU shares of the model", call=_LLAMA, ge=0),
        Option("n_ctx", int, "context length (0: the model's training context)", call=_LLAMA, ge=0),
        Option("n_batch", int, "prompt tokens per llama_decode call", call=_LLAMA, ge=1),
        Option("n_ubatch", int, "physical batch size", call=_LLAMA, ge=1),
        Option("n_threads", int, "threads for generation (-1: llama.cpp's choice)", call=_LLAMA, ge=-1),
        Option("n_threads_batch", int, "threads for prompt processing (-1: llama.cpp's choice)", call=_LLAMA, ge=-1),
        Option("flash_attn", bool, "flash attention", call=_LLAMA),
        Option("type_k", str, "KV-cache type of keys", call=_LLAMA, choices=tuple(CACHE_TYPES)),
        Option("type_v", str, "KV-cache type of values", call=_LLAMA, choices=tuple(CACHE_TYPES)),
        Option("offload_kqv", bool, "keep the KV cache on the GPU", call=_LLAMA),
        Option("use_mmap", bool, "memory-map the model file", call=_LLAMA),
        Option("use_mlock", bool, "lock the model in RAM", call=_LLAMA),
        Option(
            "quantization",
            str,
            "GGUF type a Hugging Face or random: model is converted to (default: from precision)",
            choices=convert.QUANTIZATIONS,
        ),
        Option(
            "cache_dir",
            str,
            "where converted GGUF files are cached (default $LEM_CACHE_DIR, $XDG_CACHE_HOME/lem or ~/.cache/lem)",
        ),
        Option("extra", Mapping[str, Any], "table passed to Llama(...) unchanged, last"),
    ),
    doc="llama-cpp-python's Llama: offload, context, threads, KV cache, GGUF conversion",
    calls={_LLAMA: "llama_cpp:Llama.__init__"},
)
TABLES = (TABLE,)

#: Keys whose TOML value is a name of a llama.cpp constant (``split_mode = "row"``).
TO_LIBRARY: dict[str, Callable[[Any], Any]] = {
    "split_mode": _constant(SPLIT_MODES),
    "type_k": _constant(CACHE_TYPES),
    "type_v": _constant(CACHE_TYPES),
}
#: ``[llamacpp]`` keys that reach ``Llama(...)``.
MODEL_OPTIONS = tuple(o.key for o in TABLE.options if o.call == _LLAMA)


def to_library(key: str, value: Any) -> Any:
    """The ``Llama(...)`` value of ``[llamacpp] key = value``."""
    convert_value = TO_LIBRARY.get(key)
    return value if convert_value is None else convert_value(value)


#: Core config -> ``Llama(...)`` argument.
CORE_MODEL_OPTIONS = {
    "seed": "seed",
    # llama.cpp keeps its KV cache in f16 by default, which moves float32 logits by ~1e-2: a float32
    # experiment gets an f32 cache unless llamacpp.type_k / type_v say otherwise.
    "precision": "type_k, type_v (float32 -> f32; otherwise llama.cpp's default, f16)",
}

#: ``[generation]`` field -> ``Llama.generate`` argument. Every argument is passed, the neutral ones
#: too: llama-cpp-python's defaults (top_k 40, top_p 0.95, min_p 0.05, temp 0.8) are not neutral.
SAMPLING: dict[str, str] = {
    "temperature": "temp",  # 0 when greedy (do_sample = false or temperature = 0)
    "top_p": "top_p",
    "top_k": "top_k",  # 0 = off, as in llama.cpp
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}
#: ``Llama.generate`` arguments lem fixes to their neutral value (features lem's config does not have).
NEUTRAL_SAMPLING = {
    "typical_p": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "tfs_z": 1.0,
    "mirostat_mode": 0,
}
#: ``[generation]`` fields lem itself enforces while streaming (llama.cpp's generator never stops on its own).
STREAM_LIMITS = {
    "max_output_tokens": "stop after this many tokens",
    "min_output_tokens": "end-of-generation tokens are masked (logits_processor) until this many",
    "ignore_eos": "an end-of-generation token does not stop the request",
}

#: ``[generation]`` keys llama.cpp does not apply -> what to use instead.
NOT_APPLIED = {"no_repeat_ngram_size": "use generation.repetition_penalty"}


def _check_table(config: ExperimentConfig) -> list[Problem]:
    opts = config.options_for("llamacpp")
    problems = check(TABLE, opts)
    quant = opts.get("quantization")
    if quant is not None and convert.is_gguf(config.model):
        problems.append(
            warning(
                "llamacpp.quantization",
                "is ignored: model is a .gguf file, loaded with its own types",
                "remove it, or give a Hugging Face model to convert",
                value=quant,
            )
        )
    return problems


def _check_core(config: ExperimentConfig) -> list[Problem]:
    g = config.generation
    problems: list[Problem] = []
    if config.batching.batch_size > 1:
        problems.append(
            warning(
                "batching.batch_size",
                "is ignored: llama-cpp-python's Llama serves one sequence at a time; requests are served "
                "in arrival order and queueing shows in TTFT",
                "set batching.batch_size = 1, or use a backend that batches (pytorch, vllm, server)",
                value=config.batching.batch_size,
            )
        )
    if g.num_beams > 1:
        problems.append(
            error("generation.num_beams", "llama.cpp has no beam search", "set num_beams = 1", value=g.num_beams)
        )
    problems += unapplied(g, NOT_APPLIED, "llama.cpp")
    if config.quantization.method != "none":
        problems.append(
            error(
                "quantization.method",
                "llama.cpp quantizes GGUF files, not with bitsandbytes/GPTQ/AWQ/FP8",
                "set llamacpp.quantization (e.g. 'q4_k_m') and quantization.method = 'none'",
                value=config.quantization.method,
            )
        )
    sharding = config.sharding
    if sharding.tensor_parallel_size > 1 or sharding.pipeline_parallel_size > 1:
        problems.append(
            error(
                "sharding",
                "llama.cpp splits a model over GPUs itself",
                "use llamacpp.split_mode and llamacpp.tensor_split",
            )
        )
    if config.adapter:
        problems.append(
            error("adapter", "LoRA adapters are not supported by lem's llama.cpp backend", value=config.adapter)
        )
    return problems


def check_options(config: ExperimentConfig) -> list[Problem]:
    """Problems with ``[llamacpp]`` and with core options llama.cpp cannot serve."""
    return _check_table(config) + _check_core(config)


def llama_kwargs(config: ExperimentConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``Llama(...)``: the GGUF path, the seed, ``[llamacpp]``, then ``extra``."""
    opts = config.options_for("llamacpp")
    kwargs: dict[str, Any] = {"model_path": model_path, "seed": config.seed, "verbose": False}
    if config.precision == "float32":
        kwargs["type_k"] = kwargs["type_v"] = _constant(CACHE_TYPES)("f32")
    for key in MODEL_OPTIONS:
        if key in opts:
            kwargs[TABLE[key].names[0]] = to_library(key, opts[key])
    kwargs.update(opts.get("extra") or {})
    return kwargs


def generate_kwargs(params: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for ``Llama.generate`` (besides the prompt ids and the logits processor)."""
    kwargs: dict[str, Any] = {arg: getattr(params, field) for field, arg in SAMPLING.items()}
    if params.greedy:
        kwargs["temp"] = 0.0  # llama.cpp samples greedily at temperature 0
    kwargs.update(NEUTRAL_SAMPLING)
    return kwargs


def check_against_llama(model_kwargs: Mapping[str, Any], sampling_kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`BackendError` for an argument the installed ``Llama`` / ``Llama.generate`` does not name.

    ``Llama.__init__`` takes ``**kwargs`` and drops what it does not know, so its named
    parameters are the check.
    """
    import llama_cpp

    ours = {TABLE[key].names[0]: key for key in MODEL_OPTIONS}
    for fn, given, where in (
        (llama_cpp.Llama.__init__, model_kwargs, "Llama(...)"),
        (llama_cpp.Llama.generate, sampling_kwargs, "Llama.generate"),
    ):
        known = accepted_arguments(fn)
        for name in given:
            if name not in known:
                key = f"llamacpp.{ours[name]}" if name in ours else f"llamacpp.extra.{name}"
                if where == "Llama.generate":
                    key = next((f"generation.{f}" for f, a in SAMPLING.items() if a == name), name)
                raise BackendError(
                    f"{key}: llama-cpp-python {llama_cpp.__version__} {where} has no argument '{name}' "
                    f"({did_you_mean(name, known)}); remove the option or install a version that accepts it"
                )
