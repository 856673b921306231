"""The results directory: atomic files, the summary computed from raw cycles, listing and pooling.

Layout (see docs/results.md)::

    <out>/<run-id>/run.json
    <out>/<run-id>/<experiment-id>/{experiment.toml, environment.json, setup.json,
                                    cycle-001.json, timeline-001.csv, ..., summary.json | failure.json}

Every file is written to a hidden temporary name and moved into place with
``os.replace``: a run killed at any instant leaves whole files or none.
Raw cycles are the source of truth; :func:`summarize` recomputes everything
from ``setup.json`` and the cycle files.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.config import ExperimentConfig
from lem.configfile.documents import read_toml
from lem.configfile.loading import structure_leniently
from lem.errors import ConfigError, DiskFull, ResultsError
from lem.figures.registry import FIGURES, in_view, method_of
from lem.figures.summary import compute_cycle, headline_figures, summarize, traces_from_json, traces_to_json
from lem.results.shapes import cycle_damage, number, setup_damage, summary_damage
from lem.results.timelines import cycle_timelines, timeline_csv, timeline_path

__all__ = [
    "FIGURES",
    "SCHEMA_VERSION",
    "compute_cycle",
    "summarize",
    "traces_from_json",
    "traces_to_json",
]

#: Schema 2 added self-describing summaries (key, config, digests) and per-request ids and errors.
SCHEMA_VERSION = 2
#: Schemas this lem still reads (list, show, compare, export, aggregate).
READABLE_SCHEMAS = (1, 2)
CYCLE_RE = re.compile(r"^cycle-(\d{3,})\.json$")


# --- files ------------------------------------------------------------------------


def _umask() -> int:
    # Read without changing it where the kernel tells (Linux); os.umask can only set-and-return.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: What to do about a full disk while a run writes its results (other writers name their own remedy).
RESUME = "complete files are kept: free some space, then continue the run with --resume"


def _write_error(exc: OSError, path: Path, full: str) -> ResultsError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFull(f"no space left on device in {path.parent} (writing {path.name}); {full}")
    return ResultsError(f"{path.parent}: cannot write {path.name} ({exc.strerror}); choose a writable --out")


def write_atomic(path: Path, data: str | bytes, full: str = RESUME) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` so that a reader (or a crash) only ever sees the old
    file or the whole new one.

    The file gets the mode the user's umask gives (as ``open`` would), not ``mkstemp``'s 0600.
    A full disk (or any other write error) leaves no partial file and raises a :class:`ResultsError`
    (:class:`~lem.errors.DiskFull` for a full disk, ending with ``full``: what to do then) naming the directory.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

    write_atomic_with(path, write, full)


def write_atomic_with(path: Path, write: Callable[[Path], None], full: str = RESUME) -> None:
    """Have ``write`` fill a temporary file in ``path``'s directory, then move it to ``path`` in one step.

    For writers that want a path of their own (a Parquet writer, matplotlib): the same promises as
    :func:`write_atomic`: the old file or the whole new one, never a partial or empty one, and a write
    error (a full disk, a forbidden or read-only place) as one :class:`ResultsError` line.
    """
    if path.is_dir():  # os.replace cannot put a file there; nor may lem delete what someone put there
        raise ResultsError(f"{path}: is a directory, not a result file; move it away, then try again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(exc, path, full) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(exc, path, full) from None
        raise


#: Write errors the user can do something about (a full disk, a read-only or forbidden place).
_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EFBIG, errno.EEXIST}
)


def write_json(path: Path, kind: str, data: Mapping[str, Any], compact: bool = False) -> None:
    """Write a result file with its ``schema_version`` and ``kind`` (``compact``: one line, for raw data)."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": kind, **data}
    try:
        text = json.dumps(doc, indent=None if compact else 1, allow_nan=False, default=str)
    except ValueError as exc:  # inf or NaN: computed from absurd raw values (1e308 joules), never measured
        raise ResultsError(
            f"{path}: not written: a figure is not a finite number ({exc}); a raw file holds an absurd value"
        ) from None
    write_atomic(path, text + "\n")


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    # lem writes with allow_nan=False: NaN or Infinity in a result file is damage, never a measurement.
    raise _NotFinite(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"{text[:40]} is beyond the range of a double")
    return value


