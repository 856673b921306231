"""Checks values against the TensorRT-LLM API surface in ``tests/data/trtllm_api.json`` (test helper).

The surface was extracted from TensorRT-LLM's source by ``tools/extract_api.py``;
this module answers "does TensorRT-LLM have this argument, and does this value
fit its annotation?" without TensorRT-LLM installed. It lives beside the fake
``tensorrt_llm`` because the fake checks every call it receives with it.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SURFACE_PATH = Path(__file__).resolve().parents[1] / "data" / "trtllm_api.json"

#: Types from TensorRT-LLM modules the extraction does not cover, as lem uses them.
EXTERNAL: dict[str, str] = {
    # tensorrt_llm.inputs.data.PromptInputs also takes TextPrompt/TokensPrompt dicts; lem passes these two.
    "PromptInputs": "Union[str, List[int]]",
}
INTS = {"int", "NonNegativeInt", "PositiveInt", "StrictInt"}
FLOATS = {"float", "NonNegativeFloat"}


def load(path: Path = SURFACE_PATH) -> dict[str, Any]:
    """The surface as a dict."""
    return dict(json.loads(path.read_text(encoding="utf-8")))


def resolve(surface: Mapping[str, Any], name: str) -> str:
    """A class name through the surface's aliases (``CudaGraphConfig`` -> ``DecodeCudaGraphConfig``)."""
    seen = set()
    while name in surface["aliases"] and name not in surface["classes"] and name not in seen:
        seen.add(name)
        target = surface["aliases"][name]
        if not target.isidentifier():
            break
        name = target
    return name


def fields(surface: Mapping[str, Any], cls: str) -> dict[str, Any]:
    """Every field of ``cls``, inherited ones included (bases found in the surface)."""
    info = surface["classes"][resolve(surface, cls)]
    out: dict[str, Any] = {}
    for base in info["bases"]:
        if base in surface["classes"]:
            out.update(fields(surface, base))
    out.update(info["fields"])
    return out


def field_names(surface: Mapping[str, Any], cls: str) -> dict[str, str]:
    """Every name ``cls`` accepts for a field (its own and pydantic aliases) -> the field."""
    names: dict[str, str] = {}
    for name, field in fields(surface, cls).items():
        names[name] = name
        names.update(dict.fromkeys(field.get("aliases", ()), name))
    return names


def accepts(surface: Mapping[str, Any], annotation: str, value: Any) -> bool:
    """Whether ``value`` fits the annotation (source text) as TensorRT-LLM would validate it."""
    return _fits(surface, ast.parse(annotation, mode="eval").body, value)


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _fits(surface: Mapping[str, Any], node: ast.expr, value: Any) -> bool:
    if isinstance(node, ast.Constant):
        return value is None if node.value is None else value == node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _fits(surface, node.left, value) or _fits(surface, node.right, value)
    if isinstance(node, ast.Subscript):
        outer = _name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional":
            return value is None or _fits(surface, args[0], value)
        if outer == "Union":
            return any(_fits(surface, a, value) for a in args)
        if outer == "Annotated":
            return _fits(surface, args[0], value)
        if outer == "Literal":
            return any(isinstance(a, ast.Constant) and a.value == value for a in args)
        if outer in ("List", "list", "Sequence", "Set", "set", "Tuple", "tuple"):
            return isinstance(value, (list, tuple, set)) and all(_fits(surface, args[-1], v) for v in value)
        if outer in ("Dict", "dict"):
            return isinstance(value, Mapping)
        return False
    name = _name(node)
    if name in INTS:
        return isinstance(value, int) and not isinstance(value, bool)
    if name in FLOATS:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "bool":
        return isinstance(value, bool)
    if name in ("str", "Path"):
        return isinstance(value, str)
    if name in ("Any", "object"):
        return True
    if name in EXTERNAL:
        return accepts(surface, EXTERNAL[name], value)
    if name in surface["aliases"] and resolve(surface, name) not in surface["classes"]:
        return accepts(surface, surface["aliases"][name], value)
    cls = resolve(surface, name)
    if cls in surface["classes"]:
        info = surface["classes"][cls]
        if info["members"]:
            return value in info["members"].values() or value in info["members"]
        if getattr(value, "surface_class", None) == cls:
            return True
        return isinstance(value, Mapping) and not check_kwargs(surface, cls, value)
    return False  # a type the surface does not describe: lem must not rely on it


def check_kwargs(surface: Mapping[str, Any], cls: str, kwargs: Mapping[str, Any]) -> list[str]:
    """One line per keyword argument ``cls`` does not have or whose value does not fit; required ones missing."""
    known = fields(surface, cls)
    names = field_names(surface, cls)
    problems = []
    for key, value in kwargs.items():
        if key not in names:
            problems.append(f"{cls}.{key}: no such field in TensorRT-LLM")
            continue
        annotation = known[names[key]]["annotation"]
        if not accepts(surface, annotation, value):
            problems.append(f"{cls}.{key}: {value!r} does not fit {annotation}")
            if isinstance(value, Mapping):  # say which field of the nested config is wrong
                for nested in _config_classes(surface, annotation):
                    problems += check_kwargs(surface, nested, value)
    given = {names.get(key, key) for key in kwargs}
    for key, field in known.items():
        if field["required"] and key not in given:
            problems.append(f"{cls}.{key}: required, not given")
    return problems


def _config_classes(surface: Mapping[str, Any], annotation: str) -> list[str]:
    """The config classes (not enums) an annotation names, through aliases."""
    found = []
    for node in ast.walk(ast.parse(annotation, mode="eval")):
        if isinstance(node, ast.Name):
            if node.id in surface["aliases"] and resolve(surface, node.id) not in surface["classes"]:
                found += _config_classes(surface, surface["aliases"][node.id])
                continue
            cls = resolve(surface, node.id)
            if cls in surface["classes"] and not surface["classes"][cls]["members"]:
                found.append(cls)
    return found


def check_call(surface: Mapping[str, Any], method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """Problems binding ``args``/``kwargs`` to ``Class.method``'s signature, and with their types."""
    cls, name = method.split(".")
    params = surface["classes"][cls]["methods"][name]["params"]
    positional = [p for p in params if p["kind"] == "positional"]
    by_name = {p["name"]: p for p in params}
    var_kw = any(p["kind"] == "var_keyword" for p in params)
    problems = []
    if len(args) > len(positional):
        problems.append(f"{method}: {len(args)} positional arguments, takes {len(positional)}")
    bound = dict(zip((p["name"] for p in positional), args, strict=False))
    for key, value in kwargs.items():
        if key in bound:
            problems.append(f"{method}: {key} given twice")
        elif key not in by_name and not var_kw:
            problems.append(f"{method}.{key}: no such parameter in TensorRT-LLM")
        bound[key] = value
    for key, value in bound.items():
        param = by_name.get(key)
        if param is not None and param["annotation"] and not accepts(surface, param["annotation"], value):
            problems.append(f"{method}.{key}: {value!r} does not fit {param['annotation']}")
    for param in params:
        if param["required"] and param["name"] not in bound:
            problems.append(f"{method}.{param['name']}: required, not given")
    return problems
