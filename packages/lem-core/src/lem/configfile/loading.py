"""From a TOML file to validated experiments.

``preset < file < CLI``: the preset's tables are merged under the file, then
``--set key=value`` options over it; ``[sweep]`` expands into the cartesian
product; each experiment is structured by one strict cattrs converter and
checked by every plugin's ``validate_config``. All problems of all
experiments are reported together. The steps on plain dicts (reading,
overrides, merging, sweep expansion) are in :mod:`lem.configfile.documents`.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from lem.config import CORE_TABLES, ExperimentConfig
from lem.configfile.documents import (
    MAX_EXPERIMENTS,
    check_sweep,
    deep_merge,
    expand_sweep,
    experiment_id,
    parse_override,
    parse_toml,
    read_toml,
    set_dotted,
)
from lem.errors import ConfigError
from lem.options import did_you_mean
from lem.plugins import get_plugin_manager
from lem.types import MISSING, Problem, error


@attrs.frozen
class Experiment:
    """One expanded experiment: a stable id, its config and the sweep values that made it."""

    id: str
    config: ExperimentConfig
    sweep_values: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class LoadedFile:
    """A loaded experiment file: its experiments and the warnings found while checking them."""

    source: str
    experiments: tuple[Experiment, ...]
    warnings: tuple[Problem, ...]
    #: ``[campaign.launch]``: backend -> the command line its worker runs under (:mod:`lem.campaign.launcher`).
    launch: Mapping[str, str] = attrs.field(factory=dict)
    #: ``[campaign] start_timeout_s``: seconds a launched worker has to start (``None``: lem's default).
    start_timeout_s: float | None = None


def _campaign_table(table: Any) -> tuple[dict[str, str], float | None, list[Problem]]:
    """``[campaign]``: how the file's experiments are run, not what they are (no sweep, no --set reaches it)."""
    if not isinstance(table, Mapping):
        return {}, None, [error("campaign", "must be a table", 'write [campaign.launch] with backend = "command"')]
    problems = [
        error(f"campaign.{k}", "unknown key", "the keys are launch (a table) and start_timeout_s")
        for k in table
        if k not in ("launch", "start_timeout_s")
    ]
    launch = table.get("launch", {})
    if not isinstance(launch, Mapping):
        problems.append(error("campaign.launch", 'must be a table of backend = "command"', "", launch))
        launch = {}
    for backend, command in launch.items():
        if not isinstance(command, str) or not command.strip():
            hint = 'e.g. tensorrt = "docker run --rm -i --gpus all IMAGE python"'
            problems.append(error(f"campaign.launch.{backend}", "must be a command line (a string)", hint, command))
    timeout = table.get("start_timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        problems.append(error("campaign.start_timeout_s", "must be a number of seconds > 0", "", timeout))
        timeout = None
    good = {str(b): c for b, c in launch.items() if isinstance(c, str) and c.strip()}
    return good, None if timeout is None else float(timeout), problems


# --- the strict converter ---------------------------------------------------------


def _strict(kind: type, accept: tuple[type, ...]) -> Any:
    def hook(value: Any, _: Any) -> Any:
        # bool is an int subclass; ``true`` is never a number here.
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accept):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return kind(value)

    return hook


def _literal(value: Any, literal_type: Any) -> Any:
    allowed = typing.get_args(literal_type)
    # `type(...) is type(...)` so that `true` does not match a literal 1.
    if not any(value == a and type(value) is type(a) for a in allowed):
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"expected one of {choices}")
    return value


def _is_literal(t: Any) -> bool:
    origin: object = typing.get_origin(t)
    return origin is Literal


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _strict(int, (int,)))
    conv.register_structure_hook(float, _strict(float, (int, float)))
    conv.register_structure_hook(str, _strict(str, (str,)))
    conv.register_structure_hook(bool, _strict(bool, (bool,)))
    conv.register_structure_hook_func(_is_literal, _literal)
    conv.register_structure_hook(str | tuple[str, ...], _names)
    conv.register_structure_hook_func(lambda t: t == tuple[int, ...], _ints)
    return conv


def _ints(value: Any, _: Any) -> tuple[int, ...]:
    """A list of integers (``measurement.devices``): a string or a table is refused as a whole.

    cattrs would iterate them: ``"0,1"`` would give one error per character, ``{}`` no devices at all.
    """
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of integers, got {type(value).__name__} {value!r:.60}")
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise TypeError(f"expected a list of integers, got {type(bad[0]).__name__} {bad[0]!r:.60} in it")
    return tuple(value)


