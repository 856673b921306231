"""Extract the TensorRT-LLM API surface lem relies on from its source, with ``ast`` (imports nothing).

The surface (classes, their fields with annotations and defaults, enum members,
type aliases, method signatures) is written as JSON to
``tests/data/trtllm_api.json``, where the tests check every argument lem passes
against it. Run it on a checkout of NVIDIA/TensorRT-LLM at the release lem
targets::

    python tools/extract_api.py /path/to/TensorRT-LLM --tag v1.2.1 --commit <sha> \
        --out tests/data/trtllm_api.json

``--file-commit PATH=SHA`` records, per source file, a commit other than
``--commit``, and ``--file-note PATH=TEXT`` what that copy is (for a tree
assembled from files read at different commits).
Nothing here imports TensorRT-LLM: the source is only parsed.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

#: Source file -> the classes lem uses from it (fields, bases, enum members, methods).
WANTED: dict[str, tuple[str, ...]] = {
    "tensorrt_llm/llmapi/llm_args.py": (
        "BaseCudaGraphConfig",
        "DecodeCudaGraphConfig",
        "CalibConfig",
        "DecodingBaseConfig",
        "NGramDecodingConfig",
        "DraftTargetDecodingConfig",
        "CapacitySchedulerPolicy",
        "ContextChunkingPolicy",
        "SchedulerConfig",
        "KvCacheConfig",
        "BaseLlmArgs",
        "TorchCompileConfig",
        "TorchLlmArgs",
    ),
    "tensorrt_llm/sampling_params.py": ("SamplingParams",),
    "tensorrt_llm/llmapi/llm.py": ("LLM",),
    "tensorrt_llm/executor/result.py": ("CompletionOutput",),
    # The TensorRT engine flow: its arguments, its build config and its LLM (which can save an engine).
    "tensorrt_llm/_tensorrt_engine/llm_args.py": ("TrtLlmArgs",),
    "tensorrt_llm/_tensorrt_engine/llm.py": ("LLM as TrtLLM",),
    "tensorrt_llm/builder.py": ("BuildConfig",),
    # Quantizing while the engine is built: TrtLlmArgs.quant_config and its algorithm names.
    "tensorrt_llm/models/modeling_utils.py": ("QuantConfig",),
    "tensorrt_llm/quantization/mode.py": ("QuantAlgo",),
}

#: Where a file of :data:`WANTED` that a tree lacks lives in older releases: up to 1.2 the engine flow's
#: arguments and LLM are in the llmapi modules (``_TrtLLM``), and ``_tensorrt_engine/`` re-exports them.
FALLBACKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tensorrt_llm/_tensorrt_engine/llm_args.py": ("tensorrt_llm/llmapi/llm_args.py", ("TrtLlmArgs",)),
    "tensorrt_llm/_tensorrt_engine/llm.py": ("tensorrt_llm/llmapi/llm.py", ("_TrtLLM as TrtLLM",)),
}

ENUM_BASES = {"Enum", "StrEnum", "IntEnum"}  # a base written with metaclass=... still counts


def _aliases(value: ast.expr | None) -> list[str]:
    """Other names pydantic accepts for a field (``Field(validation_alias=AliasChoices("a", "b"))``)."""
    if not isinstance(value, ast.Call):
        return []
    for kw in value.keywords:
        if kw.arg in ("validation_alias", "alias"):
            node = kw.value
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                return [node.value]
            if isinstance(node, ast.Call):
                return [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def _default(value: ast.expr | None) -> tuple[bool, str | None]:
    """(required, default as source text) of a class-body assignment's value."""
    if value is None:
        return True, None
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) in ("Field", "field"):
        kw = {k.arg: k.value for k in value.keywords if k.arg}
        if "default" in kw:
            return False, ast.unparse(kw["default"])
        if "default_factory" in kw:
            return False, "factory:" + ast.unparse(kw["default_factory"])
        if value.args and not (isinstance(value.args[0], ast.Constant) and value.args[0].value is Ellipsis):
            return False, ast.unparse(value.args[0])
        return True, None
    return False, ast.unparse(value)


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[dict[str, Any]]:
    args = fn.args
    out: list[dict[str, Any]] = []
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults, strict=True):
        out.append(_param(arg, default, "positional"))
    if args.vararg:
        out.append(_param(args.vararg, None, "var_positional"))
    for arg, kw_default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(_param(arg, kw_default, "keyword_only"))
    if args.kwarg:
        out.append(_param(args.kwarg, None, "var_keyword"))
    return [p for p in out if p["name"] != "self"]


