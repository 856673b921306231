"""The import graph of every distribution in this repository: no circles, and deferred imports say why.

Every module under ``packages/*/src`` is parsed with :mod:`ast` (nothing is imported). An edge
``a -> b`` is any import of first-party module ``b`` in ``a``, at the top or inside a function:
``import b``, ``from b import name``, ``from pkg import b`` where ``b`` is a submodule, and
relative imports resolved against ``a``'s package. Imports under ``if TYPE_CHECKING:`` run only
for the type checker and are left out. The repository is found from this file's path, so the test
reads the sources next to it, whichever ``lem`` is installed.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

REPO = Path(__file__).resolve().parents[3]
#: First-party import names: lem-core and the plugins this repository ships.
FIRST_PARTY = re.compile(r"^(lem|lem_backend_\w+|lem_energy_\w+)(\.|$)")


@attrs.frozen
class Import:
    """One import statement's reach: ``module`` imports ``target`` at ``path:line``."""

    module: str
    target: str
    path: Path
    line: int
    end_line: int
    in_function: bool


def modules(src_roots: list[Path]) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under the ``src`` folders."""
    found: dict[str, Path] = {}
    for root in src_roots:
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts:
                found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of ``tree`` with whether it is inside a function; ``if TYPE_CHECKING:`` bodies skipped."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), in_function)
        else:
            inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _statements(node, inside)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imports(known: dict[str, Path]) -> list[Import]:
    """Every import of a first-party module (a key of ``known``) by a module of ``known``."""
    found: list[Import] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, in_function in _statements(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    package = _package_of(module, path)
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
                targets = submodules
                if len(submodules) < len(node.names):  # a name defined in ``base`` itself
                    targets = [base, *submodules]
            for target in targets:
                # ``import a.b.c`` names a.b.c; a name that is no module of ours (a third party) is left out.
                while target and target not in known:
                    target = target.rpartition(".")[0] if FIRST_PARTY.match(target) else ""
                if target and target != module:
                    line, end = node.lineno, node.end_lineno or node.lineno
                    found.append(Import(module, target, path, line, end, in_function))
    return found


def circles(edges: list[Import]) -> list[list[Import]]:
    """The circles among ``edges``, each as the imports that close it.

    Modules that reach each other form a strongly connected group (Tarjan); each group is reported
    as a shortest circle through each of its modules that no earlier circle passes.
    """
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        graph.setdefault(e.module, {}).setdefault(e.target, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found = []
    for group in sorted(groups):
        members, covered = set(group), set()
        for start in group:  # a shortest circle through each module no circle named so far passes
            if start in covered:
                continue
            cycle = _shortest_circle(graph, members, start)
            covered.update(e.module for e in cycle)
            found.append(cycle)
    return found


def _shortest_circle(graph: dict[str, dict[str, Import]], members: set[str], start: str) -> list[Import]:
    """Breadth-first from ``start`` back to itself through ``members`` (a strongly connected group)."""
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt, edge in sorted(graph.get(node, {}).items()):
            if nxt == start:
                return [*paths[node], edge]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], edge]
                queue.append(nxt)
    raise AssertionError(f"{start} is in a strongly connected group but on no circle")


def describe(cycle: list[Import]) -> str:
    """``a -> b -> a (a.py:3, b.py:10)``, paths relative to the repository where they are in it."""

    def where(e: Import) -> str:
        path = e.path.relative_to(REPO) if e.path.is_relative_to(REPO) else e.path
        return f"{path}:{e.line}{' (in a function)' if e.in_function else ''}"

    chain = " -> ".join([cycle[0].module, *(e.target for e in cycle)])
    return f"{chain}  [{'; '.join(where(e) for e in cycle)}]"


def _comment_lines(path: Path) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def uncommented_deferred_imports(edges: list[Import]) -> list[str]:
    """Function-level first-party imports without a comment on their lines or the line above.

    A run of import statements directly under one comment shares it.
    """
    missing = []
    by_file: dict[Path, list[Import]] = {}
    for e in edges:
        if e.in_function and FIRST_PARTY.match(e.target):
            by_file.setdefault(e.path, []).append(e)
    for path, found in sorted(by_file.items()):
        comments = _comment_lines(path)
        lines = path.read_text().splitlines()
        for e in sorted(found, key=lambda e: e.line):
            line = e.line
            # Climb a run of import statements: the comment above the first one covers them all.
            while line > 1 and lines[line - 2].strip().startswith(("import ", "from ")) and line - 1 not in comments:
                line -= 1
            said = any(n in comments for n in range(e.line, e.end_line + 1)) or (line - 1) in comments
            if not said:
                rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                missing.append(f"{rel}:{e.line}: {e.module} imports {e.target} in a function without saying why")
    return sorted(set(missing))


def _repo_edges() -> list[Import]:
    roots = sorted(REPO.glob("packages/*/src"))
    assert len(roots) >= 2, f"no distributions found under {REPO / 'packages'}"
    return imports(modules(roots))


def test_no_distribution_has_an_import_circle() -> None:
    found = circles(_repo_edges())
    if found:
        pytest.fail(f"{len(found)} import circle(s):\n" + "\n".join(describe(c) for c in found), pytrace=False)


def test_every_deferred_first_party_import_says_why() -> None:
    missing = uncommented_deferred_imports(_repo_edges())
    if missing:
        pytest.fail(f"{len(missing)} deferred import(s) without a reason:\n" + "\n".join(missing), pytrace=False)


# --- the checks themselves, on small trees written here ---------------------------------------


def _tree(root: Path, files: dict[str, str]) -> list[Import]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return imports(modules([root]))


def test_a_circle_through_a_function_level_and_a_relative_import_is_found_and_named(tmp_path: Path) -> None:
    edges = _tree(
        tmp_path,
        {
            "lem_energy_x/__init__.py": "",
            "lem_energy_x/a.py": "def f():\n    from lem_energy_x.b import g\n    return g\n",
            "lem_energy_x/b.py": "from . import c\n\ndef g(): ...\n",
            "lem_energy_x/c.py": "import os\nimport lem_energy_x.a\n",
            "lem_energy_x/d.py": "from lem_energy_x import a\n",  # into the circle, not part of it
        },
    )
    (cycle,) = circles(edges)
    assert describe(cycle).startswith("lem_energy_x.a -> lem_energy_x.b -> lem_energy_x.c -> lem_energy_x.a  [")
    assert [(e.path.name, e.line, e.in_function) for e in cycle] == [("a.py", 2, True), ("b.py", 1, False),
                                                                      ("c.py", 2, False)]  # fmt: skip


def test_type_checking_imports_and_names_from_a_package_make_no_circle(tmp_path: Path) -> None:
    edges = _tree(
        tmp_path,
        {
            "lem_energy_y/__init__.py": "from lem_energy_y.a import A\n",
            "lem_energy_y/a.py": "from typing import TYPE_CHECKING\nclass A: ...\n"
            "if TYPE_CHECKING:\n    from lem_energy_y.b import B\nelse:\n    import json\n",
            "lem_energy_y/b.py": "from lem_energy_y.a import A\nclass B(A): ...\n",
        },
    )
    assert sorted((e.module, e.target) for e in edges) == [
        ("lem_energy_y", "lem_energy_y.a"),
        ("lem_energy_y.b", "lem_energy_y.a"),
    ]
    assert circles(edges) == []
    # Without the guard the same pair is a circle.
    (tmp_path / "lem_energy_y/a.py").write_text("from lem_energy_y.b import B\nclass A: ...\n")
    assert [describe(c).split("  [")[0] for c in circles(imports(modules([tmp_path])))] == [
        "lem_energy_y.a -> lem_energy_y.b -> lem_energy_y.a"
    ]


def test_a_deferred_import_without_a_comment_is_reported(tmp_path: Path) -> None:
    edges = _tree(
        tmp_path,
        {
            "lem_backend_z/__init__.py": "",
            "lem_backend_z/heavy.py": "X = 1\n",
            "lem_backend_z/m.py": (
                "def said():\n"
                "    # deferred: heavy pulls in torch, and `lem --help` must stay fast\n"
                "    from lem_backend_z.heavy import X\n"
                "    from lem_backend_z import heavy\n"
                "    return X, heavy\n"
                "def said_on_its_line():\n"
                "    import lem_backend_z.heavy  # deferred: see said()\n"
                "def third_party():\n"
                "    import json\n"
                "def unsaid():\n"
                "    x = 1\n"
                "    from lem_backend_z.heavy import X\n"
                "    return x + X\n"
            ),
        },
    )
    assert uncommented_deferred_imports(edges) == [
        f"{tmp_path / 'lem_backend_z/m.py'}:12: lem_backend_z.m imports lem_backend_z.heavy in a function "
        "without saying why"
    ]
