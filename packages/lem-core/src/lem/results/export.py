"""Results as tables: one row per experiment, per cycle or per request, written as CSV, JSONL or Parquet.

``lem results export`` and :func:`lem.results.load` build the same rows. CSV
and JSONL need nothing beyond the standard library; Parquet and the pandas
``DataFrame`` need the ``export`` extra (``pip install 'lem-core[export]'``).

Every reader here goes on past a damaged file: the file is named in one
warning line and its experiment (or cycle) is left out, or, for an
experiment, kept with the facts that could be read.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from lem.config import ExperimentConfig
from lem.errors import ResultsError
from lem.figures.registry import FIGURES, cycle_value
from lem.figures.requests import request_metrics
from lem.figures.summary import compute_cycle, traces_from_json
from lem.results.files import (
    SHAPE_ERRORS,
    cycle_paths,
    damaged_file,
    experiment_config,
    experiment_dirs,
    read_cycle_or_warn,
    read_json_or_warn,
    read_setup,
    setup_config,
    usable_timelines,
    write_atomic,
    write_atomic_with,
)
from lem.results.shapes import kind_of, summary_damage

LEVELS = ("experiment", "cycle", "request")
FORMATS = ("csv", "parquet", "jsonl")
EXTRA = "pip install 'lem-core[export]'"

Warn = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"lem: warning: {line}", file=sys.stderr)


# --- one experiment's files ----------------------------------------------------------------


def _key(exp_dir: Path) -> str:
    return f"{exp_dir.parent.name}/{exp_dir.name}"


def _identity(exp_dir: Path, setup: Mapping[str, Any]) -> dict[str, Any]:
    """``key``, ``run_id``, ``experiment_id`` as the files record them (as the summary's ``key``).

    A run directory copied or renamed keeps its recorded identity, so cycle and
    request rows join the experiment row on ``key``; the directory names stand
    in only where setup.json lacks them.
    """
    run_id = setup.get("run_id") if isinstance(setup.get("run_id"), str) else exp_dir.parent.name
    exp_id = setup.get("experiment_id") if isinstance(setup.get("experiment_id"), str) else exp_dir.name
    return {"key": f"{run_id}/{exp_id}", "run_id": run_id, "experiment_id": exp_id}


def _doc(exp_dir: Path, name: str, warn: Warn) -> dict[str, Any] | None:
    path = exp_dir / name
    return read_json_or_warn(path, warn) if path.exists() else None


def environment_facts(env: Mapping[str, Any] | None) -> dict[str, Any]:
    """The key facts of an ``environment.json``: GPUs, driver, CUDA, CPU, Python and lem/library versions."""
    if not env:
        return {}
    gpus = env.get("gpus") or []
    cuda = env.get("cuda") or {}
    out: dict[str, Any] = {
        "env.gpu_count": len(gpus),
        "env.gpu_names": "; ".join(str(g.get("name")) for g in gpus) or None,
        "env.driver_version": cuda.get("driver_version") or next((g.get("driver_version") for g in gpus), None),
        "env.cuda_driver_api_version": cuda.get("cuda_driver_api_version"),
        "env.cuda_visible_devices": cuda.get("cuda_visible_devices"),
        "env.cpu_model": (env.get("cpu") or {}).get("model"),
        "env.cpu_logical_cores": (env.get("cpu") or {}).get("logical_cores"),
        "env.ram_bytes": env.get("ram_bytes"),
        "env.python": (env.get("python") or {}).get("version"),
        "env.hostname": env.get("hostname"),
    }
    packages = env.get("packages") or {}
    for name, version in {**(packages.get("lem") or {}), **(packages.get("libraries") or {})}.items():
        if version is not None:
            out[f"version.{name}"] = version
    return out


def _status(exp_dir: Path, summary: Any, failure: Any) -> str:
    if summary is not None:  # a summary says whether its requests failed (lem.figures.outcome)
        return str(summary["status"]) if summary.get("status") in ("degraded", "failed") else "ok"
    if failure is not None:
        return "failed"
    return "incomplete" if (exp_dir / "setup.json").exists() else "not started"


def _in(doc: Mapping[str, Any], table: str, key: str) -> Any:
    """``doc[table][key]``, ``None`` where either is missing or ``doc[table]`` is not a table."""
    node = doc.get(table)
    return node.get(key) if isinstance(node, Mapping) else None


class _Damaged(ValueError):
    """What is wrong in a result file, as a sentence a user reads (the field and what was expected)."""


def experiment_row(exp_dir: Path, warn: Warn = _stderr) -> dict[str, Any]:
    """One experiment as a flat row: identity, status, flattened config, every figure, environment facts."""
    summary = _doc(exp_dir, "summary.json", warn)
    failure = _doc(exp_dir, "failure.json", warn) if summary is None else None
    doc = summary or failure or {}
    row: dict[str, Any] = {
        "key": doc.get("key") or _key(exp_dir),
        "run_id": doc.get("run_id") or exp_dir.parent.name,
        "experiment_id": doc.get("experiment_id") or exp_dir.name,
        "status": _status(exp_dir, summary, failure),
        "backend": doc.get("backend"),
        "model": doc.get("model"),
        "cycles": doc.get("cycles"),
        "failed_requests": doc.get("failed_requests"),
        "prompts.digest": _in(doc, "prompts", "digest"),
        "output_digest": doc.get("output_digest"),
        "outputs_identical_across_cycles": doc.get("outputs_identical_across_cycles"),
        "energy_method": _in(doc, "methods", "energy"),
        "energy_reason": doc.get("energy_reason"),
        "failure_reason": (failure or {}).get("reason"),
    }
    config = doc.get("config") or experiment_config(exp_dir)
    try:
        problem = summary_damage(summary) if summary is not None else None
        if problem is not None:  # the check `lem results list` makes: what it calls damaged, export does too
            raise _Damaged(problem)
        if not isinstance(config, Mapping):
            raise _Damaged(f"'config' is {kind_of(config)}, expected a table")
        row.update({f"config.{k}": v for k, v in config.items()})
        if row["backend"] is None:
            row["backend"], row["model"] = config.get("backend"), config.get("model")
        for name, fig in (doc.get("figures") or {}).items():
            for stat in ("mean", "std", "ci95_low", "ci95_high"):
                value = fig.get(stat)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    raise _Damaged(f"'figures.{name}.{stat}' is {kind_of(value)}, expected a number")
                row[f"{name}.{stat}"] = value
    except SHAPE_ERRORS as exc:  # keep the identity and what was read; say which file is damaged
        source = "summary.json" if summary is not None else "failure.json"
        # The checks above say which field and what was expected; a Python error is not quoted.
        why = str(exc) if isinstance(exc, _Damaged) else "a value is not of the type lem writes"
        warn(f"{exp_dir / source}: damaged: {why}; its figures are left out")
        kept = ("key", "run_id", "experiment_id", "backend", "model")  # what else the file says is not trusted
        row = {k: v for k, v in row.items() if k in kept and isinstance(v, str)} | {"status": "damaged"}
    env = _doc(exp_dir, "environment.json", warn)
    try:
        row.update(environment_facts(env))
    except SHAPE_ERRORS:
        warn(f"{exp_dir / 'environment.json'}: damaged: a fact is not of the type lem writes; left out")
    return row


def _cycles(exp_dir: Path, warn: Warn) -> Iterator[tuple[dict[str, Any], ExperimentConfig, dict[str, Any], Path]]:
    """``(setup, its typed config, raw cycle, its path)`` of every readable cycle of an experiment."""
    if not (exp_dir / "setup.json").exists():
        if cycle_paths(exp_dir):
            warn(f"{exp_dir / 'setup.json'}: missing: the cycles of {exp_dir} cannot be computed without it; skipped")
        return
    try:
        setup = read_setup(exp_dir)
    except ResultsError as exc:
        warn(f"{exc}; its cycles are skipped")
        return
    config, _ = setup_config(setup)
    for path in cycle_paths(exp_dir):
        raw = read_cycle_or_warn(path, warn)
        if raw is not None:
            yield setup, config, raw, path


def _skip_damaged(exp_dir: Path, path: Path, warn: Warn) -> None:
    warn(f"{damaged_file(exp_dir, only=path)}; that cycle is skipped")


def cycle_rows(exp_dir: Path, warn: Warn = _stderr) -> list[dict[str, Any]]:
    """One row per cycle: every headline figure of that cycle, recomputed from its raw record."""
    return [row for _, row in _cycle_rows(exp_dir, warn)]


def _cycle_rows(exp_dir: Path, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`cycle_rows`, each with its cycle file."""
    rows = []
    for setup, config, raw, path in _cycles(exp_dir, warn):
        # The timeline gives the steady-state energy and the thermal context (lem.figures.steady, lem.figures.thermal).
        damaged: list[str] = []  # a damaged timeline: only the figures it gives are lost
        try:
            timeline = usable_timelines(exp_dir, [raw], setup, config, damaged).get(int(raw["cycle"]))
            metrics, energy, _ = compute_cycle(raw, setup, config, timeline)
        except SHAPE_ERRORS:
            _skip_damaged(exp_dir, path, warn)
            continue
        for line in damaged:
            warn(line)
        block = {"metrics": metrics, "energy": energy}
        row: dict[str, Any] = {
            **_identity(exp_dir, setup),
            "cycle": raw.get("cycle"),
            "requests": metrics["requests"],
            "completed_requests": metrics["completed_requests"],
            "failed_requests": metrics["failed_requests"],
            "input_tokens": metrics["input_tokens"],
            "output_tokens": metrics["output_tokens"],
            "duration_s": metrics["duration_s"],
            "output_digest": metrics["output_digest"],
            "energy_method": energy["method"],
            "energy_reason": energy["reason"],
            "goodput.good_requests": metrics["goodput"]["good_requests"],
            "goodput.met": metrics["goodput"]["met"],
        }
        row.update({fig.name: cycle_value(block, fig) for fig in FIGURES})
        rows.append((path, row))
    return rows


def request_rows(exp_dir: Path, warn: Warn = _stderr) -> list[dict[str, Any]]:
    """One row per request of every cycle: TTFT, E2E, TPOT, token counts, error."""
    return [row for _, row in _request_rows(exp_dir, warn)]


def _request_rows(exp_dir: Path, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`request_rows`, each with its cycle file."""
    rows = []
    for setup, _, raw, path in _cycles(exp_dir, warn):
        try:
            raw_rows = {int(r["id"]): r for r in raw["requests"]}
            metrics = [request_metrics(trace) for trace in traces_from_json(raw["requests"])]
            digests = {m["id"]: raw_rows[m["id"]].get("output_digest") for m in metrics}
        except SHAPE_ERRORS:
            _skip_damaged(exp_dir, path, warn)
            continue
        for m in metrics:
            rows.append(
                (
                    path,
                    {
                        **_identity(exp_dir, setup),
                        "cycle": raw.get("cycle"),
                        "request": m["id"],
                        "input_tokens": m["input_tokens"],
                        "output_tokens": m["output_tokens"],
                        "ttft_s": m["ttft_s"],
                        "e2e_s": m["e2e_s"],
                        "tpot_s": m["tpot_s"],
                        "finished": m["finished"],
                        "error": m["error"],
                        "output_digest": digests[m["id"]],
                    },
                )
            )
    return rows


def rows(root: Path, level: str = "experiment", warn: Warn = _stderr) -> list[dict[str, Any]]:
    """The rows of every experiment under ``root`` (a results, run or experiment directory) at ``level``."""
    return [row for _, row in _sourced_rows(root, level, warn)]


def _sourced_rows(root: Path, level: str, warn: Warn) -> list[tuple[Path, dict[str, Any]]]:
    """:func:`rows`, each with the file it was read from (a summary, a cycle file)."""
    if level not in LEVELS:
        raise ResultsError(f"--level {level}: unknown level (use {', '.join(LEVELS)})")
    if not root.is_dir():
        raise ResultsError(f"{root}: no such results directory")
    dirs = experiment_dirs(root)
    if not dirs:
        raise ResultsError(f"{root}: no experiments here (a results, run or experiment directory was expected)")
    out: list[tuple[Path, dict[str, Any]]] = []
    for d in dirs:
        if level == "experiment":
            row = experiment_row(d, warn)
            source = next((d / n for n in ("summary.json", "failure.json") if (d / n).exists()), d / "experiment.toml")
            out.append((source, row))
        else:
            out += _cycle_rows(d, warn) if level == "cycle" else _request_rows(d, warn)
    return out


def _kind(value: Any) -> str:
    """What a cell is to a typed column (Parquet): a bool, a number or text (lists and tables go as JSON)."""
    if isinstance(value, bool):
        return "true/false"
    return "a number" if isinstance(value, int | float) else "text"


def without_mixed_columns(
    table: Sequence[tuple[Path, Mapping[str, Any]]], warn: Warn
) -> list[tuple[Path, Mapping[str, Any]]]:
    """The rows less those whose cell in some column is of another kind than the column's other cells.

    A typed format (Parquet) cannot hold text in a column of numbers: that comes from a damaged file
    (text where lem writes a number), so that file's row is left out with one line naming the file and
    the column, and the others are written.
    """
    bad: dict[int, str] = {}
    for col in columns([row for _, row in table]):
        by_kind: dict[str, list[int]] = {}
        for i, (_, row) in enumerate(table):
            if row.get(col) is not None:
                by_kind.setdefault(_kind(row[col]), []).append(i)
        if len(by_kind) < 2:
            continue
        # Damage puts text where lem writes a number far more often than the reverse: a tie goes to numbers.
        usual = max(by_kind, key=lambda k: (len(by_kind[k]), k == "a number"))
        for kind, found in by_kind.items():
            for i in found if kind != usual else ():
                bad.setdefault(i, f"{col} is {kind} where the other rows have {usual}")
    named: dict[Path, str] = {}  # one line per file (a cycle file gives many request rows)
    for i, why in sorted(bad.items()):
        named.setdefault(table[i][0], why)
    for path, why in named.items():
        warn(f"{path}: damaged ({why}); what it gave is left out of the Parquet file")
    return [entry for i, entry in enumerate(table) if i not in bad]


def columns(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every column of ``table`` in the order first seen (rows may lack some: their cells are empty)."""
    seen: dict[str, None] = {}
    for row in table:
        seen.update(dict.fromkeys(row))
    return list(seen)


# --- writing -------------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    # A list or table in a cell (config.measurement.devices) stays readable as JSON.
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def to_csv(table: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """CSV with a header; null cells are empty, lists are JSON."""
    writer = csv.DictWriter(out, fieldnames=columns(table), restval="", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if v is None else _cell(v)) for k, v in row.items()})


def to_jsonl(table: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """One JSON object per line, every column present (null when a row lacks it)."""
    cols = columns(table)
    for row in table:
        out.write(json.dumps({c: row.get(c) for c in cols}, allow_nan=False) + "\n")


def dataframe_of(table: Sequence[Mapping[str, Any]]) -> Any:
    """A pandas ``DataFrame`` of the rows (columns in first-seen order)."""
    try:
        import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ResultsError(f"pandas is not installed: {EXTRA}") from None
    cols = columns(table)
    return pd.DataFrame([{c: row.get(c) for c in cols} for row in table], columns=cols)


def to_parquet(table: Sequence[Mapping[str, Any]], path: Path) -> None:
    """A Parquet file (pandas + pyarrow), written atomically; lists and tables in cells are stored as JSON text."""
    try:
        import pyarrow  # noqa: F401  (to_parquet's engine; fail with the install line, not pandas' message)
    except ImportError:
        raise ResultsError(f"pyarrow is not installed: {EXTRA}") from None
    import pyarrow as pa

    frame = dataframe_of([{k: _cell(v) for k, v in row.items()} for row in table])

    def write(tmp: Path) -> None:
        frame.to_parquet(tmp, index=False)

    try:
        write_atomic_with(path, write, AGAIN)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # without_mixed_columns leaves such rows out first
        raise ResultsError(f"{path}: cannot write Parquet ({exc}); export --format csv or jsonl") from None


#: What to do when the destination of an export or a plot is full.
AGAIN = "nothing partial was left: free some space, or choose another --out, then try again"


def export(
    root: Path, fmt: str, level: str, out: Path | None, warn: Warn = _stderr, strict: bool = False
) -> tuple[int, list[str]]:
    """Write the ``level`` table of ``root`` as ``fmt`` to ``out`` (stdout when ``None``).

    A damaged file is named through ``warn`` and what it gave is left out; with ``strict`` nothing is
    written then, and one :class:`ResultsError` line lists every damaged file.

    :returns: the number of rows written, and the damaged files' lines.
    """
    if fmt not in FORMATS:
        raise ResultsError(f"--format {fmt}: unknown format (use {', '.join(FORMATS)})")
    if fmt == "parquet" and out is None:
        raise ResultsError("--format parquet writes a binary file: give it with --out FILE")
    damaged: list[str] = []

    def note(line: str) -> None:
        damaged.append(line)
        if not strict:
            warn(line)

    sourced: Sequence[tuple[Path, Mapping[str, Any]]] = _sourced_rows(root, level, note)
    if fmt == "parquet":
        sourced = without_mixed_columns(sourced, note)
    if strict and damaged:
        raise ResultsError(f"nothing exported (--strict): {len(damaged)} damaged result file(s): {' | '.join(damaged)}")
    table = [row for _, row in sourced]
    if fmt == "parquet":
        assert out is not None
        to_parquet(table, out)
        return len(table), damaged
    buf = io.StringIO()
    (to_csv if fmt == "csv" else to_jsonl)(table, buf)
    if out is None:
        sys.stdout.write(buf.getvalue())
    else:
        write_atomic(out, buf.getvalue(), AGAIN)
    return len(table), damaged


def load(directory: str | Path, level: str = "experiment") -> Any:
    """The results under ``directory`` as a pandas ``DataFrame``: the table ``lem results export`` writes.

    Reached as ``lem.results.load``.

    :param directory: a results directory, a run directory or one experiment directory.
    :param level: ``"experiment"`` (one row per experiment: flattened config, every figure's mean, std
        and 95% CI, environment facts, status), ``"cycle"`` or ``"request"``.
    :raises ResultsError: when pandas is not installed (``pip install 'lem-core[export]'``) or the
        directory holds no experiments. Damaged files are reported as warnings and left out.
    """
    return dataframe(Path(directory), level)


def dataframe(root: Path, level: str = "experiment", warn: Warn = _stderr) -> Any:
    """:func:`load` with a warning sink: the ``level`` table of ``root`` as a pandas ``DataFrame``."""
    try:
        import pandas  # type: ignore[import-untyped,unused-ignore]  # noqa: F401  (checked before reading files)
    except ImportError:
        raise ResultsError(f"lem.results.load needs pandas: {EXTRA}") from None
    return dataframe_of(rows(root, level, warn))
