"""The core's own ``validate_config``: ranges, names of backends and meters, stray tables.

Registered as a built-in plugin, so the core's checks and the plugins' checks
go through the same hook and are reported together.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from typing import Any

from lem.config import CORE_TABLES, DatasetConfig, ExperimentConfig
from lem.hookspecs import hookimpl
from lem.plugins import KNOWN_DISTRIBUTIONS, backend_names, meter_names, plugin_names
from lem.types import Problem, error, warning

# (dotted key, test, what it must be) for every number with a range.
_RANGES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: v >= 0, "must be >= 0"),
    ("dataset.num_prompts", lambda v: v >= 1, "must be >= 1"),
    ("dataset.input_length", lambda v: v >= 1, "must be >= 1"),
    ("dataset.input_length_min", lambda v: v is None or v >= 1, "must be >= 1"),
    ("dataset.input_length_max", lambda v: v is None or v >= 1, "must be >= 1"),
    ("dataset.input_length_std", lambda v: v is None or v >= 0, "must be >= 0"),
    ("dataset.max_input_tokens", lambda v: v is None or v >= 1, "must be >= 1"),
    ("generation.max_output_tokens", lambda v: v >= 1, "must be >= 1"),
    ("generation.min_output_tokens", lambda v: v >= 0, "must be >= 0"),
    ("generation.temperature", lambda v: v >= 0, "must be >= 0 (0 means greedy)"),
    ("generation.top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("generation.top_k", lambda v: v >= 0, "must be >= 0 (0 means off)"),
    ("generation.min_p", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("generation.repetition_penalty", lambda v: v > 0, "must be > 0 (1 means off)"),
    ("generation.no_repeat_ngram_size", lambda v: v >= 0, "must be >= 0 (0 means off)"),
    ("generation.num_beams", lambda v: v >= 1, "must be >= 1"),
    ("batching.batch_size", lambda v: v >= 1, "must be >= 1"),
    ("batching.max_tokens_per_batch", lambda v: v is None or v >= 1, "must be >= 1"),
    ("traffic.rate", lambda v: v is None or v > 0, "must be > 0 requests per second"),
    ("traffic.concurrency", lambda v: v is None or v >= 1, "must be >= 1"),
    ("measurement.warmup_requests", lambda v: v >= 0, "must be >= 0"),
    ("measurement.warmup_cv_threshold", lambda v: v > 0, "must be > 0"),
    ("measurement.warmup_window", lambda v: v >= 2, "must be >= 2"),
    ("measurement.warmup_max_requests", lambda v: v >= 1, "must be >= 1"),
    ("measurement.cycles", lambda v: v >= 1, "must be >= 1"),
    ("measurement.idle_seconds", lambda v: v >= 0, "must be >= 0 (0 skips the idle baseline)"),
    ("measurement.sampling_interval_ms", lambda v: v > 0, "must be > 0"),
    ("measurement.cooldown_seconds", lambda v: v >= 0, "must be >= 0"),
    ("measurement.stall_timeout_s", lambda v: v > 0, "must be > 0 seconds"),
    ("sharding.tensor_parallel_size", lambda v: v >= 1, "must be >= 1"),
    ("sharding.pipeline_parallel_size", lambda v: v >= 1, "must be >= 1"),
]


def get(config: Any, dotted: str) -> Any:
    """Read a dotted attribute path (``"generation.top_p"``) from a config."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _ranges(config: ExperimentConfig) -> Iterator[Problem]:
    for key, ok, must in _RANGES:
        value = get(config, key)
        if not ok(value):
            yield error(key, must, value=value)
    g, d = config.generation, config.dataset
    if g.min_output_tokens > g.max_output_tokens:
        yield error(
            "generation.min_output_tokens",
            f"is larger than generation.max_output_tokens ({g.max_output_tokens})",
            value=g.min_output_tokens,
        )
    if d.input_length_min and d.input_length_max and d.input_length_min > d.input_length_max:
        yield error("dataset.input_length_min", "is larger than dataset.input_length_max", value=d.input_length_min)
    devices = config.measurement.devices
    if devices is not None and any(i < 0 for i in devices):
        yield error("measurement.devices", "device ordinals must be >= 0", value=list(devices))


# [dataset] keys and the sources that read them; a key set for another source is ignored, and said so.
_DATASET_KEYS_USED_BY = {
    "path": ("file",),
    "format": ("file",),
    "name": ("huggingface",),
    "field": ("file", "huggingface"),
    "input_field": ("file", "huggingface"),
    "subset": ("huggingface", "builtin"),
}


def _dataset_companions(config: ExperimentConfig) -> Iterator[Problem]:
    from lem.prompts.builtin import SUBSETS

    d = config.dataset
    defaults = DatasetConfig()
    for key, sources in _DATASET_KEYS_USED_BY.items():
        if d.source not in sources and getattr(d, key) != getattr(defaults, key):
            used = " or ".join(repr(s) for s in sources)
            yield warning(f"dataset.{key}", f"is only used by source {used}; ignored for '{d.source}'")
    if d.source == "builtin" and d.subset is not None and d.subset not in SUBSETS:
        hint = f"use one of {', '.join(SUBSETS)}"
        yield error("dataset.subset", "is not a subset of the builtin prompt set", hint, d.subset)
    synthetic_only = ("input_length_distribution", "input_length_min", "input_length_max", "input_length_std")
    if d.source != "synthetic" and any(getattr(d, k) != getattr(defaults, k) for k in synthetic_only):
        yield warning(
            "dataset.input_length_distribution", f"synthetic length options are ignored for source '{d.source}'"
        )
    if d.source == "synthetic" and d.max_input_tokens is not None and d.input_length > d.max_input_tokens:
        yield warning(
            "dataset.max_input_tokens",
            f"is below dataset.input_length ({d.input_length}); synthetic prompts are clipped to it",
            value=d.max_input_tokens,
        )
    if d.input_field is not None and d.field is None:
        yield warning(
            "dataset.input_field", "is set without dataset.field; the text field is guessed", 'add field = "..."'
        )


