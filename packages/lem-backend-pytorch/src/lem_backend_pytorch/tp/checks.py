"""What tensor parallelism (``[sharding] tensor_parallel_size > 1``) cannot be combined with.

:func:`problems` is the ``validate_config`` part (one line per problem, before
anything runs); :func:`check_model` repeats the model checks at load time,
where the model's transformers config is known for every source (a hub id's
config is not read while validating).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from lem import architectures
from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.types import Problem, error
from lem_backend_pytorch.model import transformers_major
from lem_backend_pytorch.options import PytorchOptions

PATH = "sharding.tensor_parallel_size"


def _model_config(config: ExperimentConfig) -> Mapping[str, Any] | None:
    """The model's config.json where it can be read without loading anything (built-in or a local directory)."""
    if architectures.is_builtin(config.model):
        try:
            return architectures.config_dict(architectures.builtin_name(config.model))
        except KeyError:
            return None  # an unknown name is the loader's error
    path = os.path.join(os.path.expanduser(config.model), "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            loaded: dict[str, Any] = json.load(f)
            return loaded
    return None


def heads_problem(hf: Mapping[str, Any], size: int) -> str | None:
    """Why ``size`` ranks cannot split the attention heads of a model with config ``hf``, else ``None``."""
    heads = hf.get("num_attention_heads")
    kv = hf.get("num_key_value_heads") or heads
    if isinstance(heads, int) and heads % size:
        return f"the model's {heads} attention heads do not split over {size} ranks"
    if isinstance(kv, int) and kv % size:
        return f"the model's {kv} key/value heads do not split over {size} ranks"
    return None


def _refused(config: ExperimentConfig, o: PytorchOptions) -> Iterator[tuple[str, str, str, Any]]:
    size = config.sharding.tensor_parallel_size
    if o.device_map is not None:
        yield (
            "pytorch.device_map",
            f"and {PATH} = {size} are exclusive (a device map splits layers, tensor parallelism splits each layer)",
            "remove device_map, or set tensor_parallel_size = 1",
            o.device_map,
        )
    if o.engine == "continuous":
        yield "pytorch.engine", "the continuous engine does not run tensor-parallel", "use engine = 'static'", o.engine
    if o.assistant_model:
        yield "pytorch.assistant_model", "assisted generation is not run tensor-parallel", "", o.assistant_model
    if o.torch_compile:
        yield "pytorch.torch_compile", "torch.compile is not run tensor-parallel", "", o.torch_compile
    if config.generation.num_beams > 1:
        yield "generation.num_beams", "beam search is not run tensor-parallel", "", config.generation.num_beams
    if config.adapter:
        yield "adapter", "a LoRA adapter is not applied to a tensor-parallel model", "", config.adapter
    if config.quantization.method != "none":
        yield "quantization.method", "quantized models are not run tensor-parallel", "", config.quantization.method


def problems(config: ExperimentConfig, o: PytorchOptions, on_cpu: bool) -> Iterator[Problem]:
    """``validate_config`` for ``tensor_parallel_size > 1`` (called only then)."""
    size = config.sharding.tensor_parallel_size
    for path, message, hint, value in _refused(config, o):
        yield error(path, message, hint or f"set {PATH} = 1 for this", value)
    if transformers_major() < 5:
        yield error(PATH, "needs transformers 5's tensor parallelism", "pip install 'transformers>=5.17'", size)
    import torch  # validate_config imports this module: torch only once a check needs the GPU count

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not on_cpu and gpus and size > gpus:
        yield error(PATH, f"needs one GPU per rank but torch sees {gpus}", f"set tensor_parallel_size <= {gpus}", size)
    if on_cpu and gpus:
        yield error(
            "pytorch.device",
            "tensor-parallel ranks run on the GPUs whenever torch sees one (transformers picks the accelerator)",
            'use device = "auto" or "cuda" here; CPU ranks run on machines without a GPU',
            o.device,
        )
    hf = _model_config(config)
    why = heads_problem(hf, size) if hf is not None else None
    if why is not None:
        yield error(PATH, why, "use a tensor_parallel_size that divides both head counts", size)


def check_model(hf_config: Any, config: ExperimentConfig) -> None:
    """Raise a BackendError when transformers cannot shard this model over ``tensor_parallel_size`` ranks."""
    size = config.sharding.tensor_parallel_size
    if not getattr(hf_config, "base_model_tp_plan", None):
        raise BackendError(
            f"{PATH} = {size}: transformers has no tensor-parallel plan for {type(hf_config).__name__} "
            f"(model '{config.model}') (hint: use [pytorch] device_map = 'auto' for this model)"
        )
    why = heads_problem(hf_config.to_dict(), size)
    if why is not None:
        raise BackendError(f"{PATH} = {size}: {why} (hint: use a size that divides both head counts)")
