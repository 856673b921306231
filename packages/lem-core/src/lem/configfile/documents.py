"""TOML documents before they are configs: reading a file, ``--set`` overrides, merging, sweeps.

Everything here works on plain dicts; :mod:`lem.configfile.loading` turns the results into
checked :class:`~lem.config.ExperimentConfig` objects.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lem.errors import ConfigError
from lem.types import Problem, error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


#: What :func:`parse_toml` raises on text that is not TOML.
TOMLDecodeError = tomllib.TOMLDecodeError


# --- reading ----------------------------------------------------------------------


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text as a document (tomllib; tomli below Python 3.11); :data:`TOMLDecodeError` if it is not TOML."""
    return tomllib.loads(text)


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


def check_sweep(sweep: Any) -> tuple[dict[str, list[Any]], list[Problem]]:
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
