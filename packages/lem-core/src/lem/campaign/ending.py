"""How a campaign ends: its ``report.html``, then the table (or, with ``--json``, the documents) on stdout.

The table has one line per experiment, its cycle means ± the half-width of
their 95% CI (figures and labels from :mod:`lem.figures.registry`, estimates
and flags marked), then the reasons of failures and of energy not measured,
what each estimate rests on and why a figure is flagged.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from rich import box
from rich.console import Console
from rich.table import Table

from lem.figures.registry import (
    ESTIMATE,
    FLAGGED,
    MEASURED,
    Figure,
    Method,
    flags_of,
    format_value,
    in_view,
    marked,
    method_of,
)
from lem.figures.validity import left_out_line
from lem.results.files import experiment_status, read_json
from lem.results.plots import INSTALL_HINT
from lem.results.report import write_report
from lem.results.rundata import number, read_doc


@attrs.frozen
class _Shown:
    """What the table shows of one experiment's figures beside their means: CI half-widths, methods, flags."""

    half: Mapping[str, float]
    methods: Mapping[str, Method]
    flags: Mapping[str, list[str]]
    #: Spoilt cycles left out of the figures (lem.figures.validity), when any were.
    left_out: str | None = None


def _shown(row: Mapping[str, Any]) -> _Shown:
    """The 95% CI half-widths, methods and flags of the table's figures, from the experiment's summary."""
    measured = row.get("status") in ("ok", "degraded") and row.get("path")
    doc = read_doc(Path(row["path"]) / "summary.json", []) if measured else None
    half, methods, flags = {}, {}, {}
    figures = (doc or {}).get("figures")
    for fig in in_view("run_table"):
        entry = figures.get(fig.name) if isinstance(figures, Mapping) else None
        if not isinstance(entry, Mapping):
            continue
        low, high = number(entry.get("ci95_low")), number(entry.get("ci95_high"))
        if low is not None and high is not None:
            half[fig.name] = (high - low) / 2
        if doc is not None and number(entry.get("mean")) is not None:
            methods[fig.name] = method_of(doc, fig.name)
            if found := flags_of(doc, fig.name):
                flags[fig.name] = found
    left_out = None
    if doc is not None and isinstance(doc.get("validity"), Mapping) and isinstance(doc.get("cycles"), int):
        left_out = left_out_line(doc["validity"], doc["cycles"])
    return _Shown(half, methods, flags, left_out)


def _figure_cell(row: Mapping[str, Any], fig: Figure, shown: _Shown) -> str:
    value = row.get(fig.name)
    if value is None:
        return "-"
    text = format_value(fig, value)
    if fig.name in shown.half:
        text += f" ± {_half_width(fig, shown.half[fig.name])}"
    return marked(text, shown.methods.get(fig.name, MEASURED), shown.flags.get(fig.name, ()))


def _half_width(fig: Figure, half: float) -> str:
    """A CI half-width: a fixed-point figure keeps its decimals; others show two significant digits, no exponent."""
    if fig.spec.endswith("f"):
        return format_value(fig, half)
    scaled = abs(half * fig.scale)
    decimals = max(0, 1 - math.floor(math.log10(scaled))) if scaled > 0 else 0
    return format(round(scaled, decimals), f".{decimals}f")


def table(rows: Sequence[dict[str, Any]], extra: Sequence[tuple[str, str]] = ()) -> str:
    """The end-of-run table: one line per experiment, cycle means ± the half-width of their 95% CI, then reasons.

    A figure resting on an estimate is marked ``(estimate)`` and a flagged one ``(flagged)``; the lines
    below the table say what each estimate rests on and why each figure is flagged.
    """
    columns = in_view("run_table")
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for heading in ("experiment", "status", "backend", "model", *(h for h, _ in extra)):
        t.add_column(heading, no_wrap=True)
    for fig in columns:
        t.add_column(fig.title, justify="right", no_wrap=True)
    shown = [_shown(r) for r in rows]
    for r, s in zip(rows, shown, strict=True):
        t.add_row(
            r["id"],
            r["status"],
            str(r.get("backend")),
            str(r.get("model")),
            *(str(r.get(key, "")) for _, key in extra),  # extra: (heading, row key) columns (results list)
            *(_figure_cell(r, f, s) for f in columns),
        )
    buf = io.StringIO()
    # A plain-text rendering (no colour, no terminal width): the same table in a terminal, a pipe or a log.
    Console(file=buf, width=10_000, color_system=None, force_terminal=False, markup=False).print(t)
    lines = [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]
    for r in rows:
        if r.get("reason"):
            lines.append(f"{r['id']}: {r['reason']}")
    reasons = sorted({r["energy_reason"] for r in rows if r.get("energy_reason")})
    lines += [f"energy not measured: {reason}" for reason in reasons]
    for r, s in zip(rows, shown, strict=True):
        if s.left_out is not None and s.left_out not in (r.get("reason") or ""):
            lines.append(f"{r['id']}: {s.left_out}")
        estimated = [f for f in columns if s.methods.get(f.name, MEASURED).estimate]
        if estimated:
            basis = next((s.methods[f.name].basis for f in estimated if s.methods[f.name].basis), None)
            lines.append(
                f"{ESTIMATE} {r['id']}: {', '.join(f.title for f in estimated)} "
                f"rest{'s' if len(estimated) == 1 else ''} on an estimate, not a "
                f"measurement: {basis or 'the result does not record its basis'}"
            )
        for f in columns:
            for why in s.flags.get(f.name, ()):
                lines.append(f"{FLAGGED} {r['id']}: {f.title}: {why}")
    if any(s.half for s in shown):
        lines.append("±: half-width of the 95% confidence interval over cycles")
    return "\n".join(lines)


def write_run_report(run_dir: Path, quiet: bool) -> Path | None:
    """Write the run's ``report.html``; a failure costs one warning line, never the run's results or status."""
    try:
        done = write_report(run_dir)
    except Exception as exc:  # the results are on disk already: no report is worth losing them
        print(
            f"lem: warning: report.html not written ({type(exc).__name__}: {exc}); "
            f"the results are complete; retry with `lem report {run_dir}`",
            file=sys.stderr,
        )
        return None
    if not done.plots_available and not quiet:
        print(f"lem: report.html written without plots: {INSTALL_HINT}", file=sys.stderr)
    return done.path


def json_document(
    run_dir: Path, run_id: str, experiment_ids: Sequence[str], report: Path | None, all_ok: bool
) -> dict[str, Any]:
    """What ``lem run --json`` prints: the run, its report, and each experiment's summary or failure."""
    docs = []
    for exp_id in experiment_ids:
        d = run_dir / exp_id
        name = "summary.json" if (d / "summary.json").exists() else "failure.json"
        docs.append(read_json(d / name) if (d / name).exists() else {"experiment_id": exp_id, "status": "missing"})
    report_text = None if report is None else str(report)
    return {"run_id": run_id, "results": str(run_dir), "report": report_text, "ok": all_ok, "experiments": docs}


def status_table(run_dir: Path, experiment_ids: Sequence[str]) -> str:
    """The end-of-run :func:`table` of the run's experiments, read from their directories."""
    return table([experiment_status(run_dir / exp_id) for exp_id in experiment_ids])
