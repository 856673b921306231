"""The ``[pytorch]`` table: its keys, their types and defaults, and where each one goes.

:data:`TABLE` is the one visible table mapping our keys onto the Transformers
API. Everything else in this package reads :class:`PytorchOptions`, built by
:func:`resolve` from a validated config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from lem import options
from lem.config import ExperimentConfig
from lem.options import Option, Table
from lem.types import Problem

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "sliding_window", "hybrid", "quantized")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda")
#: ``static``: batches through ``model.generate``; ``continuous``: transformers' continuous batching manager.
ENGINES = ("static", "continuous")


#: The one visible table: our keys onto the Transformers API. The code that passes each one is in
#: :mod:`lem_backend_pytorch.loader` (``from_pretrained``) and :mod:`lem_backend_pytorch.decoding` (``generate``).
TABLE = Table(
    "pytorch",
    (
        Option("device", str, "model placement when device_map is unset", default="auto", choices=DEVICES),
        Option(
            "attn_implementation",
            str,
            "attention kernels (from_pretrained / from_config)",
            default="sdpa",
            call="from_pretrained",
            choices=ATTN_IMPLEMENTATIONS,
        ),
        Option("low_cpu_mem_usage", bool, "transformers < 5 only", default=True, call="from_pretrained"),
        Option(
            "device_map",
            str | Mapping[str, str | int],
            'a placement, "cuda:N", or a table of module = device',
            call="from_pretrained",
            choices=DEVICE_MAPS,
            pattern=r"cuda:\d+",
        ),
        Option(
            "max_memory",
            Mapping[str, str | int],
            'memory per device, e.g. {0 = "70GiB", cpu = "100GiB"}',
            call="from_pretrained",
            ge=0,
        ),
        Option(
            "torch_compile",
            bool | str,
            "generate(compile_config=CompileConfig(mode=), cache_implementation='static')",
            default=False,
            call="generate",
            argument="compile_config",
            choices=(False, *COMPILE_MODES),
        ),
        Option("cache_implementation", str, "the KV cache", call="generate", choices=CACHE_IMPLEMENTATIONS),
        Option("assistant_model", str, "a model id, path or random:<name>", call="generate"),
        Option("use_cache", bool, "use the KV cache", default=True, call="generate"),
        Option(
            "engine",
            str,
            "static: model.generate batches; continuous: model.init_continuous_batching()",
            default="static",
            choices=ENGINES,
        ),
        Option(
            "continuous",
            Mapping[str, Any],
            "the [pytorch.continuous] table (ContinuousBatchingConfig), used with engine = 'continuous'",
        ),
    ),
    doc="transformers: from_pretrained, generate, and the continuous batching engine",
)


@attrs.frozen
class PytorchOptions:
    """The ``[pytorch]`` table with defaults filled in."""

    device: str = "auto"
    attn_implementation: str = "sdpa"
    low_cpu_mem_usage: bool = True
    device_map: str | Mapping[str, Any] | None = None
    max_memory: Mapping[str, Any] | None = None
    torch_compile: str | bool = False
    cache_implementation: str | None = None
    assistant_model: str | None = None
    use_cache: bool = True
    engine: str = "static"
    #: ``[pytorch.continuous]``, checked by :mod:`lem_backend_pytorch.continuous.options`.
    continuous: Mapping[str, Any] | None = None


def check(table: Mapping[str, Any]) -> list[Problem]:
    """Unknown keys (with a did-you-mean), wrong types and values out of range in a ``[pytorch]`` table."""
    return options.check(TABLE, table)


def resolve(config: ExperimentConfig) -> PytorchOptions:
    """The experiment's ``[pytorch]`` options (assumed validated) with defaults."""
    table = config.options_for("pytorch")
    return PytorchOptions(**{k: v for k, v in table.items() if k in TABLE})


def max_memory_for_accelerate(max_memory: Mapping[str, Any] | None) -> dict[int | str, Any] | None:
    """TOML keys are strings; accelerate wants GPU ordinals as ints (``"0"`` -> ``0``)."""
    if max_memory is None:
        return None
    return {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
