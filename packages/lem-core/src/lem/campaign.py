"""The campaign: every experiment of a file, each in its own worker, resumable, with a table at the end."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from lem import __version__
from lem.errors import ResultsError
from lem.loading import Experiment, LoadedFile, dumps
from lem.results import (
    CYCLE_RE,
    experiment_status,
    read_json,
    remove_stale_temporaries,
    write_atomic,
    write_json,
)
from lem.worker import Outcome, run_here, run_in_worker


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus a few random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _clear_partial(exp_dir: Path) -> None:
    # A restarted experiment must not mix cycles from an earlier attempt with new ones.
    for p in exp_dir.iterdir():
        if (
            CYCLE_RE.match(p.name)
            or p.name.startswith("timeline-")
            or p.name in ("failure.json", "setup.json", "summary.json", "environment.json")
        ):
            p.unlink()
    remove_stale_temporaries(exp_dir)


def _prepare(exp: Experiment, run_dir: Path, resuming: bool) -> bool:
    """Write the experiment's config; ``False`` if a resumed run already finished it."""
    exp_dir = run_dir / exp.id
    toml = dumps(exp.config)
    stored = exp_dir / "experiment.toml"
    if resuming and stored.exists():
        if stored.read_text(encoding="utf-8") != toml:
            raise ResultsError(
                f"{stored}: experiment {exp.id} of run {run_dir.name} was run with a different config; "
                "start a new run instead of --resume"
            )
        if (exp_dir / "summary.json").exists():
            return False
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


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The end-of-run table: one line per experiment with its key figures (cycle means)."""
    head = ("experiment", "status", "backend", "model", "out tok/s", "TTFT p50 ms", "J/out tok")
    body = [
        (
            r["id"],
            r["status"],
            str(r.get("backend")),
            str(r.get("model")),
            _fmt(r.get("output_tokens_per_s"), ".1f"),
            _fmt(None if r.get("ttft_s.p50") is None else r["ttft_s.p50"] * 1e3, ".1f"),
            _fmt(r.get("energy.j_per_output_token"), ".4g"),
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    for r in rows:
        if r.get("reason"):
            lines.append(f"{r['id']}: {r['reason']}")
    reasons = sorted({r["energy_reason"] for r in rows if r.get("energy_reason")})
    lines += [f"energy not measured: {reason}" for reason in reasons]
    return "\n".join(lines)


def run_campaign(
    loaded: LoadedFile,
    out_dir: str | Path = "results",
    in_process: bool = False,
    resume_id: str | None = None,
    quiet: bool = False,
    as_json: bool = False,
    stdout: TextIO | None = None,
    pythons: Mapping[str, str] | None = None,
) -> bool:
    """Run every experiment of ``loaded`` under ``out_dir/<run-id>/``; ``True`` if all succeeded.

    Each experiment runs in a fresh worker process unless ``in_process``. A
    failed experiment gets a ``failure.json`` and the rest still run. With
    ``resume_id``, experiments whose ``summary.json`` exists are skipped.
    ``pythons`` maps a backend to the interpreter of the environment it is
    installed in (vLLM and TensorRT-LLM never share one); its workers validate
    their experiment there before running it.
    """
    out = stdout if stdout is not None else sys.stdout
    root = Path(out_dir)
    run_id = resume_id or new_run_id()
    run_dir = root / run_id
    if resume_id is not None and not run_dir.is_dir():
        raise ResultsError(f"--resume {resume_id}: no run directory {run_dir} (see `lem results list {root}`)")
    run_dir.mkdir(parents=True, exist_ok=True)
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
    for i, exp in enumerate(loaded.experiments, 1):
        prefix = f"[{i}/{total}] " if total > 1 else ""
        if not _prepare(exp, run_dir, resume_id is not None):
            if not quiet:
                print(f"{prefix}{exp.id}: finished in an earlier attempt, skipped", file=sys.stderr)
            continue
        if not quiet:
            print(f"{prefix}{exp.id}: {exp.config.backend} {exp.config.model}", file=sys.stderr)
        exp_dir = run_dir / exp.id
        if in_process:
            outcome = run_here(exp, exp_dir, run_id, quiet, prefix)
        else:
            python = (pythons or {}).get(exp.config.backend)
            outcome = run_in_worker(exp, exp_dir, run_id, quiet, prefix, python=python)
        if not outcome.ok:
            all_ok = False
            _failure(exp, exp_dir, run_id, outcome)
            if not quiet:
                print(f"{prefix}{exp.id}: FAILED: {outcome.reason}", file=sys.stderr)
    rows = [experiment_status(run_dir / e.id) for e in loaded.experiments]
    if as_json:
        docs = []
        for e in loaded.experiments:
            d = run_dir / e.id
            name = "summary.json" if (d / "summary.json").exists() else "failure.json"
            docs.append(read_json(d / name) if (d / name).exists() else {"experiment_id": e.id, "status": "missing"})
        json.dump({"run_id": run_id, "results": str(run_dir), "ok": all_ok, "experiments": docs}, out, indent=1)
        out.write("\n")
    else:
        out.write(table(rows) + f"\n\nresults: {run_dir}{os.sep}\n")
    out.flush()
    return all_ok