def read_json(path: Path) -> dict[str, Any]:
    """Read a result file; a missing or damaged file is a :class:`ResultsError`."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except FileNotFoundError:
        raise ResultsError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc}); re-run the experiment") from None
    except _NotFinite as exc:
        raise ResultsError(f"{path}: not a file lem wrote ({exc}); re-run the experiment") from None
    except RecursionError:
        raise ResultsError(
            f"{path}: not a file lem wrote (JSON nested too deeply to read); re-run the experiment"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"{path}: not a JSON object; re-run the experiment")
    if doc.get("schema_version") not in READABLE_SCHEMAS:
        readable = " or ".join(map(str, READABLE_SCHEMAS))
        raise ResultsError(
            f"{path}: schema_version {doc.get('schema_version')!r} is not one this lem reads ({readable}); "
            "if a newer lem wrote it, upgrade lem-core"
        )
    return doc


def _read_checked(path: Path, damage: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """:func:`read_json`, and a file that ``damage`` finds of the wrong shape is a :class:`ResultsError` too."""
    doc = read_json(path)
    problem = damage(doc)
    if problem is not None:
        raise ResultsError(f"{path}: damaged: {problem}")
    return doc


def read_cycle(path: Path) -> dict[str, Any]:
    """Read a ``cycle-NNN.json``: :func:`read_json`, and a file whose fields are not of the types lem writes
    (see :func:`cycle_damage`) is a :class:`ResultsError` too, naming the field and what was expected."""
    return _read_checked(path, cycle_damage)


def _or_warn(read: Callable[[Path], dict[str, Any]], path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """``read(path)``, but a damaged file is reported through ``warn`` (one line) and gives ``None``."""
    try:
        return read(path)
    except ResultsError as exc:
        warn(f"{exc}; skipped")
        return None


def read_cycle_or_warn(path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """:func:`read_cycle`, but a damaged cycle file is reported through ``warn`` (one line) and gives ``None``."""
    return _or_warn(read_cycle, path, warn)


def read_json_or_warn(path: Path, warn: Callable[[str], None]) -> dict[str, Any] | None:
    """:func:`read_json`, but a damaged file is reported through ``warn`` (one line) and gives ``None``."""
    return _or_warn(read_json, path, warn)


def write_timeline(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write a meter's timeline as CSV (see :func:`lem.results.timelines.timeline_csv`)."""
    write_atomic(path, timeline_csv(rows))


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporary files left by a killed run (they never hold a result)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


#: What computing figures from a raw file of the wrong JSON shape raises (text where a number was,
#: a list where a table was, a number too large for a float, ...).
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)


def damaged_file(exp_dir: Path, only: Path | None = None) -> str:
    """One line naming which of an experiment's raw files (of cycle file ``only``, when given) does not have the
    shape a summary needs, and what is wrong in it: ``"<path>: damaged: 'requests' is text, expected a list"``.

    Called once computing a summary has failed on a shape error; the error itself is not quoted (a user cannot
    act on a Python error): the files are checked again to blame the one at fault.
    """
    try:
        setup = read_setup(exp_dir)
        config, _ = setup_config(setup)
        for path in [only] if only is not None else cycle_paths(exp_dir):
            raw = read_cycle(path)
            try:
                compute_cycle(raw, setup, config)
            except SHAPE_ERRORS:
                return f"{path}: damaged: a value the figures need is not of the type lem writes; re-run the experiment"
            timeline = timeline_path(exp_dir, raw["cycle"])
            rows = cycle_timelines(exp_dir, [raw], []).get(int(raw["cycle"]))  # an unreadable one is left out
            try:
                compute_cycle(raw, setup, config, rows)
            except SHAPE_ERRORS:  # the cycle alone is fine: its timeline is not
                return f"{timeline}: damaged meter timeline: a value is not a number the figures can use"
    except ResultsError as found:  # the file and its problem, as the readers name it
        return str(found)
    # Nothing more precise was found: setup.json holds a value of another type than lem writes.
    return f"{exp_dir / 'setup.json'}: damaged: a value the figures need is not of the type lem writes"


