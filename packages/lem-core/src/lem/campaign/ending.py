"""How a campaign ends: its ``report.html``, then the table (or, with ``--json``, the documents) on stdout.

The table has one line per experiment, its cycle means ± the half-width of
their 95% CI, then the reasons of failures and of energy not measured.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lem.results.files import experiment_status, read_json
from lem.results.plots import INSTALL_HINT
from lem.results.report import write_report
from lem.results.rundata import number, read_doc

#: End-of-run table columns: heading, row key, scale, format.
TABLE_FIGURES = (
    ("out tok/s", "output_tokens_per_s", 1.0, ".1f"),
    ("TTFT p50 ms", "ttft_s.p50", 1e3, ".1f"),
    ("J/out tok", "energy.j_per_output_token", 1.0, ".4g"),
)


def _half_widths(row: Mapping[str, Any]) -> dict[str, float]:
    """Half-widths of the 95% CIs of the table's figures, from the experiment's summary (none when unknown)."""
    measured = row.get("status") in ("ok", "degraded") and row.get("path")
    doc = read_doc(Path(row["path"]) / "summary.json", []) if measured else None
    out = {}
    for _, key, _, _ in TABLE_FIGURES:
        figures = (doc or {}).get("figures")
        entry = figures.get(key) if isinstance(figures, Mapping) else None
        if not isinstance(entry, Mapping):
            continue
        low, high = number(entry.get("ci95_low")), number(entry.get("ci95_high"))
        if low is not None and high is not None:
            out[key] = (high - low) / 2
    return out


def _figure_cell(row: Mapping[str, Any], key: str, scale: float, spec: str, half: Mapping[str, float]) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = format(value * scale, spec)
    if key not in half:
        return text
    # A fixed-point figure keeps its decimals; a figure of a few significant digits shows two of its CI's.
    return f"{text} ± {format(half[key] * scale, spec if spec.endswith('f') else '.2g')}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The end-of-run table: one line per experiment, cycle means ± the half-width of their 95% CI, then reasons."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    for heading in ("experiment", "status", "backend", "model"):
        t.add_column(heading, no_wrap=True)
    for heading, *_ in TABLE_FIGURES:
        t.add_column(heading, justify="right", no_wrap=True)
    halves = [_half_widths(r) for r in rows]
    for r, half in zip(rows, halves, strict=True):
        figures = [_figure_cell(r, key, scale, spec, half) for _, key, scale, spec in TABLE_FIGURES]
        t.add_row(r["id"], r["status"], str(r.get("backend")), str(r.get("model")), *figures)
    buf = io.StringIO()
    # A plain-text rendering (no colour, no terminal width): the same table in a terminal, a pipe or a log.
    Console(file=buf, width=10_000, color_system=None, force_terminal=False).print(t, markup=False)
    lines = [line.rstrip() for line in buf.getvalue().splitlines() if line.strip()]
    for r in rows:
        if r.get("reason"):
            lines.append(f"{r['id']}: {r['reason']}")
    reasons = sorted({r["energy_reason"] for r in rows if r.get("energy_reason")})
    lines += [f"energy not measured: {reason}" for reason in reasons]
    if any(halves):
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
