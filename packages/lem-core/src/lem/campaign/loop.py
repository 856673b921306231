"""The campaign: every experiment of a file, each in its own worker, resumable, with a table at the end."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lem import __version__
from lem.campaign.worker import Outcome, run_here, run_in_worker
from lem.configfile.loading import Experiment, LoadedFile, dumps
from lem.errors import DiskFull, Interrupted, ResultsError
from lem.results.files import (
    CYCLE_RE,
    experiment_status,
    read_json,
    remove_stale_temporaries,
    write_atomic,
    write_json,
)
from lem.results.rundir import check_resume_id, lock_run
from lem.run.meters import check_meters

if TYPE_CHECKING:
    from lem.campaign.ray_executor import RayOptions
    from lem.config import ExperimentConfig


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a few random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


#: Above this many experiments, `lem run` asks before starting (``--yes`` skips the question).
CONFIRM_ABOVE = 100
#: Seconds a worker takes to start and load a tiny model before measuring anything (a new
#: interpreter importing torch and a backend: 5-10 s on a 2-core CPU machine), used as a floor.
WORKER_START_S = 5.0


def estimate_s(experiments: Sequence[Experiment]) -> float:
    """A lower bound on a campaign's duration: worker starts, idle baselines and cool-downs.

    Generation time is not included: it depends on the hardware and is what
    the campaign measures. The CLI labels this figure as an estimate.
    """
    total = 0.0
    for exp in experiments:
        m = exp.config.measurement
        idle = m.idle_seconds if m.energy_meter != "none" else 0.0
        total += WORKER_START_S + idle + m.cooldown_seconds * max(0, m.cycles - 1)
    return total


def duration_text(seconds: float) -> str:
    """``"3 h 20 min"``, ``"12 min"``, ``"40 s"``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"


def _clear_partial(exp_dir: Path) -> None:
    # A restarted experiment must not mix cycles from an earlier attempt with new ones.
    stale = [
        p
        for p in exp_dir.iterdir()
        if CYCLE_RE.match(p.name)
        or p.name.startswith("timeline-")
        or p.name in ("failure.json", "interrupted.json", "setup.json", "summary.json", "environment.json")
    ]
    for p in stale:  # checked before any is deleted: a directory there is not lem's to remove
        if p.is_dir() and not p.is_symlink():
            raise ResultsError(f"{p}: is a directory where lem keeps a result file; move it away, then --resume again")
    for p in stale:
        p.unlink()
    remove_stale_temporaries(exp_dir)


def _config_difference(text: str, config: ExperimentConfig) -> str | None:
    """Where ``text`` (a resumed run's experiment.toml) and ``config`` differ; ``None`` if they do not.

    Compared as configs, not as text: a key a later lem version added with its
    default reads the same from the stored file, so such a run still resumes.
    """
    import tomllib

    from lem.configfile.loading import structure, unstructure
    from lem.results.files import flat_config

    try:
        before, problems = structure(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        return f"the stored file does not parse: {exc}"
    if before is None:
        return "the stored config is not valid now: " + "; ".join(str(p) for p in problems[:2])
    old, new = flat_config(unstructure(before)), flat_config(unstructure(config))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return None
    shown = ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed[:3])
    return shown + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def _prepare(exp: Experiment, run_dir: Path, resuming: bool) -> bool:
    """Write the experiment's config; ``False`` if a resumed run already finished it."""
    exp_dir = run_dir / exp.id
    toml = dumps(exp.config)
    stored = exp_dir / "experiment.toml"
    if exp_dir.exists() and not exp_dir.is_dir():
        raise ResultsError(f"{exp_dir}: is a file where experiment {exp.id}'s directory goes; move it away")
    if resuming and stored.exists():
        try:
            text = stored.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            # It is the record of how the experiment ran: never overwritten unread.
            raise ResultsError(
                f"{stored}: cannot be read ({exc}), so whether experiment {exp.id} of run {run_dir.name} ran with"
                " this config is unknown; restore the file, or start a new run instead of --resume"
            ) from None
        differs = None if text == toml else _config_difference(text, exp.config)
        if differs is not None:
            raise ResultsError(
                f"{stored}: experiment {exp.id} of run {run_dir.name} was run with a different config"
                f" ({differs}); start a new run instead of --resume"
            )
        if (exp_dir / "summary.json").exists():
            return False
    elif resuming and (exp_dir / "summary.json").exists():
        # Finished, but which config it ran is gone: re-running it would delete its results.
        raise ResultsError(
            f"{exp_dir}: experiment {exp.id} finished (summary.json) but its experiment.toml is missing;"
            " restore that file, or start a new run instead of --resume (its results are kept)"
        )
    exp_dir.mkdir(parents=True, exist_ok=True)
    _clear_partial(exp_dir)
    write_atomic(stored, toml)
    return True


