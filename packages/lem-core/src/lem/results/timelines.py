"""Meter timelines (``timeline-NNN.csv``): CSV text, reading it back typed and checked, one per cycle.

The run computes its figures from :func:`as_written` rows, so they equal what
``lem results aggregate`` recomputes from the files; :func:`lem.results.files.write_timeline`
writes them atomically.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem.errors import ResultsError


def timeline_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """A meter's timeline as CSV text: ``t_s``, ``device``, then every other column seen."""
    columns = ["t_s", "device"]
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _cell(text: str) -> Any:
    """A timeline CSV cell as a value: int, float, text; empty is ``None``."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_timeline(text: str) -> list[dict[str, Any]]:
    """Timeline rows from the text of a ``timeline-NNN.csv`` (cells typed by :func:`_cell`).

    :raises ValueError: for a row with more cells than the header has columns.
    """
    rows = []
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if None in row:  # csv.DictReader files the cells beyond the header under None
            raise ValueError(f"line {n}: more cells than the header has columns")
        rows.append({k: _cell(v) for k, v in row.items()})
    return rows


#: Timeline columns named with a unit (``power_w``, ``temperature_c``, ``sm_clock_mhz``, ...) hold numbers
#: (or are empty where a device offers no reading).
MEASURED_SUFFIXES = ("_s", "_w", "_j", "_c", "_pct", "_mib", "_mhz")


def read_timeline(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a ``timeline-NNN.csv``, or ``None`` when there is none.

    A file that is not readable CSV text (binary garbage, cut in a multi-byte
    character), has a row with more cells than its header or without a finite
    numeric ``t_s``, or text, NaN or infinity in a column named with a unit
    (:data:`MEASURED_SUFFIXES`), is a :class:`ResultsError` naming it.
    """
    if not path.exists():
        return None
    try:
        rows = parse_timeline(path.read_text(encoding="utf-8"))
        for n, row in enumerate(rows, start=2):
            if "t_s" not in row:
                raise ValueError("no t_s column")
            for key, value in row.items():
                must = key == "t_s" or (value is not None and str(key).endswith(MEASURED_SUFFIXES))
                # float() reads "nan" and "inf" too: no meter gives them, so the file is damaged.
                if must and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                    raise ValueError(f"line {n}: {key} = {value!r} is not a number")
        return rows
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        why = f"not UTF-8 text: byte {exc.start} cannot be read" if isinstance(exc, UnicodeDecodeError) else exc
        raise ResultsError(
            f"{path.name}: damaged meter timeline ({why}); the steady-state, step-energy"
            f" and thermal figures of that cycle need it (the raw file is {path})"
        ) from None


def as_written(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Timeline rows as :func:`read_timeline` gives them back once written: figures computed in the run
    from these equal those that ``lem results aggregate`` recomputes from the file."""
    return parse_timeline(timeline_csv(rows))


#: The numbers a cycle may have: its files are named with them (``cycle-001.json``, ``timeline-001.csv``).
CYCLE_NUMBERS = range(10**6)
#: A timeline's file name; the group is its cycle's number.
TIMELINE_RE = re.compile(r"^timeline-(\d{3,})\.csv$")


def timeline_path(exp_dir: Path, cycle: Any) -> Path:
    """The ``timeline-NNN.csv`` of cycle number ``cycle`` (as its cycle file's ``cycle`` holds it).

    :raises ValueError: for a ``cycle`` that is not a cycle number (a damaged cycle file).
    """
    number = int(cycle)
    if isinstance(cycle, bool) or number not in CYCLE_NUMBERS:
        raise ValueError(f"cycle {cycle!r} is not a cycle number")
    return exp_dir / f"timeline-{number:03d}.csv"


def cycle_timelines(
    exp_dir: Path, cycles: Sequence[Mapping[str, Any]], damaged: list[str] | None = None
) -> dict[int, list[dict[str, Any]]]:
    """``{cycle: rows}`` of the cycles' ``timeline-NNN.csv`` files that exist.

    A damaged timeline is left out, so only the figures it gives are ``null``
    (with the reason that there is no timeline); its one-line description is
    appended to ``damaged`` when given, else the error is raised.
    """
    out = {}
    for c in cycles:
        try:
            rows = read_timeline(timeline_path(exp_dir, c["cycle"]))
        except ResultsError as exc:
            if damaged is None:
                raise
            damaged.append(f"{exc} (its figures are null)")
            continue
        if rows is not None:
            out[int(c["cycle"])] = rows
    return out
