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
from lem.figures.thermal import NO_TIMELINE


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

    :raises ValueError: for a row with more or fewer cells than the header has columns (lem writes every
        cell of every row, empty where there is no reading: a short row is a file cut short or edited).
    """
    rows = []
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if None in row:  # csv.DictReader files the cells beyond the header under None
            raise ValueError(f"line {n}: more cells than the header has columns")
        if None in row.values():  # ... and gives None for the columns a row has no cell for
            raise ValueError(f"line {n}: fewer cells than the header has columns (cut short?)")
        rows.append({k: _cell(v) for k, v in row.items()})
    return rows


#: Timeline columns named with a unit (``power_w``, ``temperature_c``, ``sm_clock_mhz``, ...) hold numbers
#: (or are empty where a device offers no reading).
MEASURED_SUFFIXES = ("_s", "_w", "_j", "_c", "_pct", "_mib", "_mhz")


#: What reading a damaged timeline raises (:func:`check_timeline`); :func:`why_damaged` says it in words.
READ_ERRORS = (OSError, UnicodeDecodeError, csv.Error, ValueError)


def check_timeline(text: str) -> list[dict[str, Any]]:
    """The rows of a timeline's text, checked as :func:`read_timeline` says.

    :raises ValueError: (or :data:`READ_ERRORS`) for a damaged timeline.
    """
    if not text.strip():
        raise ValueError("an empty file: lem writes a header and a row per sample")
    rows = parse_timeline(text)
    if not rows:
        raise ValueError("a header but no samples: lem writes a timeline only when its meter took some")
    for n, row in enumerate(rows, start=2):
        if "t_s" not in row:
            raise ValueError("no t_s column")
        for key, value in row.items():
            must = key == "t_s" or (value is not None and str(key).endswith(MEASURED_SUFFIXES))
            # float() reads "nan" and "inf" too: no meter gives them, so the file is damaged.
            if must and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"line {n}: {key} = {value!r} is not a number")
    return rows


def why_damaged(exc: BaseException) -> str:
    """What is wrong with a timeline, from what :func:`check_timeline` (or reading the file) raised."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: byte {exc.start} cannot be read"
    return str(exc)


def read_timeline(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a ``timeline-NNN.csv``, or ``None`` when there is none.

    A file that is not readable CSV text (binary garbage, cut in a multi-byte
    character), is empty or has no samples, has a row with more or fewer cells
    than its header or without a finite numeric ``t_s``, or text, NaN or
    infinity in a column named with a unit (:data:`MEASURED_SUFFIXES`), is a
    :class:`ResultsError` naming it.
    """
    if not path.exists():
        return None
    try:
        return check_timeline(path.read_text(encoding="utf-8"))
    except READ_ERRORS as exc:
        raise ResultsError(
            f"{path.name}: damaged meter timeline ({why_damaged(exc)}); the steady-state, step-energy"
            f" and thermal figures of that cycle need it (the raw file is {path})"
        ) from None


def recorded_timeline(cycle: Mapping[str, Any]) -> bool:
    """Whether a cycle file says its meter recorded a timeline: its thermal context (computed in the run
    from the timeline, :func:`lem.figures.thermal.thermal_context`) is not the one of a cycle without."""
    energy = cycle.get("energy")
    thermal = energy.get("thermal") if isinstance(energy, Mapping) else None
    return isinstance(thermal, Mapping) and thermal.get("reason") != NO_TIMELINE


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


def missing_timeline(path: Path) -> str:
    """The line naming a timeline that is gone while its cycle file says the meter recorded it."""
    return (
        f"{path.name}: missing meter timeline: its cycle file says the meter recorded one; the steady-state,"
        f" step-energy and thermal figures of that cycle need it (restore {path} or re-run the experiment)"
    )


def cycle_timelines(
    exp_dir: Path, cycles: Sequence[Mapping[str, Any]], damaged: list[str] | None = None
) -> dict[int, list[dict[str, Any]]]:
    """``{cycle: rows}`` of the cycles' ``timeline-NNN.csv`` files that exist.

    A damaged timeline, or a missing one whose cycle file says it was recorded (:func:`recorded_timeline`),
    is left out, so only the figures it gives are ``null``
    (with the reason that there is no timeline); its one-line description is
    appended to ``damaged`` when given, else the error is raised.
    """
    out = {}
    for c in cycles:
        try:
            path = timeline_path(exp_dir, c["cycle"])
            rows = read_timeline(path)
            if rows is None and recorded_timeline(c):
                raise ResultsError(missing_timeline(path))
        except ResultsError as exc:
            if damaged is None:
                raise
            damaged.append(f"{exc} (its figures are null)")
            continue
        if rows is not None:
            out[int(c["cycle"])] = rows
    return out