def _failure(exp: Experiment, exp_dir: Path, run_id: str, outcome: Outcome) -> None:
    write_json(
        exp_dir / "failure.json",
        "failure",
        {
            "experiment_id": exp.id,
            "run_id": run_id,
            "backend": exp.config.backend,
            "model": exp.config.model,
            "sweep_values": dict(exp.sweep_values),
            "reason": outcome.reason,
            "detail": outcome.detail,
            "exit_code": outcome.exit_code,
        },
    )


#: End-of-run table columns: heading, row key, scale, format.
TABLE_FIGURES = (
    ("out tok/s", "output_tokens_per_s", 1.0, ".1f"),
    ("TTFT p50 ms", "ttft_s.p50", 1e3, ".1f"),
    ("J/out tok", "energy.j_per_output_token", 1.0, ".4g"),
)


def _half_widths(row: Mapping[str, Any]) -> dict[str, float]:
    """Half-widths of the 95% CIs of the table's figures, from the experiment's summary (none when unknown)."""
    from lem.results.rundata import number, read_doc

    doc = read_doc(Path(row["path"]) / "summary.json", []) if row.get("status") == "ok" and row.get("path") else None
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
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

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


def _write_report(run_dir: Path, quiet: bool) -> Path | None:
    """Write the run's ``report.html``; a failure costs one warning line, never the run's results or status."""
    try:
        from lem.results.report import write_report

        done = write_report(run_dir)
    except Exception as exc:  # the results are on disk already: no report is worth losing them
        print(
            f"lem: warning: report.html not written ({type(exc).__name__}: {exc}); "
            f"the results are complete; retry with `lem report {run_dir}`",
            file=sys.stderr,
        )
        return None
    if not done.plots_available and not quiet:
        from lem.results.plots import INSTALL_HINT

        print(f"lem: report.html written without plots: {INSTALL_HINT}", file=sys.stderr)
    return done.path


def run_campaign(
    loaded: LoadedFile,
    out_dir: str | Path = "results",
    in_process: bool = False,
    resume_id: str | None = None,
    quiet: bool = False,
    as_json: bool = False,
    stdout: TextIO | None = None,
    pythons: Mapping[str, str] | None = None,
    report: bool = True,
    ray: RayOptions | None = None,
) -> bool:
    """Run every experiment of ``loaded`` under ``out_dir/<run-id>/``; ``True`` if all succeeded.

    Each experiment runs in a fresh worker process unless ``in_process``. A
    failed experiment gets a ``failure.json`` and the rest still run. With
    ``resume_id``, experiments whose ``summary.json`` exists are skipped.
    ``pythons`` maps a backend to the interpreter of the environment it is
    installed in (vLLM and TensorRT-LLM never share one); its workers validate
    their experiment there before running it. With ``report``, ``report.html``
    is written in the run directory at the end (a failure to write it is a
    warning, never a failed run). With ``ray``, each experiment is a task on
    that Ray cluster (:mod:`lem.campaign.ray_executor`); its meters are checked on its node.
    """
    out = stdout if stdout is not None else sys.stdout
    root = Path(out_dir)
    if ray is None:
        check_meters(loaded.experiments, pythons or {})
    if resume_id is not None:
        run_dir = check_resume_id(resume_id, root)
        run_id = resume_id
    else:
        run_id = new_run_id()
        run_dir = root / run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(
                f"--out {root}: cannot create the run directory {run_dir} ({exc.strerror}); choose a writable --out"
            ) from None
    lock = lock_run(run_dir)
    try:
        return _run_locked(
            loaded, run_dir, run_id, in_process, resume_id is not None, quiet, as_json, out, pythons, report, ray
        )
    finally:
        lock.release()