def _param(arg: ast.arg, default: ast.expr | None, kind: str) -> dict[str, Any]:
    return {
        "name": arg.arg,
        "kind": kind,
        "annotation": ast.unparse(arg.annotation) if arg.annotation else None,
        "default": ast.unparse(default) if default is not None else None,
        "required": default is None and kind in ("positional", "keyword_only"),
    }


def _member_value(name: str, value: ast.expr) -> Any:
    """An enum member's value; ``auto()`` of the ``strenum`` package's ``StrEnum`` (TensorRT-LLM's) is the name."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "auto":
        return name
    return ast.literal_eval(value)


def _class(node: ast.ClassDef) -> dict[str, Any]:
    bases = [ast.unparse(b) for b in node.bases]
    info: dict[str, Any] = {"bases": bases, "fields": {}, "members": {}, "methods": {}, "properties": []}
    is_enum = any(b in ENUM_BASES for b in bases)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            name = item.target.id
            if name.startswith("_") or name == "model_config":
                continue
            required, default = _default(item.value)
            info["fields"][name] = {
                "annotation": ast.unparse(item.annotation),
                "default": default,
                "required": required,
            }
            aliases = [a for a in _aliases(item.value) if a != name]
            if aliases:
                info["fields"][name]["aliases"] = aliases
        elif is_enum and isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
            info["members"][item.targets[0].id] = _member_value(item.targets[0].id, item.value)
        elif isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = {ast.unparse(d) for d in item.decorator_list}
            if "property" in decorators:
                info["properties"].append(item.name)
            elif not item.name.startswith("_") or item.name == "__init__":
                info["methods"][item.name] = {"params": _params(item)}
    return info


def extract_file(path: Path, wanted: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The wanted classes of one source file, and its module-level type aliases.

    ``"LLM as TrtLLM"`` records class ``LLM`` under the name ``TrtLLM`` (two files define an ``LLM``).
    """
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (moved in this TensorRT-LLM, or not its source root?)")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: dict[str, str] = {}  # class in the source -> name in the surface
    for item in wanted:
        source, _, as_name = item.partition(" as ")
        names[source] = as_name or source
    classes: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in names:
            classes[names[node.name]] = {**_class(node), "source_name": node.name}
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, (ast.Name, ast.Subscript)):
                aliases[node.targets[0].id] = ast.unparse(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if ast.unparse(node.annotation) == "TypeAlias":
                aliases[node.target.id] = ast.unparse(node.value)
    missing = [name for name, as_name in names.items() if as_name not in classes]
    if missing:
        raise SystemExit(f"{path}: no class {', '.join(missing)} (renamed or moved?)")
    return classes, aliases


def extract(root: Path, tag: str, commit: str, file_commits: dict[str, str]) -> dict[str, Any]:
    """The whole surface: every file of :data:`WANTED` under ``root``."""
    surface: dict[str, Any] = {
        "source": {
            "repository": "NVIDIA/TensorRT-LLM",
            "tag": tag,
            "commit": commit,
            "files": {},
            "extracted_by": "packages/lem-backend-tensorrt/tools/extract_api.py (ast; imports nothing)",
        },
        "classes": {},
        "aliases": {},
    }
    for rel, wanted in WANTED.items():
        if not (root / rel).is_file() and rel in FALLBACKS:
            rel, wanted = FALLBACKS[rel]
        classes, aliases = extract_file(root / rel, wanted)
        module = rel.removesuffix(".py").replace("/", ".")
        for name, info in classes.items():
            surface["classes"][name] = {"module": module, **info}
        surface["aliases"].update({k: v for k, v in aliases.items() if not k.startswith("_")})
        surface["source"]["files"][rel] = file_commits.get(rel, commit)
    return surface


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="root of a TensorRT-LLM source tree")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--file-commit", action="append", default=[], metavar="PATH=SHA")
    parser.add_argument("--file-note", action="append", default=[], metavar="PATH=TEXT", help="what one file is")
    parser.add_argument("--note", default="", help="how the tree was obtained, recorded in the file")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    file_commits = dict(item.split("=", 1) for item in args.file_commit)
    surface = extract(args.source, args.tag, args.commit, file_commits)
    if args.note:
        surface["source"]["note"] = args.note
    if args.file_note:
        surface["source"]["file_notes"] = dict(item.split("=", 1) for item in args.file_note)
    args.out.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(surface['classes'])} classes from {len(WANTED)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
