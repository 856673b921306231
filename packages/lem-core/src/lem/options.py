"""One way for a plugin to declare its table: :class:`Option`, :class:`Table`, and the checks over them.

A backend (or meter) declares its ``[name]`` table once, as a :class:`Table`
of :class:`Option` s: each key's Python type, bounds or choices, default,
the library call and argument it reaches, and its documentation. From that
one declaration come

- :func:`check`: unknown keys (with a did-you-mean), wrong types (a string
  where a number is meant, ``true`` for a number, NaN or infinity, a nested
  table where a map of strings is meant, integers of 2**31 and beyond) and
  values out of range, as the core's one-line :class:`~lem.types.Problem` s;
- :func:`check_library`: the arguments the table reaches, checked against the
  installed library's signatures (skipped where the library is missing);
- :func:`unapplied`: ``generation.X is not applied by this backend`` warnings
  from a declarative map;
- :func:`rows` and :func:`markdown`: what ``lem plugins --options NAME`` prints
  and what the package README's option table must say.

A plugin makes its tables visible to ``lem plugins --options`` by a module
attribute ``TABLES`` (a tuple of :class:`Table`) on the object it registers.
:func:`did_you_mean` is the one did-you-mean hint of the whole project.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import cattrs

from lem.types import Problem, error, warning

#: TOML integers beyond this reach C ``int`` arguments as overflows: every integer option stays below it.
INT_LIMIT = 2**31


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that ``word`` most likely misspells, if any is close enough."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], *, otherwise: str | None = None) -> str:
    """``"did you mean 'x'?"`` naming the closest of ``choices``, else ``otherwise`` (default: list them)."""
    known = list(choices)
    match = closest(word, known)
    if match is not None:
        return f"did you mean '{match}'?"
    return otherwise if otherwise is not None else "known keys: " + ", ".join(sorted(known))


@attrs.frozen
class Option:
    """One key of a plugin's table.

    :param key: the TOML key.
    :param type: its Python type (``int``, ``float``, ``bool``, ``str``, ``list[str]``,
        ``dict[str, str]``, ``Mapping[str, Any]`` for a free table, or a union of these).
        ``float`` takes TOML integers too; ``bool`` is never taken for a number.
    :param doc: what it does, one line.
    :param default: the value when the key is absent (``None``: the library's own default).
    :param call: the library call it reaches (``"Llama"``, ``"EngineArgs"``); ``None``: lem handles it.
    :param argument: the argument of ``call`` it becomes (default: ``key``).
    :param aliases: older names of ``argument`` a library release may still use instead.
    :param choices: the values it takes, when they are a fixed set.
    :param pattern: a regular expression other strings must match (with ``choices``: either one).
    :param ge: lower bound, inclusive (``gt``: exclusive); ``le`` / ``lt`` likewise for the upper bound.
        For a list or a map of numbers, the bounds of each item. Every numeric key declares bounds (a test holds
        each plugin to it); floats are finite and integers below 2**31 whatever the bounds.
    :param table: the declaration of a nested table (``[vllm.speculative]``), checked like the top one.
    """

    key: str
    type: Any
    doc: str
    default: Any = None
    call: str | None = None
    argument: str | None = None
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] = ()
    pattern: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    table: Table | None = None

    @property
    def reaches(self) -> str:
        """``"Llama(n_ctx=)"``, or ``"lem"`` for a key lem handles itself."""
        if self.call is None:
            return "lem"
        return f"{self.call}({self.argument or self.key}=)"

    @property
    def names(self) -> tuple[str, ...]:
        """The library argument names it may go to, newest first."""
        return (self.argument or self.key, *self.aliases)


@attrs.frozen
class Table:
    """A plugin's table: ``[name]`` (or a nested ``[name.sub]``) and its options.

    :param name: the dotted table name (``"pytorch"``, ``"pytorch.continuous"``).
    :param options: its keys, in the order docs and ``lem plugins --options`` show them.
    :param doc: one line on what the table configures.
    :param calls: library call named by :attr:`Option.call` -> ``"module:attribute.path"`` that
        :func:`check_library` imports to read its signature (``"llama_cpp:Llama.__init__"``).
    """

    name: str
    options: tuple[Option, ...]
    doc: str = ""
    calls: Mapping[str, str] = attrs.field(factory=dict)

    def __getitem__(self, key: str) -> Option:
        for option in self.options:
            if option.key == key:
                return option
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, key: object) -> bool:
        return any(o.key == key for o in self.options)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key, in declaration order."""
        return tuple(o.key for o in self.options)

    def defaults(self) -> dict[str, Any]:
        """key -> default, for keys with one."""
        return {o.key: o.default for o in self.options if o.default is not None}


# --- types: one strict converter -----------------------------------------------------------------


class _Wrong(ValueError):
    """A value that is not of the declared type (the message says what it must be)."""


def _strict_int(value: Any, _: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Wrong("an integer")
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise _Wrong("an integer below 2**31")
    return value


def _strict_float(value: Any, _: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _Wrong("int or float")
    if not math.isfinite(value):
        raise _Wrong("a finite number")
    return float(value)


def _strict_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _Wrong("a string")
    return value


def _strict_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise _Wrong("true or false")
    return value


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, Sequence)


def _is_map(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(Any, lambda value, _: value)

    def union(tp: Any) -> Callable[[Any, Any], Any]:
        members = [m for m in typing.get_args(tp) if m is not type(None)]

        def structure(value: Any, _: Any) -> Any:
            for member in members:
                try:
                    return conv.structure(value, member)
                except _Wrong:
                    continue
            raise _Wrong(describe_type(tp))

        return structure

    def sequence(tp: Any) -> Callable[[Any, Any], Any]:
        (item,) = typing.get_args(tp) or (Any,)

        def structure(value: Any, _: Any) -> list[Any]:
            # A TOML string is iterable: without this check "ab" would be the list ["a", "b"].
            if not isinstance(value, list):
                raise _Wrong(describe_type(tp))
            try:
                return [conv.structure(v, item) for v in value]
            except _Wrong:
                raise _Wrong(describe_type(tp)) from None

        return structure

    def mapping(tp: Any) -> Callable[[Any, Any], Any]:
        _, item = typing.get_args(tp) or (str, Any)

        def structure(value: Any, _: Any) -> dict[str, Any]:
            if not isinstance(value, Mapping):
                raise _Wrong(describe_type(tp))
            try:
                return {str(k): conv.structure(v, item) for k, v in value.items()}
            except _Wrong:
                raise _Wrong(describe_type(tp)) from None

        return structure

    conv.register_structure_hook_factory(_is_union, union)
    conv.register_structure_hook_factory(_is_list, sequence)
    conv.register_structure_hook_factory(_is_map, mapping)
    return conv


#: The one converter for plugin tables: no ``"1" -> 1`` coercion, no ``true`` for a number, no NaN.
converter = _make_converter()

_NAMES = {int: "an integer", float: "int or float", str: "a string", bool: "true or false"}


def describe_type(tp: Any) -> str:
    """``int`` -> ``"an integer"``, ``list[str]`` -> ``"a list of strings"``..."""
    if tp in _NAMES:
        return _NAMES[tp]
    if _is_union(tp):
        return " or ".join(describe_type(m) for m in typing.get_args(tp) if m is not type(None))
    if _is_list(tp):
        (item,) = typing.get_args(tp) or (Any,)
        return "a list" if item is Any else f"a list of {_plural(item)}"
    if _is_map(tp):
        _, item = typing.get_args(tp) or (str, Any)
        return "a table" if item is Any else f"a table of {_plural(item)}"
    return getattr(tp, "__name__", str(tp))


def short_type(tp: Any) -> str:
    """The type as the option tables show it: ``int``, ``float``, ``list[str]``, ``table[str]``, ``str | table``."""
    if tp in (int, float, str, bool):
        return str(tp.__name__)
    if _is_union(tp):
        return " | ".join(short_type(m) for m in typing.get_args(tp) if m is not type(None))
    if _is_list(tp):
        (item,) = typing.get_args(tp) or (Any,)
        return "list" if item is Any else f"list[{short_type(item)}]"
    if _is_map(tp):
        _, item = typing.get_args(tp) or (str, Any)
        return "table" if item is Any else f"table[{short_type(item)}]"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    words = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
    if tp in words:
        return words[tp]
    if _is_union(tp):
        return " or ".join(_plural(m) for m in typing.get_args(tp) if m is not type(None))
    return describe_type(tp).removeprefix("a ") + "s"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def describe_choices(option: Option) -> str:
    """``'a' or 'b'``, ``'a', 'b' or 'c'``, or ``one of a, b, c, d`` (and the pattern, if any)."""
    shown = [_show(c) for c in option.choices]
    if option.pattern:
        shown.append(f'a string matching "{option.pattern}"')
    if len(shown) <= 3:
        return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    listed = "one of " + ", ".join(str(c) if isinstance(c, str) else _show(c) for c in option.choices)
    return listed + (f', or a string matching "{option.pattern}"' if option.pattern else "")


def describe_bounds(option: Option) -> str:
    """``"> 0"``, ``"in (0, 1]"``, ``"in [1, 65535]"``, or ``""``."""
    low = ("(", option.gt) if option.gt is not None else ("[", option.ge) if option.ge is not None else None
    high = (")", option.lt) if option.lt is not None else ("]", option.le) if option.le is not None else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {_number(low[1])}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {_number(high[1])}"
    return ""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in_bounds(option: Option, value: float) -> bool:
    return not (
        (option.ge is not None and value < option.ge)
        or (option.gt is not None and value <= option.gt)
        or (option.le is not None and value > option.le)
        or (option.lt is not None and value >= option.lt)
    )


def _in_choices(option: Option, value: Any) -> bool:
    # `False == 0`: a choice matches only a value of its own type.
    if any(type(c) is type(value) and c == value for c in option.choices):
        return True
    return option.pattern is not None and isinstance(value, str) and re.fullmatch(option.pattern, value) is not None


def _hint(table: Table) -> str:
    return f"see `lem plugins --options {table.name.split('.')[0]}`"


def check_value(option: Option, value: Any, path: str, hint: str = "") -> list[Problem]:
    """Problems with one value of ``option`` (at dotted ``path``): type, choices, bounds, nested table."""
    try:
        converter.structure(value, option.type)
    except _Wrong as exc:
        if option.choices and not isinstance(value, Mapping):
            return [error(path, f"must be {describe_choices(option)}", hint, value)]
        return [error(path, f"must be {exc}", hint, value)]
    if (option.choices or option.pattern) and not isinstance(value, Mapping) and not _in_choices(option, value):
        # A union (str | table) may take a table beside its string choices.
        return [error(path, f"must be {describe_choices(option)}", hint, value)]
    # A list's or a map's bounds hold for each of its numbers (a nested table has bounds of its own).
    each = isinstance(value, list) or (isinstance(value, Mapping) and option.table is None)
    numbers = (list(value.values()) if isinstance(value, Mapping) else list(value)) if each else [value]
    if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_bounds(option, v) for v in numbers):
        shown = describe_bounds(option)
        return [error(path, f"must be {'numbers each ' + shown if each else shown}", hint, value)]
    if option.table is not None and isinstance(value, Mapping):
        return check(option.table, value)
    return []


def check(table: Table, values: Mapping[str, Any]) -> list[Problem]:
    """Every problem with ``values`` (a TOML table) against its declaration ``table``, one per key."""
    problems: list[Problem] = []
    hint = _hint(table)
    for key, value in values.items():
        path = f"{table.name}.{key}"
        if key not in table:
            problems.append(error(path, "unknown key", did_you_mean(key, table.keys)))
        else:
            problems.extend(check_value(table[key], value, path, hint))
    return problems


# --- the installed library -----------------------------------------------------------------------


def accepted_arguments(target: Any) -> frozenset[str]:
    """The argument names ``target`` takes: a dataclass's or attrs class's fields, a pydantic model's fields,
    or the named parameters of a callable (``**kwargs`` names nothing)."""
    if dataclasses.is_dataclass(target) and isinstance(target, type):
        return frozenset(f.name for f in dataclasses.fields(target))
    if attrs.has(target):
        return frozenset(a.name for a in attrs.fields(target))
    fields = getattr(target, "model_fields", None)
    if isinstance(fields, Mapping):
        return frozenset(fields) | frozenset(
            str(f.alias) for f in fields.values() if getattr(f, "alias", None) is not None
        )
    params = inspect.signature(target).parameters.values()
    return frozenset(p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def load_target(spec: str) -> Any | None:
    """``"module:attr.path"`` imported, or ``None`` when the library is not installed."""
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for attr in attr_path.split(".") if attr_path else ():
        obj = getattr(obj, attr)
    return obj


def check_library(table: Table, library: str = "the installed library") -> list[Problem]:
    """Errors for options whose library argument the installed call does not take (none where it is missing).

    :param library: how to name the library in the message (``"vLLM 0.11.0"``).
    """
    problems: list[Problem] = []
    accepted: dict[str, frozenset[str] | None] = {}
    for option in _walk(table):
        if option.call is None:
            continue
        if option.call not in accepted:
            spec = _calls(table).get(option.call)
            target = load_target(spec) if spec else None
            accepted[option.call] = None if target is None else accepted_arguments(target)
        names = accepted[option.call]
        if names is not None and not any(n in names for n in option.names):
            problems.append(
                error(
                    option.key,
                    f"{library}'s {option.call} has no argument {' or '.join(repr(n) for n in option.names)} "
                    f"({did_you_mean(option.names[0], names, otherwise='no close name')})",
                    "remove the option, or install a release that takes it",
                )
            )
    return problems


def argument_for(option: Option, accepted: Iterable[str]) -> str | None:
    """The first of ``option.names`` the installed call accepts, or ``None``."""
    names = set(accepted)
    return next((n for n in option.names if n in names), None)


def _walk(table: Table) -> Iterable[Option]:
    for option in table.options:
        yield option
        if option.table is not None:
            yield from _walk(option.table)


def _calls(table: Table) -> dict[str, str]:
    found: dict[str, str] = {}
    for option in table.options:
        if option.table is not None:
            found.update(_calls(option.table))
    found.update(table.calls)
    return found


# --- [generation] keys a backend does not apply ----------------------------------------------------


def unapplied(generation: Any, not_applied: Mapping[str, str], by: str) -> list[Problem]:
    """Warnings for ``[generation]`` keys set away from their default that ``by`` does not apply.

    :param generation: the experiment's :class:`~lem.config.GenerationConfig`.
    :param not_applied: ``[generation]`` key -> the hint (what to use instead).
    :param by: who does not apply it (``"vLLM"``).
    """
    defaults = type(generation)()
    return [
        warning(f"generation.{key}", f"is not supported by {by} and is ignored", hint, getattr(generation, key))
        for key, hint in not_applied.items()
        if getattr(generation, key) != getattr(defaults, key)
    ]


# --- what `lem plugins --options` prints and READMEs hold ------------------------------------------


@attrs.frozen
class Row:
    """One option as printed: every column a string."""

    key: str
    type: str
    default: str
    bounds: str
    reaches: str
    doc: str


def rows(table: Table) -> list[Row]:
    """One :class:`Row` per option, nested tables' options after their key (``speculative.method``)."""
    out: list[Row] = []
    prefix = table.name.split(".", 1)[1] + "." if "." in table.name else ""
    for o in table.options:
        bounds = describe_choices(o) if o.choices or o.pattern else describe_bounds(o)
        default = "" if o.default is None else _show(o.default)
        out.append(Row(prefix + o.key, short_type(o.type), default, bounds, o.reaches, o.doc))
        if o.table is not None:
            out.extend(rows(o.table))
    return out


def as_json(table: Table) -> list[dict[str, str]]:
    """:func:`rows` as plain data."""
    unstructured: list[dict[str, str]] = converter.unstructure(rows(table))
    return unstructured


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(table: Table) -> str:
    """The README's option table for ``table`` (what :func:`readme_problems` compares)."""
    lines = ["| key | type | default | bounds | reaches | what it does |", "|---|---|---|---|---|---|"]
    for r in rows(table):
        cells = (f"`{r.key}`", r.type, f"`{r.default}`" if r.default else "", r.bounds, f"`{r.reaches}`", r.doc)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- lem-options {name} -->"
END = "<!-- /lem-options -->"


def readme_problems(text: str, table: Table) -> list[str]:
    """What differs between a README's generated option table and the declaration (empty when they agree).

    The table sits between ``<!-- lem-options NAME -->`` and ``<!-- /lem-options -->``; regenerate it
    with ``lem plugins --options NAME --markdown``.
    """
    begin = BEGIN.format(name=table.name)
    if begin not in text:
        return [f"no '{begin}' block"]
    block = text.split(begin, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    want = markdown(table)
    if block == want:
        return []
    have_lines, want_lines = set(block.splitlines()), set(want.splitlines())
    return [f"README row not in the declaration: {line}" for line in block.splitlines() if line not in want_lines] + [
        f"declared but not in the README: {line}" for line in want.splitlines() if line not in have_lines
    ]


def tables_of(plugin: object) -> tuple[Table, ...]:
    """The tables a registered plugin declares (its ``TABLES`` attribute), or ``()``."""
    found = getattr(plugin, "TABLES", ())
    return tuple(t for t in found if isinstance(t, Table))
