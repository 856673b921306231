"""What the campaign writes in a run directory around its experiments.

``run.json`` first (on ``--resume``, the check that the file expands to the
experiments the run recorded, :func:`check_resume`); each experiment's ``experiment.toml`` before it runs (and,
on ``--resume``, the check that it is the config the run started with);
``failure.json`` or ``interrupted.json`` when it does not finish; and the
clearing of an earlier attempt's partial files, so a restarted experiment
never mixes cycles from two attempts. Whatever runs the experiment (a local
worker, a Ray task) uses these, so every run directory has one layout.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lem import __version__
from lem.campaign.job import Outcome
from lem.config import ExperimentConfig
from lem.configfile.documents import TOMLDecodeError
from lem.configfile.loading import Experiment, LoadedFile, dumps, loads, unstructure
from lem.errors import DiskFull, ResultsError
from lem.results.files import (
    CYCLE_RE,
    flat_config,
    read_json,
    remove_stale_temporaries,
    write_atomic,
    write_json,
)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_digest(source: str) -> str | None:
    """The SHA-256 of the experiment file's bytes (``None`` where it cannot be read now)."""
    try:
        return _digest(Path(source).read_bytes())
    except OSError:
        return None


def config_digests(loaded: LoadedFile) -> dict[str, str]:
    """Experiment id -> the SHA-256 of its resolved config as ``experiment.toml`` holds it."""
    return {e.id: _digest(dumps(e.config).encode()) for e in loaded.experiments}


def write_run(run_dir: Path, run_id: str, loaded: LoadedFile, before: Mapping[str, Any] | None = None) -> None:
    """``run.json``: what the run is (its source and digest, lem version, experiments and the digests of their
    configs, config warnings). On a resume, ``before`` (the run.json read then) keeps every experiment it had."""
    configs = {**dict((before or {}).get("experiment_configs") or {}), **config_digests(loaded)}
    ids = [str(i) for i in (before or {}).get("experiments") or ()]
    ids += [e.id for e in loaded.experiments if e.id not in ids]
    write_json(
        run_dir / "run.json",
        "run",
        {
            "run_id": run_id,
            "source": loaded.source,
            "source_sha256": source_digest(loaded.source),
            "lem_version": __version__,
            "experiments": ids,
            "experiment_configs": {i: configs[i] for i in ids if i in configs},
            "updated_unix": time.time(),
            "config_warnings": [p.format() for p in loaded.warnings],
        },
    )


def _listed(ids: Sequence[str], limit: int = 3) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_resume(before: Mapping[str, Any], loaded: LoadedFile, run_dir: Path, add: bool) -> None:
    """Refuse to resume the run in ``run_dir`` (its run.json ``before``) with another study: one line saying how.

    The expanded experiment set must be the recorded one: the same ids with the same resolved configs.
    ``add`` (``--resume-add``) lets new experiments extend the run; none may be dropped or changed either way.
    """
    flag = "--resume-add" if add else "--resume"
    run_id = run_dir.name
    recorded = before.get("experiments")
    if not isinstance(recorded, list) or not all(isinstance(i, str) and i for i in recorded):
        raise ResultsError(
            f"{flag} {run_id}: {run_dir / 'run.json'}: 'experiments' is not a list of experiment ids (a damaged"
            " file); resuming cannot tell which experiments the run holds: start a new run"
        )
    if not isinstance(before.get("experiment_configs", {}), Mapping):
        raise ResultsError(
            f"{flag} {run_id}: {run_dir / 'run.json'}: 'experiment_configs' is not a table (a damaged file);"
            " start a new run"
        )
    old_ids = list(recorded)
    old_configs = before.get("experiment_configs")
    new_configs = config_digests(loaded)
    src = before.get("source")
    same_source = before.get("source_sha256") in (None, source_digest(loaded.source))
    where = "" if same_source else f" (the run started from {src}, whose content differs)"
    dropped = [i for i in old_ids if i not in new_configs]
    if dropped:
        raise ResultsError(
            f"{flag} {run_id}: {loaded.source} does not expand to experiment(s) {_listed(dropped)} of the run{where};"
            " resume with the file the run started from, or start a new run"
        )
    if isinstance(old_configs, Mapping):
        changed = [i for i in old_ids if i in old_configs and old_configs[i] != new_configs[i]]
        exp = next((e for e in loaded.experiments if e.id in changed), None)
        stored = run_dir / exp.id / "experiment.toml" if exp is not None else None
        try:
            differs = _config_difference(stored.read_text(encoding="utf-8"), exp.config) if stored and exp else None
        except (OSError, UnicodeDecodeError):
            differs = None
        if exp is not None and stored is not None and differs is not None:  # name the keys that differ
            raise ResultsError(
                f"{stored}: experiment {exp.id} of run {run_id} was run with a different config ({differs}){where};"
                f" start a new run instead of {flag}"
            )
        if changed:
            raise ResultsError(
                f"{flag} {run_id}: experiment(s) {_listed(changed)} of {loaded.source} have other configs than the"
                f" run recorded{where} (an edited sweep); resume with the file the run started from, or"
                " start a new run"
            )
    added = [i for i in new_configs if i not in old_ids]
    if added and not add:
        raise ResultsError(
            f"--resume {run_id}: {loaded.source} has experiment(s) the run does not ({_listed(added)}){where};"
            f" pass --resume-add {run_id} to extend the run with them, or start a new run"
        )


def finished(exp_dir: Path) -> bool:
    """Whether the experiment in ``exp_dir`` ran to the end and is kept on a resume (its requests did not all fail)."""
    if not (exp_dir / "summary.json").exists():
        return False
    try:
        return read_json(exp_dir / "summary.json").get("status") != "failed"
    except ResultsError:
        return True  # a damaged summary is kept for the reader to name, never silently re-run over


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
        if finished(exp_dir):
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
                "launcher": outcome.launcher,
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
