"""A run's files read for people: what the plots and the HTML report show.

Everything here reads defensively. A report is written at the end of every
run, over results of any schema version lem has written (1 and 2), over
experiments that failed or never finished, and over files damaged by hand: a
file that cannot be read becomes a line in ``problems`` naming it (the same
line :func:`lem.results.files.read_json` gives, and a summary of the wrong
shape is found by :func:`lem.results.shapes.summary_damage`, as ``lem results
list`` finds it), never an exception that would lose the report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.errors import ResultsError
from lem.results.files import CYCLE_RE, read_json
from lem.results.shapes import cycle_damage, summary_damage
from lem.results.timelines import (
    READ_ERRORS,
    TIMELINE_RE,
    check_timeline,
    missing_timeline,
    recorded_timeline,
    why_damaged,
)


@attrs.frozen
class ExperimentData:
    """One experiment directory: its status and whichever of its files could be read."""

    path: Path
    id: str
    status: (
        str  # "ok", "degraded", "failed", "damaged" (summary.json: then summary is None), "incomplete", "not started"
    )
    summary: Mapping[str, Any] | None
    failure: Mapping[str, Any] | None
    setup: Mapping[str, Any] | None
    environment: Mapping[str, Any] | None
    config_toml: str | None
    problems: tuple[str, ...]


@attrs.frozen
class RunData:
    """A run directory (``run.json`` and its experiments), or any directory holding experiments."""

    path: Path
    run: Mapping[str, Any] | None
    experiments: tuple[ExperimentData, ...]
    problems: tuple[str, ...]


def read_doc(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` (absent, or damaged: then a line is added to ``problems``)."""
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ResultsError as exc:  # read_json's line names the file first: keep what it says of it
        problems.append(f"{path}: unreadable ({str(exc).removeprefix(f'{path}: ')})")
        return None