def _interrupted(exp: Experiment, exp_dir: Path, run_id: str) -> bool:
    """Record the interruption of ``exp``; ``False`` if it had finished (its summary written) first."""
    if (exp_dir / "summary.json").exists():  # the Ctrl-C came as the worker reported: nothing to redo
        return False
    # Recorded so that `lem results list` says "interrupted", not "incomplete"; a resume redoes it.
    if exp_dir.is_dir():
        write_json(
            exp_dir / "interrupted.json",
            "interrupted",
            {
                "experiment_id": exp.id,
                "run_id": run_id,
                "reason": "interrupted (Ctrl-C / SIGINT, or SIGTERM)",
                "cycles_written": len(list(exp_dir.glob("cycle-*.json"))),
                "interrupted_unix": time.time(),
            },
        )
    return True


def _record_failure(exp: Experiment, exp_dir: Path, run_id: str, outcome: Outcome) -> None:
    """``failure.json``; a full disk stops the campaign with one line that keeps the worker's reason."""
    reason = outcome.reason or ""
    if reason.startswith("DiskFull: "):
        raise DiskFull(reason.removeprefix("DiskFull: "))
    try:
        _failure(exp, exp_dir, run_id, outcome)
    except DiskFull as exc:
        raise DiskFull(f"{exc}; experiment {exp.id} had failed: {reason}") from None


def _run_locked(
    loaded: LoadedFile,
    run_dir: Path,
    run_id: str,
    in_process: bool,
    resuming: bool,
    quiet: bool,
    as_json: bool,
    out: TextIO,
    pythons: Mapping[str, str] | None,
    report: bool = True,
    ray: RayOptions | None = None,
) -> bool:
    write_json(
        run_dir / "run.json",
        "run",
        {
            "run_id": run_id,
            "source": loaded.source,
            "lem_version": __version__,
            "experiments": [e.id for e in loaded.experiments],
            "updated_unix": time.time(),
            "config_warnings": [p.format() for p in loaded.warnings],
        },
    )
    total = len(loaded.experiments)
    all_ok = True
    if ray is not None:  # one Ray task per experiment; the table and report below are the same
        from lem.campaign.ray_executor import run_on_ray

        all_ok = run_on_ray(loaded, run_dir, run_id, resuming, quiet, pythons or {}, ray)
    for i, exp in enumerate(() if ray is not None else loaded.experiments, 1):
        prefix = f"[{i}/{total}] " if total > 1 else ""
        exp_dir = run_dir / exp.id
        try:
            if not _prepare(exp, run_dir, resuming):
                if not quiet:
                    print(f"{prefix}{exp.id}: finished in an earlier attempt, skipped", file=sys.stderr)
                continue
            if not quiet:
                print(f"{prefix}{exp.id}: {exp.config.backend} {exp.config.model}", file=sys.stderr)
            if in_process:
                outcome = run_here(exp, exp_dir, run_id, quiet, prefix)
            else:
                python = (pythons or {}).get(exp.config.backend)
                outcome = run_in_worker(exp, exp_dir, run_id, quiet, prefix, python=python)
            if not outcome.ok and (outcome.reason or "").startswith("KeyboardInterrupt"):
                raise KeyboardInterrupt  # the worker saw the Ctrl-C first
        except KeyboardInterrupt:
            what = "stopped" if _interrupted(exp, exp_dir, run_id) else "had finished"
            raise Interrupted(
                f"interrupted: experiment {exp.id} of run {run_id} {what}; finished experiments are kept"
                f" (continue with `lem run {loaded.source} --resume {run_id} --out {run_dir.parent}`)"
            ) from None
        if not outcome.ok:
            all_ok = False
            _record_failure(exp, exp_dir, run_id, outcome)
            if not quiet:
                print(f"{prefix}{exp.id}: FAILED: {outcome.reason}", file=sys.stderr)
    rows = [experiment_status(run_dir / e.id) for e in loaded.experiments]
    report_path = _write_report(run_dir, quiet) if report else None
    if as_json:
        docs = []
        for e in loaded.experiments:
            d = run_dir / e.id
            name = "summary.json" if (d / "summary.json").exists() else "failure.json"
            docs.append(read_json(d / name) if (d / name).exists() else {"experiment_id": e.id, "status": "missing"})
        report_text = None if report_path is None else str(report_path)
        doc = {"run_id": run_id, "results": str(run_dir), "report": report_text, "ok": all_ok, "experiments": docs}
        json.dump(doc, out, indent=1)
        out.write("\n")
    else:
        shown = "" if report_path is None else f"report: {report_path}\n"
        out.write(table(rows) + f"\n\n{shown}results: {run_dir}{os.sep}\n")
    out.flush()
    return all_ok
