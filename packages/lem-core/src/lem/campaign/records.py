"""What the campaign writes in a run directory around its experiments.

``run.json`` first; each experiment's ``experiment.toml`` before it runs (and,
on ``--resume``, the check that it is the config the run started with);
``failure.json`` or ``interrupted.json`` when it does not finish; and the
clearing of an earlier attempt's partial files, so a restarted experiment
never mixes cycles from two attempts. Whatever runs the experiment (a local
worker, a Ray task) uses these, so every run directory has one layout.
"""

from __future__ import annotations

import time
from pathlib import Path

from lem import __version__
from lem.campaign.job import Outcome
from lem.config import ExperimentConfig
from lem.configfile.documents import TOMLDecodeError
from lem.configfile.loading import Experiment, LoadedFile, dumps, loads, unstructure
from lem.errors import DiskFull, ResultsError
from lem.results.files import CYCLE_RE, flat_config, remove_stale_temporaries, write_atomic, write_json


def write_run(run_dir: Path, run_id: str, loaded: LoadedFile) -> None:
    """``run.json``: what the run is (its source, lem version, experiments, config warnings)."""
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


def clear_partial(exp_dir: Path) -> None:
    """Remove an earlier attempt's results from ``exp_dir`` (its ``experiment.toml`` stays)."""
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
    try:
        before, problems = loads(text)
    except (TOMLDecodeError, ValueError, TypeError) as exc:
        return f"the stored file does not parse: {exc}"
    if before is None:
        return "the stored config is not valid now: " + "; ".join(str(p) for p in problems[:2])
    old, new = flat_config(unstructure(before)), flat_config(unstructure(config))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return None
    shown = ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in changed[:3])
    return shown + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")


def prepare(exp: Experiment, run_dir: Path, resuming: bool) -> bool:
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
    clear_partial(exp_dir)
    write_atomic(stored, toml)
    return True


def record_failure(exp: Experiment, exp_dir: Path, run_id: str, outcome: Outcome) -> None:
    """``failure.json``; a full disk stops the campaign with one line that keeps the worker's reason."""
    reason = outcome.reason or ""
    if reason.startswith("DiskFull: "):
        raise DiskFull(reason.removeprefix("DiskFull: "))
    try:
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
    except DiskFull as exc:
        raise DiskFull(f"{exc}; experiment {exp.id} had failed: {reason}") from None


def record_interruption(exp: Experiment, exp_dir: Path, run_id: str) -> bool:
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