def _names(value: Any, _: Any) -> str | tuple[str, ...]:
    """``measurement.energy_meter``: one name or a list of names."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"expected a name or a list of names, got {type(value).__name__} {value!r}")


#: The one converter for configs: extra keys are errors, no ``"1" -> 1`` coercion.
converter = _make_converter()


# --- structuring and error reporting -----------------------------------------------


def _field_names(cl: type) -> list[str]:
    return [f.name for f in attrs.fields(cl) if f.name != "backend_options"]


def _problems_from(exc: BaseException, path: str) -> Iterator[Problem]:
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield error(_join(path, key), "unknown key", did_you_mean(key, _field_names(exc.cl)))
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            notes = [n for n in getattr(sub, "__notes__", []) if hasattr(n, "name") or hasattr(n, "index")]
            step = str(getattr(notes[0], "name", getattr(notes[0], "index", ""))) if notes else ""
            yield from _problems_from(sub, _join(path, step))
        return
    yield error(path, _message(exc))


def _message(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, (TypeError, ValueError)) and text.startswith("expected"):
        return text
    if "not a mapping" in text or isinstance(exc, AttributeError):
        return "expected a table"
    return text or type(exc).__name__


def _join(path: str, step: str) -> str:
    return f"{path}.{step}" if path and step else path or step


def _lookup(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def _structure_once(doc: Mapping[str, Any]) -> tuple[ExperimentConfig | None, list[Problem]]:
    core = {k: v for k, v in doc.items() if not (isinstance(v, Mapping) and k not in CORE_TABLES)}
    backend_tables = {k: dict(v) for k, v in doc.items() if isinstance(v, Mapping) and k not in CORE_TABLES}
    if "model" not in core:
        return None, [error("model", "is required", 'add e.g. model = "random:tiny-llama"')]
    try:
        config = converter.structure(core, ExperimentConfig)
    except Exception as exc:  # cattrs groups every problem; turn each into a line
        problems = []
        for p in _problems_from(exc, ""):
            value = _lookup(doc, p.path) if p.message != "unknown key" else MISSING
            problems.append(attrs.evolve(p, value=value))
        return None, problems
    return attrs.evolve(config, backend_options=backend_tables), []


def _without(doc: Mapping[str, Any], dotted: str) -> dict[str, Any]:
    out = copy.deepcopy(dict(doc))
    *parents, leaf = dotted.split(".")
    node: Any = out
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)
    return out


def structure(doc: Mapping[str, Any]) -> tuple[ExperimentConfig | None, list[Problem]]:
    """Structure one expanded document; returns the config or the problems.

    On structural problems (unknown keys, wrong types) the offending keys are
    dropped and the rest is structured again, so the problems of the valid
    part (ranges, names) are found in the same pass.
    """
    problems: list[Problem] = []
    for _ in range(5):
        config, found = _structure_once(doc)
        problems += [p for p in found if p not in problems]
        if config is not None or not found or not all(p.path for p in found):
            break
        for p in found:
            doc = _without(doc, p.path)
    if problems:
        if config is not None:
            problems += [p for p in validate(config) if p not in problems]
        return None, problems
    return config, []


def structure_leniently(doc: Mapping[str, Any]) -> tuple[ExperimentConfig | None, list[Problem]]:
    """Structure a stored config (a result's ``experiment.toml``), for reading results, not for running.

    A key this lem does not know, or whose value it cannot read (a result written by another version),
    is dropped so that its default stands, and returned as a problem; ranges are not checked (the run
    already happened). ``None`` only when no config can be made at all (no ``model``).
    """
    dropped: list[Problem] = []
    for _ in range(20):  # each round drops every key cattrs named; nested tables may need a few rounds
        config, found = _structure_once(doc)
        if config is not None:
            return config, dropped
        paths = [p.path for p in found if p.path and p.path != "model"]
        if not paths:
            break
        dropped += [p for p in found if p not in dropped]
        for path in paths:
            doc = _without(doc, path)
    return None, dropped


def unstructure(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a TOML-ready document (``None`` values left out; TOML has no null)."""
    doc: dict[str, Any] = converter.unstructure(config)
    doc.pop("backend_options", None)
    doc.update({k: dict(v) for k, v in config.backend_options.items()})
    cleaned: dict[str, Any] = _drop_none(doc)
    return cleaned


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def dumps(config: ExperimentConfig) -> str:
    """The config as TOML text, exactly as it will run."""
    import tomli_w

    return tomli_w.dumps(unstructure(config))


def loads(text: str) -> tuple[ExperimentConfig | None, list[Problem]]:
    """A config from TOML text as :func:`dumps` writes it (an ``experiment.toml``): the config or the problems.

    :raises lem.configfile.documents.TOMLDecodeError: when ``text`` is not TOML.
    """
    return structure(parse_toml(text))


# --- the whole pipeline -------------------------------------------------------------


def presets() -> dict[str, Mapping[str, Any]]:
    """Every preset, built-in and contributed by plugins."""
    merged: dict[str, Mapping[str, Any]] = {}
    for contribution in get_plugin_manager().hook.register_presets():
        merged.update(contribution)
    return merged


def validate(config: ExperimentConfig) -> list[Problem]:
    """Every plugin's ``validate_config`` problems for one config."""
    problems: list[Problem] = []
    for found in get_plugin_manager().hook.validate_config(config=config):
        problems.extend(found or [])
    return problems


def _checked_elsewhere(problem: Problem, config: ExperimentConfig, external: Collection[str]) -> bool:
    # A backend installed in another interpreter is validated there, by the worker that runs it.
    b = config.backend
    return b in external and (problem.path in ("backend", b) or problem.path.startswith(f"{b}."))


def load(
    path: str | Path,
    preset: str | None = None,
    overrides: Iterable[str] = (),
    external_backends: Collection[str] = (),
) -> LoadedFile:
    """Load, merge, expand and validate an experiment file.

    :param preset: overrides the file's own ``preset = ...``.
    :param overrides: ``key=value`` strings from the CLI; they win over everything.
    :param external_backends: backends that run in another interpreter (``lem run --python``):
        their names and tables are checked by that interpreter's plugins, not here.
    :raises ConfigError: with every error found, in every experiment.
    """
    source = str(path)
    doc = read_toml(path)
    parsed = [parse_override(o) for o in overrides]
    problems: list[Problem] = []
    # The preset is merged under the file before --set applies: `--set preset=X` is --preset X
    # (set over the merged document it would name a preset that was never applied).
    set_presets = [value for key, value in parsed if key == "preset"]
    parsed = [(key, value) for key, value in parsed if key != "preset"]
    if set_presets and preset is not None and set_presets[-1] != preset:
        problems.append(error("--set", f"preset={set_presets[-1]!r} contradicts --preset {preset}", "give one"))
    elif set_presets:
        preset = set_presets[-1]

    axes, sweep_problems = check_sweep(doc.pop("sweep", {}))
    problems += sweep_problems
    launch, start_timeout_s, campaign_problems = _campaign_table(doc.pop("campaign", {}))
    problems += campaign_problems
    # A launched backend runs where it is installed: its worker checks its names and tables there.
    external_backends = {*external_backends, *launch}
    if "preset" in axes:
        problems.append(
            error(
                "sweep.preset",
                "a preset cannot be swept: it is merged under the file before the sweep expands",
                "write one file per preset, or run the file once per preset with --preset NAME",
            )
        )
    count = math.prod(len(v) for v in axes.values())
    if count > MAX_EXPERIMENTS:
        sizes = " x ".join(str(len(v)) for v in axes.values())
        problems.append(
            error(
                "sweep",
                f"expands to {count} experiments ({sizes}), more than {MAX_EXPERIMENTS}",
                "split it into several files",
            )
        )

    preset_name = preset if preset is not None else doc.get("preset")
    if preset_name is not None:
        available = presets()
        if not isinstance(preset_name, str) or preset_name not in available:
            hint = did_you_mean(str(preset_name), available, otherwise="")
            problems.append(
                error("preset", f"unknown preset; available: {', '.join(sorted(available))}", hint, preset_name)
            )
        else:
            doc = deep_merge(available[preset_name], doc)
            doc["preset"] = preset_name

    experiments: list[Experiment] = []
    warnings: list[Problem] = []
    if not problems:
        try:
            expansions = expand_sweep(doc, axes)
        except ConfigError as exc:
            raise ConfigError(exc.problems, source) from None
        for index, (expanded, values) in enumerate(expansions):
            try:
                for key, value in parsed:
                    set_dotted(expanded, key, value, where="--set")
            except ConfigError as exc:
                raise ConfigError(exc.problems, source) from None
            config, found = structure(expanded)
            if config is not None:
                found = validate(config)
            for p in found:
                if config is not None and _checked_elsewhere(p, config, external_backends):
                    continue
                target = problems if p.severity == "error" else warnings
                if p not in target:
                    target.append(p)
            if config is not None:
                experiments.append(Experiment(experiment_id(index, values), config, values))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors, source)
    return LoadedFile(source, tuple(experiments), tuple(warnings), launch, start_timeout_s)


def load_one(path: str | Path, **kwargs: Any) -> ExperimentConfig:
    """Load a file that holds exactly one experiment (no sweep)."""
    loaded = load(path, **kwargs)
    if len(loaded.experiments) != 1:
        raise ConfigError(
            [error("sweep", f"expands to {len(loaded.experiments)} experiments; expected one")], str(path)
        )
    return loaded.experiments[0].config


def config_from_dict(doc: Mapping[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Structure and validate a config given as a dict (tests, programmatic use)."""
    config, problems = structure(doc)
    if config is not None:
        problems = validate(config)
    errors = [p for p in problems if p.severity == "error"]
    if errors or config is None:
        raise ConfigError(errors, source)
    return config


__all__: Sequence[str] = (
    "Experiment",
    "LoadedFile",
    "config_from_dict",
    "converter",
    "dumps",
    "load",
    "load_one",
    "read_toml",
)
