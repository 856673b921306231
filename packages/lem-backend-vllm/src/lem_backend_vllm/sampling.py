"""``[generation]`` mapped onto vLLM's ``SamplingParams`` (and ``BeamSearchParams``), in one visible table."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from lem.config import ExperimentConfig, GenerationConfig
from lem.errors import BackendError

#: ``[generation]`` key -> ``SamplingParams`` field (conversions in :func:`sampling_kwargs`).
SAMPLING_OPTIONS: dict[str, str] = {
    "temperature": "temperature",  # 0 (or do_sample = false) -> 0.0, vLLM's greedy
    "top_p": "top_p",
    "top_k": "top_k",  # our 0 = off -> the installed vLLM's "off" value
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "min_output_tokens": "min_tokens",
    "max_output_tokens": "max_tokens",
    "ignore_eos": "ignore_eos",
    # from elsewhere in the experiment:
    "seed": "seed",
    "vllm.n": "n",
    "vllm.best_of": "best_of",
}


def _sampling_fields() -> dict[str, Any]:
    """Field name -> default of the installed vLLM's ``SamplingParams``."""
    from vllm import SamplingParams

    if dataclasses.is_dataclass(SamplingParams):
        return {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    # msgspec.Struct in vLLM >= 0.6
    fields = getattr(SamplingParams, "__struct_fields__", ())
    defaults = getattr(SamplingParams, "__struct_defaults__", ())
    out = dict(zip(fields[len(fields) - len(defaults) :], defaults, strict=True))
    for name in fields:
        out.setdefault(name, inspect.Parameter.empty)
    return out


def top_k_off() -> int:
    """The value that turns top-k off in the installed vLLM (``-1`` in old versions, ``0`` in new)."""
    default = _sampling_fields().get("top_k")
    return default if isinstance(default, int) else -1


def sampling_kwargs(params: GenerationConfig, config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for ``SamplingParams`` (without ``output_kind``)."""
    opts: Mapping[str, Any] = config.options_for("vllm")
    kwargs: dict[str, Any] = {
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else top_k_off(),
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "min_tokens": params.min_output_tokens,
        "max_tokens": params.max_output_tokens,
        "ignore_eos": params.ignore_eos,
        "seed": config.seed,
    }
    if "n" in opts:
        kwargs["n"] = opts["n"]
    if "best_of" in opts:
        kwargs["best_of"] = opts["best_of"]
    return kwargs


def sampling_params(params: GenerationConfig, config: ExperimentConfig, *, stream: bool) -> Any:
    """A ``SamplingParams``: delta outputs (one per step) when streaming, the final output otherwise."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    kwargs = sampling_kwargs(params, config)
    fields = _sampling_fields()
    for name in kwargs:
        if name not in fields:
            import vllm

            raise BackendError(
                f"{'vllm.' + name if name in ('n', 'best_of') else 'generation'}: vLLM {vllm.__version__}'s "
                f"SamplingParams has no '{name}'; remove the option"
            )
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    return SamplingParams(output_kind=kind, **kwargs)


def beam_search_params(params: GenerationConfig) -> Any:
    """A ``BeamSearchParams`` for ``generation.num_beams > 1`` (offline mode only)."""
    from vllm.sampling_params import BeamSearchParams

    return BeamSearchParams(
        beam_width=params.num_beams,
        max_tokens=params.max_output_tokens,
        ignore_eos=params.ignore_eos,
        temperature=0.0 if params.greedy else params.temperature,
        length_penalty=params.length_penalty,
    )
