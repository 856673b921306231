"""``[generation]`` and the generate-time ``[pytorch]`` keys, mapped onto ``model.generate``.

:func:`generate_kwargs` is the one table: every decoding parameter of
:class:`lem.config.GenerationConfig` lands in a ``transformers.GenerationConfig``
passed as ``generate(generation_config=...)``; every value is set explicitly, so a
checkpoint's own ``generation_config.json`` (a hub default ``temperature = 0.6``)
never changes what is measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import CompileConfig
from transformers import GenerationConfig as HFGenerationConfig

from lem.config import GenerationConfig
from lem_backend_pytorch.options import PytorchOptions


def generation_config_kwargs(
    params: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    options: PytorchOptions,
) -> dict[str, Any]:
    """Keyword arguments of ``transformers.GenerationConfig`` for one generate call.

    ``temperature = 0`` means greedy whatever ``do_sample`` says; the sampling
    knobs are then left at their neutral values so transformers does not warn
    about unused ones.
    """
    sample = not params.greedy
    kwargs: dict[str, Any] = {
        # our key                      -> transformers GenerationConfig field
        "max_new_tokens": params.max_output_tokens,
        "min_new_tokens": params.min_output_tokens,
        "do_sample": sample,
        "temperature": params.temperature if sample else 1.0,
        "top_p": params.top_p if sample else 1.0,
        "top_k": params.top_k if sample else None,  # 0 = off, in transformers as in lem
        "min_p": (params.min_p or None) if sample else None,
        "repetition_penalty": params.repetition_penalty,
        "no_repeat_ngram_size": params.no_repeat_ngram_size,
        "num_beams": params.num_beams,
        "length_penalty": params.length_penalty,
        "early_stopping": params.early_stopping,
        # ignore_eos: no EOS id at all, so generation runs to max_new_tokens; the
        # model may still produce the EOS token, as with vLLM's ignore_eos.
        "eos_token_id": None if params.ignore_eos else list(eos_token_ids),
        "pad_token_id": pad_token_id,
        "use_cache": options.use_cache,
        "cache_implementation": cache_implementation(options),
    }
    if options.torch_compile:
        # transformers compiles the decoding forward itself when the cache is static.
        kwargs["compile_config"] = CompileConfig(mode=str(options.torch_compile))
    return kwargs


def cache_implementation(options: PytorchOptions) -> str | None:
    """The KV cache kind: a static cache whenever torch.compile is on (that is what makes compile pay off)."""
    if options.cache_implementation is not None:
        return options.cache_implementation
    return "static" if options.torch_compile else None


def build_generation_config(
    params: GenerationConfig,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    options: PytorchOptions,
) -> Any:
    """A ``transformers.GenerationConfig`` for ``params`` (see :func:`generation_config_kwargs`)."""
    return HFGenerationConfig(**generation_config_kwargs(params, eos_token_ids, pad_token_id, options))
