"""The core's own ``validate_config``: ranges, names of backends and meters, stray tables.

Registered as a built-in plugin, so the core's checks and the plugins' checks
go through the same hook and are reported together.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from lem import architectures
from lem.config import CORE_TABLES, DatasetConfig, ExperimentConfig, SloConfig
from lem.errors import PromptError
from lem.figures.quality import scorers
from lem.figures.registry import FIGURES
from lem.hookspecs import hookimpl
from lem.options import closest, did_you_mean
from lem.plugins import KNOWN_DISTRIBUTIONS, backend_names, meter_names, plugin_names
from lem.prompts.builtin import SUBSETS
from lem.prompts.files import check_file
from lem.types import Problem, error, warning

#: Largest prompt or output length accepted, in tokens (no model has a context near it).
MAX_TOKENS = 10_000_000
#: Largest number of synthetic prompt tokens an experiment may hold in memory at once.
MAX_PROMPT_TOKENS = 100_000_000
#: Longest idle baseline or cool-down, in seconds.
MAX_WAIT_S = 3600.0
#: TOML integers are 64-bit signed; a larger one cannot be written back to experiment.toml.
MAX_INT = 2**63 - 1

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
    ("measurement.min_window_s", lambda v: v >= 0, "must be >= 0 seconds (0 serves the prompt set once)"),
    ("measurement.target_rel_ci", lambda v: v is None or 0 < v < 1, "must be in (0, 1) (0.02 means ±2%)"),
    ("measurement.max_cycles", lambda v: v is None or v >= 2, "must be >= 2 (a confidence interval needs 2)"),
    ("measurement.idle_seconds", lambda v: v >= 0, "must be >= 0 (0 skips the idle baseline)"),
    ("measurement.sampling_interval_ms", lambda v: v > 0, "must be > 0"),
    ("measurement.cooldown_seconds", lambda v: v >= 0, "must be >= 0"),
    ("measurement.stall_timeout_s", lambda v: v > 0, "must be > 0 seconds"),
    ("measurement.max_failed_share", lambda v: 0 <= v <= 1, "must be in [0, 1] (0.05: up to 5% may fail)"),
    ("measurement.cross_check_threshold", lambda v: 0 < v < 1, "must be in (0, 1) (0.05 means 5%)"),
    ("measurement.validity_retries", lambda v: 0 <= v <= 1000, "must be in [0, 1000]"),
    ("measurement.max_throttle_share", lambda v: 0 <= v <= 1, "must be in [0, 1] (0.05: 5% of samples)"),
    ("measurement.max_temperature_step_c", lambda v: v > 0, "must be > 0 degrees Celsius"),
    ("measurement.settle_wait_s", lambda v: 0 <= v <= 3600, "must be in [0, 3600] seconds"),
    ("measurement.max_host_cpu_share", lambda v: 0 < v <= 1, "must be in (0, 1] (0.25: a quarter of all CPUs)"),
    ("measurement.max_load_per_cpu", lambda v: v > 0, "must be > 0"),
    ("measurement.max_steal_share", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("measurement.max_throughput_deviation", lambda v: 0 < v, "must be > 0 (0.25 means 25% from the median)"),
    ("sharding.tensor_parallel_size", lambda v: v >= 1, "must be >= 1"),
    ("sharding.pipeline_parallel_size", lambda v: v >= 1, "must be >= 1"),
    # Upper bounds: far beyond any real use, low enough that a typo is refused at once instead of
    # making lem allocate or wait for hours (an input length of 10**9, idle_seconds = 1e12).
    ("dataset.num_prompts", lambda v: v <= 1_000_000, "must be <= 1000000"),
    ("dataset.input_length", lambda v: v <= MAX_TOKENS, f"must be <= {MAX_TOKENS} tokens"),
    ("dataset.input_length_min", lambda v: v is None or v <= MAX_TOKENS, f"must be <= {MAX_TOKENS} tokens"),
    ("dataset.input_length_max", lambda v: v is None or v <= MAX_TOKENS, f"must be <= {MAX_TOKENS} tokens"),
    ("dataset.max_input_tokens", lambda v: v is None or v <= MAX_TOKENS, f"must be <= {MAX_TOKENS} tokens"),
    ("generation.max_output_tokens", lambda v: v <= MAX_TOKENS, f"must be <= {MAX_TOKENS} tokens"),
    ("batching.batch_size", lambda v: v <= 1_000_000, "must be <= 1000000"),
    ("traffic.rate", lambda v: v is None or v <= 1e6, "must be <= 1000000 requests per second"),
    ("traffic.concurrency", lambda v: v is None or v <= 1_000_000, "must be <= 1000000"),
    ("measurement.warmup_requests", lambda v: v <= 1_000_000, "must be <= 1000000"),
    ("measurement.warmup_max_requests", lambda v: v <= 1_000_000, "must be <= 1000000"),
    ("measurement.cycles", lambda v: v <= 10_000, "must be <= 10000"),
    ("measurement.max_cycles", lambda v: v is None or v <= 10_000, "must be <= 10000"),
    ("measurement.min_window_s", lambda v: v <= MAX_WAIT_S, f"must be <= {MAX_WAIT_S:g} seconds (an hour)"),
    ("measurement.idle_seconds", lambda v: v <= MAX_WAIT_S, f"must be <= {MAX_WAIT_S:g} seconds (an hour)"),
    ("measurement.cooldown_seconds", lambda v: v <= MAX_WAIT_S, f"must be <= {MAX_WAIT_S:g} seconds (an hour)"),
    ("measurement.sampling_interval_ms", lambda v: v <= 60_000, "must be <= 60000 ms"),
    ("measurement.stall_timeout_s", lambda v: v <= 7 * 86400, "must be <= 604800 seconds (a week)"),
    ("measurement.thermal_floor_c", lambda v: v is None or 0 < v <= 150, "must be in (0, 150] degrees Celsius"),
    *(
        (f"slo.{key}", lambda v: v is None or 0 < v <= MAX_WAIT_S * 1e3, "must be in (0, 3600000] milliseconds")
        for key in ("ttft_ms", "tpot_ms", "e2e_ms")
    ),
    ("slo.percentile", lambda v: 0 < v <= 100, "must be in (0, 100] (99 checks p99)"),
    ("hardware.peak_memory_bandwidth_gbs", lambda v: v is None or 0 < v <= 1e6, "must be in (0, 1000000] GB/s"),
    ("hardware.peak_tflops", lambda v: v is None or 0 < v <= 1e6, "must be in (0, 1000000] TFLOP/s"),
]


def get(config: Any, dotted: str) -> Any:
    """Read a dotted attribute path (``"generation.top_p"``) from a config."""
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _numbers(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every number of a config, with its dotted key."""
    for field in attrs.fields(type(node)):
        value = getattr(node, field.name)
        key = f"{path}{field.name}"
        if attrs.has(type(value)):
            yield from _numbers(value, f"{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, value
        elif isinstance(value, tuple):
            yield from ((key, v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool))


def _ranges(config: ExperimentConfig) -> Iterator[Problem]:
    bad: set[str] = set()
    for key, value in _numbers(config):
        if isinstance(value, float) and not math.isfinite(value):
            bad.add(key)
            yield error(key, "must be a finite number", value=value)
        elif isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
            bad.add(key)
            yield error(key, f"is beyond the 64-bit integers TOML allows (|value| <= {MAX_INT})", value=value)
    for key, ok, must in _RANGES:
        value = get(config, key)
        if key not in bad and not ok(value):
            bad.add(key)
            yield error(key, must, value=value)
    m = config.measurement
    if m.max_cycles is not None and m.max_cycles < m.cycles and "measurement.max_cycles" not in bad:
        yield error("measurement.max_cycles", f"is smaller than measurement.cycles ({m.cycles})", value=m.max_cycles)
    if m.max_cycles is not None and m.target_rel_ci is None:
        yield warning(
            "measurement.max_cycles",
            "has no effect without measurement.target_rel_ci",
            hint="set measurement.target_rel_ci (e.g. 0.02), or drop max_cycles",
        )
    if config.slo.tpot_ms is not None and config.generation.num_beams > 1:
        yield warning(
            "slo.tpot_ms",
            "cannot be checked under beam search (generation.num_beams > 1: tokens do not stream): goodput is null",
            hint="drop slo.tpot_ms, or use num_beams = 1",
        )
    if not config.slo.targets_ms and config.slo.percentile != SloConfig().percentile:
        yield warning(
            "slo.percentile",
            "has no effect without a target: no goodput is computed",
            hint="set slo.ttft_ms, slo.tpot_ms or slo.e2e_ms",
        )
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
    elif d.source == "file" and d.path:
        yield from _prompt_file(d)
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
    if t.mode in ("poisson", "constant") and t.rate is not None and 0 < t.rate <= 1e6:
        yield from _slow_arrivals(config, t.rate)


#: A cycle whose arrivals alone take longer than this is most likely a typo in ``traffic.rate``.
SLOW_CYCLE_S = 3600.0
#: Seconds beyond which a cycle's arrivals are an error: a year.
LONGEST_CYCLE_S = 365 * 86400.0


def _slow_arrivals(config: ExperimentConfig, rate: float) -> Iterator[Problem]:
    """A rate so small that the arrivals of the measured cycles alone would take hours or days."""
    m = config.measurement
    per_cycle = config.dataset.num_prompts / rate
    if per_cycle <= SLOW_CYCLE_S:
        return
    fix = "raise traffic.rate (requests per second) or lower dataset.num_prompts"
    if per_cycle > LONGEST_CYCLE_S:  # arrival times past this are not a measurement (and overflow near 1e-290/s)
        yield error(
            "traffic.rate",
            f"{config.dataset.num_prompts} prompts arriving at {rate:g} per second take {per_cycle / 86400:.3g} days"
            f" per cycle, longer than a cycle may last ({LONGEST_CYCLE_S / 86400:g} days)",
            fix,
            rate,
        )
        return
    total = per_cycle * (m.cycle_limit + (1 if m.prefill_pass else 0) * m.cycle_limit)
    yield warning(
        "traffic.rate",
        f"{config.dataset.num_prompts} prompts arriving at {rate:g} per second take {per_cycle / 3600:.1f} h per cycle"
        f" (about {total / 86400:.1f} days for {m.cycle_limit} cycle(s))",
        fix,
        rate,
    )


def _prompt_file(d: DatasetConfig) -> Iterator[Problem]:
    """A prompt file is local: read it now, so that its errors come before a model is loaded."""

    path = os.path.expanduser(d.path or "")
    if os.path.isdir(path):
        yield error("dataset.path", "is a directory, not a file", "give the path of a prompt file", d.path)
    elif not os.path.isfile(path):
        yield error("dataset.path", f"file not found (relative paths start at {os.getcwd()})", "check the path", d.path)
    else:
        try:
            check_file(d)
        except PromptError as exc:
            yield error("dataset.path", str(exc), value=d.path)


def _lengths(config: ExperimentConfig) -> Iterator[Problem]:
    """Synthetic prompts that would not fit in memory, or in a built-in model's context."""
    d, g = config.dataset, config.generation
    sizes = (d.input_length, g.max_output_tokens, d.input_length_max or 1, d.max_input_tokens or 1)
    if d.source != "synthetic" or not all(0 < v <= MAX_TOKENS for v in sizes) or not 0 < d.num_prompts <= 1_000_000:
        return  # out of range: reported by _ranges
    longest = d.input_length_max if d.input_length_distribution != "fixed" and d.input_length_max else d.input_length
    if d.max_input_tokens is not None:
        longest = min(longest, d.max_input_tokens)
    if 0 < d.num_prompts * longest > MAX_PROMPT_TOKENS:
        yield error(
            "dataset.num_prompts",
            f"x input length {longest} is {d.num_prompts * longest} prompt tokens, more than {MAX_PROMPT_TOKENS}",
            "lower dataset.num_prompts or dataset.input_length",
            d.num_prompts,
        )
    if not architectures.is_builtin(config.model):
        return
    try:
        shape = architectures.model_config(architectures.builtin_name(config.model))
    except KeyError:
        return  # reported by _model
    context = shape.get("max_position_embeddings") or shape.get("n_positions")
    if context and longest + g.max_output_tokens > context:
        yield error(
            "dataset.input_length",
            f"{longest} input + {g.max_output_tokens} output tokens exceed the context of {config.model}"
            f" ({context} tokens)",
            "lower dataset.input_length or generation.max_output_tokens",
            longest,
        )


def _looks_local(name: str) -> bool:
    # A Hub id is "name" or "org/name"; anything with a path prefix or more parts is a path.
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") >= 2 or os.path.isabs(name)


def _model(config: ExperimentConfig) -> Iterator[Problem]:
    if architectures.is_builtin(config.model):
        try:
            architectures.builtin_name(config.model)
        except KeyError:
            known = [r["model"] for r in architectures.describe()]
            hint = did_you_mean(config.model, known, otherwise="see `lem models`")
            yield error("model", f"unknown built-in architecture (known: {', '.join(known)})", hint, config.model)
    if not config.model.strip():
        yield error("model", "is empty", 'name a model, e.g. model = "random:tiny-llama"', config.model)
    if config.adapter is not None and not config.adapter.strip():
        yield error("adapter", "is empty", "name an adapter, or remove the key for none", config.adapter)
    for key in ("model", "adapter", "revision", "dataset.path", "dataset.name"):
        value = get(config, key)
        if isinstance(value, str) and any(ord(c) < 32 for c in value):
            # A path or an id never holds control characters; a NUL would fail only when the model loads.
            yield error(key, "holds a control character", "check the quoting of this value", value)
    for key, value in (("model", config.model), ("adapter", config.adapter)):
        if (
            value
            and not architectures.is_builtin(value)
            and _looks_local(value)
            and not os.path.exists(os.path.expanduser(value))
        ):
            yield error(
                key,
                f"local path not found (relative paths start at {os.getcwd()})",
                "check the path; a Hugging Face id has the form 'org/name'",
                value,
            )


def _install_hint(name: str, candidates: list[str]) -> str:
    dist = KNOWN_DISTRIBUTIONS.get(name)
    if dist:
        return f"pip install {dist}"
    match = closest(name, [*candidates, *KNOWN_DISTRIBUTIONS])
    if match is not None:
        known = KNOWN_DISTRIBUTIONS.get(match)
        install = f" pip install {known}" if known and match not in candidates else ""
        return f"did you mean '{match}'?{install}"
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
        match = closest(table, [*CORE_TABLES, *plugins, *KNOWN_DISTRIBUTIONS])
        hint = f"did you mean [{match}]?" if match else "remove it, or install the plugin it belongs to"
        yield error(table, "unknown table", hint)
    if config.backend in backends and config.backend_options and config.backend not in config.backend_options:
        # A meter's table ([codecarbon]) is not a backend's: only backend tables are "for another backend".
        others = [t for t in config.backend_options if t in backends]
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
    return [
        *_ranges(config),
        *_model(config),
        *_needs(config),
        *_lengths(config),
        *_names(config),
        *_quality(config),
        *_target_figures(config),
    ]


def _quality(config: ExperimentConfig) -> Iterator[Problem]:
    """``[quality]`` and ``dataset.reference_field`` come together, from a source that has fields."""
    d, q = config.dataset, config.quality
    if d.reference_field is not None and d.source not in ("file", "huggingface"):
        yield error(
            "dataset.reference_field", f"source '{d.source}' has no references", "use source 'file' or 'huggingface'"
        )
    if d.reference_field is not None and q is None:
        yield error(
            "dataset.reference_field",
            "is set but there is no [quality] table to score against it",
            'add [quality] scorer = "exact"',
        )
    if q is None:
        return
    if d.reference_field is None:
        yield error("quality", "needs references to score against", 'set dataset.reference_field = "answer"')
    known = scorers()
    if q.scorer not in known:
        yield error("quality.scorer", "is not an installed scorer", did_you_mean(q.scorer, sorted(known)), q.scorer)
    if q.scorer == "regex":
        if not q.pattern:
            yield error("quality.pattern", "is required by scorer 'regex'", 'e.g. pattern = "answer: (\\w+)"')
        else:
            try:
                re.compile(q.pattern)
            except re.error as exc:
                yield error("quality.pattern", f"is not a regular expression ({exc})", value=q.pattern)
    elif q.pattern is not None:
        yield warning("quality.pattern", f"is only used by scorer 'regex'; ignored for '{q.scorer}'")


def _target_figures(config: ExperimentConfig) -> Iterator[Problem]:
    """``measurement.target_figures``: figures a precision target may apply to, and only with a target."""
    names = config.measurement.target_figures
    if names is None:
        return
    key = "measurement.target_figures"
    eligible = [f.name for f in FIGURES if f.precision_target]
    if not names:
        yield error(key, "is an empty list", f"name one figure or several: {', '.join(eligible)}", [])
    for name in names:
        if name not in eligible:
            yield error(key, f"'{name}' cannot carry a precision target", did_you_mean(name, eligible), list(names))
    if config.measurement.target_rel_ci is None:
        yield warning(key, "has no effect without measurement.target_rel_ci", "set measurement.target_rel_ci")
