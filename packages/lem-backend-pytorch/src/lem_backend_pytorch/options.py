"""The ``[pytorch]`` table: its keys, their types and defaults, and where each one goes.

:data:`OPTIONS` is the one visible table mapping our keys onto the Transformers
API. Everything else in this package reads :class:`PytorchOptions`, built by
:func:`resolve` from a validated config.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.types import Problem, error

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "sliding_window", "hybrid", "quantized")
DEVICES = ("auto", "cpu", "cuda")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda")
#: ``static``: batches through ``model.generate``; ``continuous``: transformers' continuous batching manager.
ENGINES = ("static", "continuous")


def _is(*kinds: type) -> Callable[[Any], bool]:
    # bool is an int subclass: `true` is never accepted where a number or string is meant.
    return lambda v: isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)


def _one_of(choices: tuple[Any, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in choices


def _max_memory(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v.values())


def _device_map(v: Any) -> bool:
    if isinstance(v, str):
        return v in DEVICE_MAPS or re.fullmatch(r"cuda:\d+", v) is not None
    return isinstance(v, Mapping) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v.values())


#: key -> (default, type check, what it must be, where it goes). The last column is
#: documentation and the README's table; the code that passes each one is in
#: :mod:`lem_backend_pytorch.loader` (``from_pretrained``) and :mod:`lem_backend_pytorch.decoding` (``generate``).
OPTIONS: dict[str, tuple[Any, Callable[[Any], bool], str, str]] = {
    "device": ("auto", _one_of(DEVICES), f"one of {DEVICES}", "model placement when device_map is unset"),
    "attn_implementation": (
        "sdpa",
        _one_of(ATTN_IMPLEMENTATIONS),
        f"one of {ATTN_IMPLEMENTATIONS}",
        "from_pretrained / from_config(attn_implementation=)",
    ),
    "low_cpu_mem_usage": (True, _is(bool), "a boolean", "from_pretrained(low_cpu_mem_usage=) (transformers < 5 only)"),
    "device_map": (
        None,
        _device_map,
        f'one of {DEVICE_MAPS}, "cuda:N", or a table of module = device',
        "from_pretrained(device_map=)",
    ),
    "max_memory": (None, _max_memory, 'a table like {0 = "70GiB", cpu = "100GiB"}', "from_pretrained(max_memory=)"),
    "torch_compile": (
        False,
        lambda v: v is False or _one_of(COMPILE_MODES)(v),
        f"false or one of {COMPILE_MODES}",
        "generate(compile_config=CompileConfig(mode=), cache_implementation='static')",
    ),
    "cache_implementation": (
        None,
        _one_of(CACHE_IMPLEMENTATIONS),
        f"one of {CACHE_IMPLEMENTATIONS}",
        "generate(cache_implementation=)",
    ),
    "assistant_model": (None, _is(str), "a model id, path or random:<name>", "generate(assistant_model=)"),
    "use_cache": (True, _is(bool), "a boolean", "generate(use_cache=)"),
    "engine": (
        "static",
        _one_of(ENGINES),
        f"one of {ENGINES}",
        "static: model.generate batches; continuous: model.init_continuous_batching()",
    ),
    "continuous": (
        None,
        lambda v: isinstance(v, Mapping),
        "a table (see the README's [pytorch.continuous] table)",
        "ContinuousBatchingConfig(...) (lem_backend_pytorch.continuous_options.CONTINUOUS)",
    ),
}


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
    #: ``[pytorch.continuous]``, checked by :mod:`lem_backend_pytorch.continuous_options`.
    continuous: Mapping[str, Any] | None = None


def check(table: Mapping[str, Any]) -> Iterator[Problem]:
    """Unknown keys (with a did-you-mean) and wrong types in a ``[pytorch]`` table."""
    for key, value in table.items():
        if key not in OPTIONS:
            close = difflib.get_close_matches(key, list(OPTIONS), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(OPTIONS)}"
            yield error(f"pytorch.{key}", "unknown key", hint)
            continue
        _, ok, must, _ = OPTIONS[key]
        if not ok(value):
            yield error(f"pytorch.{key}", f"must be {must}", "see the lem-backend-pytorch README", value)


def resolve(config: ExperimentConfig) -> PytorchOptions:
    """The experiment's ``[pytorch]`` options (assumed validated) with defaults."""
    table = config.options_for("pytorch")
    return PytorchOptions(**{k: v for k, v in table.items() if k in OPTIONS})


def max_memory_for_accelerate(max_memory: Mapping[str, Any] | None) -> dict[int | str, Any] | None:
    """TOML keys are strings; accelerate wants GPU ordinals as ints (``"0"`` -> ``0``)."""
    if max_memory is None:
        return None
    return {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}