def _needs(config: ExperimentConfig) -> Iterator[Problem]:
    d, t = config.dataset, config.traffic
    if d.source == "file" and not d.path:
        yield error("dataset.path", "is required when dataset.source = 'file'", 'add path = "prompts.jsonl"')
    elif d.source == "file" and d.path and not os.path.isfile(d.path):
        # Checked here too, so a typo fails before a model is loaded rather than after.
        yield error(
            "dataset.path",
            f"file not found (relative paths start at {os.getcwd()})",
            "check the path",
            d.path,
        )
    if d.source == "huggingface" and not d.name:
        yield error("dataset.name", "is required when dataset.source = 'huggingface'", 'e.g. name = "tatsu-lab/alpaca"')
    if d.input_length_distribution == "uniform" and (d.input_length_min is None or d.input_length_max is None):
        yield error(
            "dataset.input_length_distribution",
            "'uniform' needs dataset.input_length_min and dataset.input_length_max",
            value="uniform",
        )
    if d.input_length_distribution == "normal" and d.input_length_std is None:
        yield error("dataset.input_length_std", "is required for a 'normal' input length distribution")
    yield from _dataset_companions(config)
    if t.mode in ("poisson", "constant") and t.rate is None:
        yield error("traffic.rate", f"is required for traffic.mode = '{t.mode}'", "e.g. rate = 4.0 (requests/s)")
    if t.mode == "concurrency" and t.concurrency is None:
        yield error("traffic.concurrency", "is required for traffic.mode = 'concurrency'", "e.g. concurrency = 8")
    if t.mode == "offline" and (t.rate is not None or t.concurrency is not None):
        yield warning("traffic.mode", "is 'offline': traffic.rate and traffic.concurrency are ignored", value="offline")


def _install_hint(name: str, candidates: list[str]) -> str:
    dist = KNOWN_DISTRIBUTIONS.get(name)
    if dist:
        return f"pip install {dist}"
    close = difflib.get_close_matches(name, [*candidates, *KNOWN_DISTRIBUTIONS], n=1)
    if close:
        known = KNOWN_DISTRIBUTIONS.get(close[0])
        install = f" pip install {known}" if known and close[0] not in candidates else ""
        return f"did you mean '{close[0]}'?{install}"
    return f"install the plugin that provides '{name}'"


def _names(config: ExperimentConfig) -> Iterator[Problem]:
    backends = backend_names()
    if config.backend not in backends:
        installed = ", ".join(backends) or "none"
        yield error(
            "backend",
            f"is not an installed backend (installed: {installed})",
            _install_hint(config.backend, backends),
            config.backend,
        )
    yield from _meter_names(config)
    plugins = plugin_names()
    for table in config.backend_options:
        if table in plugins:
            continue
        if table in KNOWN_DISTRIBUTIONS:
            yield warning(
                table,
                "section for a backend that is not installed; it is ignored",
                _install_hint(table, []),
            )
            continue
        close = difflib.get_close_matches(table, [*CORE_TABLES, *plugins, *KNOWN_DISTRIBUTIONS], n=1)
        hint = f"did you mean [{close[0]}]?" if close else "remove it, or install the plugin it belongs to"
        yield error(table, "unknown table", hint)
    if config.backend in backends and config.backend_options and config.backend not in config.backend_options:
        others = [t for t in config.backend_options if t in plugins]
        if others:
            yield warning(
                others[0],
                f"section for backend '{others[0]}', but this experiment runs on '{config.backend}'; it is ignored",
            )


def _meter_names(config: ExperimentConfig) -> Iterator[Problem]:
    key, chosen = "measurement.energy_meter", config.measurement.energy_meter
    names = config.measurement.energy_meters
    meters = meter_names()
    if not names:
        yield error(key, "is an empty list", "name one meter or several, or 'none'", list(names))
    if len(names) > 1:
        for special in ("auto", "none"):
            if special in names:
                yield error(key, f"'{special}' cannot be combined with other meters", "list meter names only", chosen)
        for name in sorted({n for n in names if names.count(n) > 1}):
            yield error(key, f"names '{name}' twice", "list each meter once", list(names))
    for meter in dict.fromkeys(names):
        if meter not in ("auto", "none", *meters):
            installed = ", ".join(meters) or "none"
            shown = meter if isinstance(chosen, str) else list(chosen)
            what = "is not" if isinstance(chosen, str) else f"'{meter}' is not"
            yield error(
                key,
                f"{what} an installed energy meter (installed: {installed}; or 'auto', 'none')",
                _install_hint(meter, meters),
                shown,
            )


@hookimpl
def validate_config(config: ExperimentConfig) -> list[Problem]:
    """Core checks: value ranges, required companions, backend and meter names, stray tables."""
    return [*_ranges(config), *_needs(config), *_names(config)]
