"""From a TOML file to validated experiments.

``preset < file < CLI``: the preset's tables are merged under the file, then
``--set key=value`` options over it; ``[sweep]`` expands into the cartesian
product; each experiment is structured by one strict cattrs converter and
checked by every plugin's ``validate_config``. All problems of all
experiments are reported together.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import math
import sys
import typing
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from lem.config import CORE_TABLES, ExperimentConfig
from lem.errors import ConfigError
from lem.types import MISSING, Problem, error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


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


# --- reading ----------------------------------------------------------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing, unreadable or non-UTF-8 file or a syntax error is a :class:`ConfigError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [error("", "file not found", "check the path, or start from examples/quickstart.toml")],
            str(p),
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            [error("", "is a directory, not a TOML file", "give the path of a .toml file")], str(p)
        ) from None
    except OSError as exc:
        raise ConfigError([error("", f"cannot be read ({exc.strerror})", "check its permissions")], str(p)) from None
    # Editors on Windows save UTF-8 with a byte-order mark; it is not part of the TOML text.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [error("", f"is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})", "save it as UTF-8")],
            str(p),
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already carries "(at line L, column C)".
        raise ConfigError(
            [error("", f"TOML syntax error: {exc}", "see https://toml.io for the syntax")], str(p)
        ) from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a CLI ``key=value``; the value is read as TOML, or as a bare string (a word, a path)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError([error("--set", "expected KEY=VALUE", "e.g. --set generation.max_output_tokens=64", text)])
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError([error("--set", f"'{key}' is not a dotted key", "e.g. --set generation.top_p=0.9", text)])
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as exc:
        # A bare word is a string; text that starts like a TOML array, table or quoted string was meant as one.
        if raw[:1] in ("[", "{", '"', "'"):
            raise ConfigError(
                [
                    error(
                        "--set",
                        f"{key}: not a TOML value ({exc})",
                        "quote strings, e.g. --set model='\"org/name\"'",
                        raw,
                    )
                ]
            ) from None
        value = raw
    return key, value


def set_dotted(doc: dict[str, Any], key: str, value: Any, where: str | None = None) -> None:
    """Set ``a.b.c`` in a nested dict, creating tables on the way.

    :param where: where the key came from (``--set``, ``sweep.a.b``): then a parent that holds a
        value, not a table, is a :class:`ConfigError` instead of being replaced by a table
        (``--set model.name=x`` must not silently drop ``model``).
    """
    *parents, leaf = key.split(".")
    node = doc
    for i, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            if where is not None and child is not None:
                parent = ".".join(parents[: i + 1])
                raise ConfigError(
                    [error(where, f"{key}: '{parent}' is a value ({child!r}), not a table", f"set '{parent}' itself")]
                )
            child = node[part] = {}
        node = child
    node[leaf] = value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, table by table."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: A sweep larger than this is refused before it is expanded (expanding it alone would take minutes).
MAX_EXPERIMENTS = 100_000


# --- sweep --------------------------------------------------------------------------


def _check_sweep(sweep: Any) -> tuple[dict[str, list[Any]], list[Problem]]:
    if not isinstance(sweep, Mapping):
        return {}, [error("sweep", "must be a table of dotted keys to lists", 'e.g. "batching.batch_size" = [1, 8]')]
    problems = []
    axes: dict[str, list[Any]] = {}
    for key, values in _flatten(sweep):
        if not isinstance(values, list):
            problems.append(error(f"sweep.{key}", "must be a list of values", f'write "{key}" = [...]', values))
        elif not values:
            problems.append(error(f"sweep.{key}", "is an empty list", "give at least one value or remove the key"))
        else:
            axes[key] = values
    return axes, problems


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    # Both `"batching.batch_size" = [...]` and `[sweep.batching] batch_size = [...]` are accepted.
    for key, value in table.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _slug(value: Any) -> str:
    # default=str: TOML has dates and times, which JSON has not.
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    # ASCII only: other alphanumerics (and look-alike separators) have no place in a directory name.
    keep = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in text)
    return keep[:40]


def experiment_id(index: int, values: Mapping[str, Any]) -> str:
    """A stable, readable id: position in the sweep plus the swept values.

    Keys and values are both reduced to ``[A-Za-z0-9._-]`` (and never start with a dot), so
    an id is always one directory name: no separator, no ``..``, whatever the file says.
    """
    if not values:
        return "exp"
    parts = [f"{_slug(key.rsplit('.', 1)[-1])}={_slug(v)}" for key, v in values.items()]
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{index:03d}-{'-'.join(parts)}"[:96] + f"-{digest}"


def expand_sweep(doc: Mapping[str, Any], axes: Mapping[str, list[Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The cartesian product of ``axes`` applied to ``doc``: ``(document, swept values)`` pairs."""
    keys = list(axes)
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        expanded = copy.deepcopy(dict(doc))
        values = dict(zip(keys, combo, strict=True))
        for key, value in values.items():
            set_dotted(expanded, key, value, where=f"sweep.{key}")
        out.append((expanded, values))
    return out


# --- structuring and error reporting -----------------------------------------------


def _field_names(cl: type) -> list[str]:
    return [f.name for f in attrs.fields(cl) if f.name != "backend_options"]


def _problems_from(exc: BaseException, path: str) -> Iterator[Problem]:
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            close = difflib.get_close_matches(key, _field_names(exc.cl), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(_field_names(exc.cl))}"
            yield error(_join(path, key), "unknown key", hint)
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


# --- the whole pipeline -------------------------------------------------------------


def presets() -> dict[str, Mapping[str, Any]]:
    """Every preset, built-in and contributed by plugins."""
    from lem.plugins import get_plugin_manager

    merged: dict[str, Mapping[str, Any]] = {}
    for contribution in get_plugin_manager().hook.register_presets():
        merged.update(contribution)
    return merged


def validate(config: ExperimentConfig) -> list[Problem]:
    """Every plugin's ``validate_config`` problems for one config."""
    from lem.plugins import get_plugin_manager

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

    axes, sweep_problems = _check_sweep(doc.pop("sweep", {}))
    problems += sweep_problems
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
            close = difflib.get_close_matches(str(preset_name), list(available), n=1)
            hint = f"did you mean '{close[0]}'?" if close else ""
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
    return LoadedFile(source, tuple(experiments), tuple(warnings))


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
