"""``[generation]`` mapped onto TensorRT-LLM's ``SamplingParams``, in one visible table."""

from __future__ import annotations

from typing import Any

from lem.config import ExperimentConfig, GenerationConfig

#: ``[generation]`` key -> ``SamplingParams`` field (conversions in :func:`sampling_kwargs`).
SAMPLING_OPTIONS: dict[str, str] = {
    "temperature": "temperature",  # 0 (or do_sample = false) -> greedy: top_k = 1, temperature unset
    "top_p": "top_p",
    "top_k": "top_k",  # our 0 = off -> None ("all logits" in TensorRT-LLM)
    "repetition_penalty": "repetition_penalty",
    "num_beams": "n",  # > 1: use_beam_search = True, beam width n (offline mode only)
    "length_penalty": "length_penalty",
    "early_stopping": "early_stopping",  # bool -> int
    "min_output_tokens": "min_tokens",
    "max_output_tokens": "max_tokens",
    "ignore_eos": "ignore_eos",
    # from elsewhere in the experiment:
    "seed": "seed",
}
#: ``[generation]`` keys not passed (``validate_config`` warns when they are set).
NOT_APPLIED = ("min_p", "no_repeat_ngram_size", "do_sample")


def sampling_kwargs(params: GenerationConfig, config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for ``SamplingParams`` (plain data; :func:`sampling_params` builds the object)."""
    kwargs: dict[str, Any] = {
        "max_tokens": params.max_output_tokens,
        "min_tokens": params.min_output_tokens or None,
        "ignore_eos": params.ignore_eos,
        "repetition_penalty": params.repetition_penalty,
        "seed": config.seed,
    }
    if params.greedy:
        # Top-1 is argmax whatever the temperature: greedy in every TensorRT-LLM sampler.
        kwargs["top_k"] = 1
    else:
        kwargs["temperature"] = params.temperature
        kwargs["top_p"] = params.top_p
        kwargs["top_k"] = params.top_k if params.top_k > 0 else None
    if params.num_beams > 1:
        kwargs["use_beam_search"] = True
        kwargs["n"] = params.num_beams
        kwargs["length_penalty"] = params.length_penalty
        kwargs["early_stopping"] = int(params.early_stopping)
    return {k: v for k, v in kwargs.items() if v is not None}


def sampling_params(params: GenerationConfig, config: ExperimentConfig) -> Any:
    """A TensorRT-LLM ``SamplingParams`` for the experiment."""
    from tensorrt_llm import SamplingParams

    return SamplingParams(**sampling_kwargs(params, config))
