"""Prompts from a local file (``dataset.source = "file"``).

=============== ===================== ===================================================
``format``      ``auto`` picks it for how the file is read
=============== ===================== ===================================================
``jsonl``       ``.jsonl``, ``.ndjson``, one JSON object per line (a JSON string is a row with
                ``.json``               field ``text``); a ``.json`` file may also be one array of them
``csv``         ``.csv``, ``.tsv``      a header row, then one row per prompt (``csv.DictReader``)
``parquet``     ``.parquet``, ``.pq``   columns, read with pyarrow (``pip install pyarrow``)
``text``        ``.txt``                one prompt per line; blank lines are skipped; field ``text``
``paragraphs``  —                       prompts separated by one or more blank lines, so a prompt
                                        may span several lines; field ``text``
=============== ===================== ===================================================

Relative paths are relative to the current working directory.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from lem.config import DatasetConfig
from lem.errors import PromptError
from lem.prompts.promptset import PromptSet
from lem.prompts.text import build, combine, pick_field, references, select_rows

_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}

Columns = dict[str, list[Any]]


def _columns(rows: list[dict[str, Any]]) -> tuple[Columns, list[str]]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return {k: [row.get(k) for row in rows] for k in names}, list(names)


def _read_jsonl(path: Path, where: str) -> tuple[Columns, list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{where}: not valid JSON ({exc}); fix the file") from exc
        numbered = list(enumerate(items, 1))
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise PromptError(
                    f"{where}, line {number}: not valid JSON ({exc.msg}); each line must be one JSON object"
                ) from exc
    rows = []
    for number, item in numbered:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise PromptError(f"{where}, line {number}: a JSON {type(item).__name__}, expected an object or a string")
        rows.append(item)
    return _columns(rows)


def _read_csv(path: Path, where: str) -> tuple[Columns, list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise PromptError(f"{where}, line {reader.line_num}: {exc}; fix the file") from exc
        names = list(reader.fieldnames or [])
    if not names:
        raise PromptError(f"{where}: the CSV file is empty (it needs a header row naming its columns)")
    return {k: [row.get(k) for row in rows] for k in names}, names


def _read_parquet(path: Path, where: str, dataset: DatasetConfig) -> tuple[Columns, list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PromptError(
            f"{where}: reading Parquet needs pyarrow, which is not installed "
            "(pip install pyarrow, or pip install 'lem-core[datasets]')"
        ) from exc
    try:
        names = list(pq.read_schema(path).names)
        field, input_field = pick_field(names, dataset, where)
        wanted = [field] if input_field is None else [field, input_field]
        if (
            dataset.reference_field is not None and dataset.reference_field in names
        ):  # a missing one is reported by the text pipeline
            wanted.append(dataset.reference_field)
        table = pq.read_table(path, columns=wanted)
    except PromptError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError subclasses for bad files
        raise PromptError(f"{where}: not a readable Parquet file ({exc})") from exc
    return table.to_pydict(), names


def _read_text(path: Path, paragraphs: bool) -> tuple[Columns, list[str]]:
    text = path.read_text(encoding="utf-8-sig")
    chunks = re.split(r"\n[ \t]*\n", text) if paragraphs else text.splitlines()
    return {"text": [c.strip() for c in chunks if c.strip()]}, ["text"]


def file_format(dataset: DatasetConfig) -> str:
    """The format a file is read as: ``dataset.format``, or guessed from the extension."""
    if dataset.format != "auto":
        return dataset.format
    path = Path(dataset.path or "")
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise PromptError(
            f"dataset.path = {dataset.path!r}: cannot tell the format from the extension "
            "(set dataset.format to 'jsonl', 'csv', 'parquet', 'text' or 'paragraphs')"
        )
    return fmt


def _read(dataset: DatasetConfig) -> tuple[Columns, list[str], str]:
    if not dataset.path:
        raise PromptError("dataset.path is required when dataset.source = 'file' (add path = \"prompts.jsonl\")")
    path = Path(dataset.path).expanduser()
    where = f"dataset.path = {dataset.path!r}"
    if not path.exists():
        raise PromptError(f"{where}: file not found (relative paths start at {Path.cwd()}); check the path")
    if not path.is_file():
        raise PromptError(f"{where}: not a file")
    fmt = file_format(dataset)
    try:
        if fmt == "jsonl":
            columns, names = _read_jsonl(path, where)
        elif fmt == "csv":
            columns, names = _read_csv(path, where)
        elif fmt == "parquet":
            columns, names = _read_parquet(path, where, dataset)
        else:
            columns, names = _read_text(path, paragraphs=fmt == "paragraphs")
    except UnicodeDecodeError as exc:
        raise PromptError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise PromptError(f"{where}: cannot be read ({exc.strerror})") from exc
    if not names:
        raise PromptError(f"{where}: the file holds no prompts (it is empty)")
    return columns, names, where


#: Files already checked, by (path, size, mtime, the keys that read it): a sweep checks each once.
_checked: dict[tuple[Any, ...], None] = {}


def check_file(dataset: DatasetConfig) -> None:
    """Read ``dataset.path`` as :func:`load_file` will, without a tokenizer; raise its :class:`PromptError`.

    Validation calls this so that a broken prompt file is reported before a model is loaded.
    """
    path = Path(dataset.path or "").expanduser()
    stat = path.stat()
    fields = (dataset.field, dataset.input_field, dataset.reference_field)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, dataset.format, *fields)
    if key in _checked:
        return
    columns, names, _ = _read(dataset)
    field, input_field = pick_field(names, dataset, f"file {dataset.path!r}")
    origin = f"file {dataset.path!r}"
    texts = combine(columns, field, input_field, origin)
    select_rows(texts, dataset, 0, origin)
    if dataset.reference_field is not None:  # every usable row: the sample is drawn with the run's seed later
        references(columns, names, [i for i, t in enumerate(texts) if t], dataset.reference_field, origin)
    _checked[key] = None


def load_file(dataset: DatasetConfig, tokenizer: Any | None, *, seed: int) -> PromptSet:
    """Prompts from ``dataset.path``; see the module docstring for the formats."""
    columns, names, _ = _read(dataset)
    return build(columns, names, dataset, tokenizer, seed=seed, origin=f"file {dataset.path!r}")