def read_summary(path: Path) -> dict[str, Any]:
    """Read a ``summary.json``: :func:`read_json`, and a file of the wrong shape (see :func:`summary_damage`)
    is a :class:`ResultsError` too, naming the field and what was expected."""
    return _read_checked(path, summary_damage)


def usable_timelines(
    exp_dir: Path,
    cycles: Sequence[Mapping[str, Any]],
    setup: Mapping[str, Any],
    config: ExperimentConfig,
    damaged: list[str],
) -> dict[int, list[dict[str, Any]]]:
    """:func:`~lem.results.timelines.cycle_timelines`, less the timelines that spoil their cycle's figures.

    A timeline that reads as CSV may still hold values that break the figures computed from it (or make
    them infinite) where its cycle alone gives them. Such a timeline is blamed, not its cycle file: it is
    left out, with one line in ``damaged``, so its cycle is kept and only the figures a timeline gives are
    ``null`` (with the reason that there is no timeline). A cycle that fails without its timeline too is
    left to its caller: the cycle file is what is damaged then.
    """
    timelines = cycle_timelines(exp_dir, cycles, damaged)
    for raw in cycles:
        number = int(raw["cycle"])
        rows = timelines.get(number)
        if rows is None:
            continue
        try:
            _check_finite(compute_cycle(raw, setup, config, rows)[:2])
        except SHAPE_ERRORS as exc:
            try:
                _check_finite(compute_cycle(raw, setup, config)[:2])
            except SHAPE_ERRORS:
                continue  # the cycle file itself is damaged: its caller names it
            del timelines[number]
            damaged.append(
                f"{timeline_path(exp_dir, number).name}: damaged meter timeline ({exc}); cycle"
                f" {number} is kept without the figures its timeline gives (they are null; the raw file is"
                f" {timeline_path(exp_dir, number)})"
            )
    return timelines


def _check_finite(blocks: Any) -> None:
    # lem writes JSON without NaN or infinity: a figure that comes out so was computed from an absurd value.
    try:
        json.dumps(blocks, allow_nan=False, default=str)
    except ValueError:
        raise ValueError("a figure computed from it is not a finite number") from None


def cycle_paths(exp_dir: Path) -> list[Path]:
    """The cycle files of an experiment, in cycle order."""
    found = [(int(m.group(1)), p) for p in exp_dir.iterdir() if (m := CYCLE_RE.match(p.name))]
    return [p for _, p in sorted(found)]


# --- computing ------------------------------------------------------------------------