def read_experiment(exp_dir: Path) -> ExperimentData:
    """Read one experiment directory."""
    problems: list[str] = []
    summary = read_doc(exp_dir / "summary.json", problems)
    failure = read_doc(exp_dir / "failure.json", problems)
    setup = read_doc(exp_dir / "setup.json", problems)
    environment = read_doc(exp_dir / "environment.json", problems)
    try:
        config_toml: str | None = (exp_dir / "experiment.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        config_toml = None
    damage = summary_damage(summary) if summary is not None else None
    if damage is not None:
        problems.append(f"{exp_dir / 'summary.json'}: damaged: {damage}; its figures are not shown")
        status, summary = "damaged", None  # no screen reads a summary of the wrong shape
    elif summary is not None:  # a summary says whether its requests failed (lem.figures.outcome)
        status = summary["status"] if summary.get("status") in ("degraded", "failed") else "ok"
    elif failure is not None:
        status = "failed"
    elif setup is not None or any(CYCLE_RE.match(p.name) for p in exp_dir.iterdir()):
        status = "incomplete"
    else:
        status = "not started"
    return ExperimentData(
        exp_dir, exp_dir.name, status, summary, failure, setup, environment, config_toml, tuple(problems)
    )


def read_run(directory: Path) -> RunData:
    """Read a run directory (or an experiment directory, or a results directory of several runs)."""
    problems: list[str] = []
    run = read_doc(directory / "run.json", problems)
    if (directory / "experiment.toml").exists():
        dirs = [directory]
    else:
        dirs = sorted(p.parent for p in directory.glob("*/experiment.toml"))
        if not dirs:
            dirs = sorted(p.parent for p in directory.glob("*/*/experiment.toml"))
    if run is not None:
        # run.json lists the experiments in the order they ran; keep that order.
        order = {name: i for i, name in enumerate(run.get("experiments") or ())}
        dirs.sort(key=lambda d: (order.get(d.name, len(order)), str(d)))
    return RunData(directory, run, tuple(read_experiment(d) for d in dirs), tuple(problems))


def cycles(exp: ExperimentData, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The experiment's cycle files in cycle order; a damaged one is left out (and named in ``problems``)."""
    found = sorted((int(m.group(1)), p) for p in exp.path.iterdir() if (m := CYCLE_RE.match(p.name)))
    seen: list[str] = []
    docs = []
    for _, p in found:
        doc = read_doc(p, seen)
        problem = cycle_damage(doc) if doc is not None else None
        if problem is not None:  # the check every reader of cycle files makes (lem.results.files.read_cycle)
            seen.append(f"{p}: damaged: {problem}")
        elif doc is not None:
            docs.append(doc)
    if problems is not None:
        problems += [f"{line}; that cycle is left out" for line in seen]
    return docs


def timelines(
    exp: ExperimentData, problems: list[str] | None = None, cycle_docs: list[dict[str, Any]] | None = None
) -> list[tuple[int, list[dict[str, str]]]]:
    """``(cycle, rows)`` of every ``timeline-NNN.csv`` of the experiment, in cycle order; values as text.

    A damaged timeline (what :func:`lem.results.timelines.read_timeline` refuses) is left out, and named in
    ``problems``, as is a missing one whose cycle file says it was recorded; its cycle is not left out.
    ``cycle_docs``: the experiment's cycle files where the caller has read them (:func:`cycles`).
    """
    out = []
    for p in sorted(exp.path.iterdir()):
        m = TIMELINE_RE.match(p.name)
        if m is None:
            continue
        try:
            text = p.read_text(encoding="utf-8")
            check_timeline(text)  # the checks every reader of timelines makes
            rows = list(csv.DictReader(io.StringIO(text)))
        except READ_ERRORS as exc:
            if problems is not None:
                problems.append(f"{p}: damaged meter timeline ({why_damaged(exc)}); left out, its cycle is kept")
            continue
        out.append((int(m.group(1)), rows))
    if problems is not None:
        found = {n for n, _ in out}
        for doc in cycles(exp) if cycle_docs is None else cycle_docs:
            n = number(doc.get("cycle"))
            if n is None or not n.is_integer() or int(n) in found or not recorded_timeline(doc):
                continue
            path = exp.path / f"timeline-{int(n):03d}.csv"
            if not path.exists():
                problems.append(f"{exp.path}/{missing_timeline(path)}; its cycle is kept")
    return out


def name_left_out(exp: ExperimentData, problems: list[str]) -> None:
    """Name in ``problems`` the damaged cycle files and timelines of an experiment whose figures are drawn
    (``ok`` or ``incomplete``): what the plots and the report leave out of it."""
    if exp.status in ("ok", "incomplete"):
        timelines(exp, problems, cycles(exp, problems))


def number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` (empty CSV cell, null, text)."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def figure(exp: ExperimentData, name: str) -> Mapping[str, Any] | None:
    """The summary's entry for one headline figure (``{n, mean, ci95_low, ...}``), or ``None``."""
    if exp.summary is None:
        return None
    figs = exp.summary.get("figures")
    entry = figs.get(name) if isinstance(figs, Mapping) else None
    return entry if isinstance(entry, Mapping) else None


def mean(exp: ExperimentData, name: str) -> float | None:
    """The cycle mean of a headline figure, or ``None`` when it was not measured."""
    entry = figure(exp, name)
    return None if entry is None else number(entry.get("mean"))


def ci(exp: ExperimentData, name: str) -> tuple[float, float] | None:
    """The 95% confidence interval of a headline figure, or ``None`` when unknown."""
    entry = figure(exp, name)
    if entry is None:
        return None
    low, high = number(entry.get("ci95_low")), number(entry.get("ci95_high"))
    return None if low is None or high is None else (low, high)


def label(exp: ExperimentData) -> str:
    """A short name for plots: the sweep values (``batch_size=8``), else the experiment id."""
    doc = exp.summary or exp.failure or exp.setup or {}
    values = doc.get("sweep_values")
    if isinstance(values, Mapping) and values:
        return ", ".join(f"{str(k).rsplit('.', 1)[-1]}={v}" for k, v in values.items())
    return exp.id


def energy_reason(exps: Sequence[ExperimentData]) -> str | None:
    """Why energy was not measured, from the first experiment that says."""
    for e in exps:
        for doc in (e.summary, e.setup):
            if doc and (doc.get("energy_reason") or doc.get("meter_reason")):
                return str(doc.get("energy_reason") or doc.get("meter_reason"))
    return None