def flat_config(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML-shaped config flattened to dotted keys (``{"batching.batch_size": 8, ...}``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nested_config(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flat_config`: dotted keys back into TOML-shaped tables."""
    doc: dict[str, Any] = {}
    for dotted, value in flat.items():
        *tables, key = str(dotted).split(".")
        node = doc
        for table in tables:
            node = node.setdefault(table, {})
            if not isinstance(node, dict):  # a key that is both a value and a table: damage, left out
                break
        else:
            node[key] = value
    return doc


def setup_config(setup: Mapping[str, Any]) -> tuple[ExperimentConfig, list[str]]:
    """The experiment's typed config from its stored flattened config (:func:`read_setup` gives it), and notes.

    Lenient, for results of any schema (:func:`lem.configfile.loading.structure_leniently`): a key this lem
    does not know or cannot read keeps its default, and a note says so; without any stored config every
    setting is its default (and a note says that).
    """
    flat = setup.get("config")
    doc = nested_config(flat) if isinstance(flat, Mapping) else {}
    model = setup.get("model")
    doc.setdefault("model", model if isinstance(model, str) else "unknown")
    config, problems = structure_leniently(doc)
    notes = [f"stored config: {p.path}: {p.message}; its default is used for the figures" for p in problems]
    if config is None:
        notes.append("no readable stored config (experiment.toml): the figures use every setting's default")
        config = ExperimentConfig(model=str(doc["model"]))
    return config, notes


def experiment_config(exp_dir: Path) -> dict[str, Any]:
    """The flattened config of ``exp_dir/experiment.toml`` (empty when it is missing or damaged)."""
    return flat_config(_toml(exp_dir / "experiment.toml"))


def read_setup(exp_dir: Path) -> dict[str, Any]:
    """``setup.json``, with the flattened config that schema 1 did not store taken from ``experiment.toml``.

    A file whose fields are not of the types lem writes (see :func:`setup_damage`) is a :class:`ResultsError`
    naming the field and what was expected.
    """
    setup = _read_checked(exp_dir / "setup.json", setup_damage)
    if not setup.get("config"):
        setup["config"] = experiment_config(exp_dir)
    return setup


def aggregate_experiment(exp_dir: Path, damaged: list[str] | None = None) -> dict[str, Any]:
    """Recompute an experiment's ``summary.json`` from its raw files and write it.

    A damaged timeline's line (see :func:`usable_timelines`) goes into the
    summary's warnings, and is appended to ``damaged`` when given; its cycle is kept.
    A missing ``setup.json`` is a :class:`ResultsError` that says so.
    """
    if not (exp_dir / "setup.json").exists():
        raise ResultsError(
            f"{exp_dir / 'setup.json'}: missing: the cycles cannot be aggregated without it (it holds the idle"
            " baseline and the settings the figures need); re-run the experiment"
        )
    setup = read_setup(exp_dir)
    config, notes = setup_config(setup)
    cycles = [read_cycle(p) for p in cycle_paths(exp_dir)]
    if not cycles:
        raise ResultsError(f"{exp_dir}: no cycle files to aggregate")
    found: list[str] = []
    summary = summarize(setup, config, cycles, usable_timelines(exp_dir, cycles, setup, config, found))
    summary["warnings"] = [*found, *notes, *summary["warnings"]]
    if damaged is not None:
        damaged += found
    write_json(exp_dir / "summary.json", "summary", summary)
    return summary


def pool(exp_dirs: Sequence[Path], allow_mixed_backends: bool = False) -> dict[str, Any]:
    """One summary over the cycles of several experiments (repeats of the same setup, e.g. across runs).

    :raises ResultsError: when the experiments used different backends and that was not allowed.
    """
    setups = [read_setup(d) for d in exp_dirs]
    backends = sorted({str(s.get("backend")) for s in setups})
    if len(backends) > 1 and not allow_mixed_backends:
        raise ResultsError(
            f"these experiments used different backends ({', '.join(backends)}); pooling their cycles mixes "
            "implementations: pass --allow-mixed-backends if that is what you want"
        )
    figures_by_exp = []
    cycles: list[dict[str, Any]] = []
    for d, s in zip(exp_dirs, setups, strict=True):
        try:
            raw = [read_cycle(p) for p in cycle_paths(d)]
        except ResultsError as exc:
            raise ResultsError(f"{exc}; nothing pooled: leave {d} out or re-run it") from None
        cycles += raw
        figures_by_exp.append((s, raw))
    # Each cycle is computed with its own experiment's setup (its own idle baseline), then pooled.
    blocks = []
    damaged: list[str] = []
    for d, (s, raw) in zip(exp_dirs, figures_by_exp, strict=True):
        config, notes = setup_config(s)
        damaged += [f"{d}: {n}" for n in notes]
        try:
            timelines = usable_timelines(d, raw, s, config, damaged)
            for c in raw:
                m, e, _ = compute_cycle(c, s, config, timelines.get(int(c["cycle"])))
                blocks.append({"metrics": m, "energy": e})
        except SHAPE_ERRORS:
            raise ResultsError(f"{damaged_file(d)}; nothing pooled: leave {d} out or re-run it") from None
    return {
        "experiments": [str(d) for d in exp_dirs],
        "backends": backends,
        "models": sorted({str(s.get("model")) for s in setups}),
        "cycles": len(blocks),
        "figures": headline_figures(blocks),
        "warnings": damaged,
    }


# --- finding ------------------------------------------------------------------------------


def experiment_dirs(root: Path) -> list[Path]:
    """Experiment directories under a results directory, a run directory or one experiment directory."""
    if (root / "experiment.toml").exists():
        return [root]
    found = sorted(p.parent for p in root.glob("*/experiment.toml"))
    if not found:
        found = sorted(p.parent for p in root.glob("*/*/experiment.toml"))
    return found


def resolve(target: str, results_dir: Path) -> Path:
    """A run id, ``run-id/experiment-id`` or a path, as a directory; :class:`ResultsError` if absent."""
    for candidate in (Path(target), results_dir / target):
        if candidate.is_dir():
            return candidate
    raise ResultsError(f"{target}: no such run or experiment under {results_dir} (see `lem results list`)")


def _toml(path: Path) -> dict[str, Any]:

    try:
        return read_toml(path)
    except ConfigError:
        return {}


def experiment_status(exp_dir: Path) -> dict[str, Any]:
    """A row for ``lem results list``: id, model, backend, status and key figures.

    A damaged result file gives status ``damaged`` and a reason naming the file, never a
    traceback and never a quiet fall-back to another status.
    """
    row: dict[str, Any] = {"id": f"{exp_dir.parent.name}/{exp_dir.name}", "path": str(exp_dir)}
    doc: dict[str, Any] = {}
    statuses = (
        ("summary.json", "ok"),
        ("failure.json", "failed"),
        ("interrupted.json", "interrupted"),
        ("setup.json", "incomplete"),
    )
    for name, status in statuses:
        if (exp_dir / name).exists():
            try:  # a summary is checked field by field (summary_damage): export and the plots call it damaged too
                doc = (read_summary if name == "summary.json" else read_json)(exp_dir / name)
            except ResultsError as exc:
                row.update(status="damaged", reason=str(exc), model=None, backend=None, energy_reason=None)
                doc = _toml(exp_dir / "experiment.toml")
                row["model"], row["backend"] = doc.get("model"), doc.get("backend")
                return row
            row["status"] = status
            if name == "summary.json" and doc.get("status") in ("degraded", "failed"):
                # Measured to the end, but its requests failed: the summary says how many and why.
                row["status"], row["reason"] = doc["status"], doc.get("status_reason")
            break
    else:
        row["status"] = "not started"
        doc = _toml(exp_dir / "experiment.toml")
    if row["status"] == "interrupted":  # its record has no model or backend: the config has
        doc = {**_toml(exp_dir / "experiment.toml"), **doc}
    row["model"], row["backend"] = doc.get("model"), doc.get("backend")
    figs = doc.get("figures")
    for key in (f.name for f in in_view("run_table")):
        cell = figs.get(key) if isinstance(figs, Mapping) else None
        mean = cell.get("mean") if isinstance(cell, Mapping) else None
        row[key] = mean if number(mean) else None
    if row["status"] in ("ok", "degraded"):
        # Which shown figures rest on an estimate, and what on: every screen marks them.
        methods = {f.name: method_of(doc, f.name) for f in in_view("run_table")}
        row["methods"] = {name: m.kind for name, m in methods.items()}
        row["estimate_basis"] = next((m.basis for m in methods.values() if m.basis), None)
    if row["status"] in ("failed", "interrupted") and "reason" not in row:
        row["reason"] = doc.get("reason")
    row["energy_reason"] = doc.get("energy_reason")
    return row
