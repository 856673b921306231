"""The campaign: every experiment of a file, each run by an executor, resumable, with a table at the end.

The loop over experiments is here and nowhere else: prepare each one's
directory (:mod:`lem.campaign.records`), skip those a resumed run finished,
hand the rest to an executor (:mod:`lem.campaign.executors`: a local worker
process each, this process, or :mod:`lem.campaign.ray_executor`'s Ray tasks),
record each failure and a Ctrl-C, then write the report and print the table.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import attrs

from lem.campaign.ending import json_document, status_table, write_run_report
from lem.campaign.executors import Executor, InProcessExecutor, LocalExecutor, Task
from lem.campaign.launcher import START_TIMEOUT_S, Launcher
from lem.campaign.ray_executor import RayExecutor, RayOptions
from lem.campaign.records import check_resume, prepare, record_failure, record_interruption, write_run
from lem.configfile.loading import Experiment, LoadedFile
from lem.errors import Interrupted, ResultsError
from lem.results.files import experiment_status, read_json
from lem.results.rundir import check_resume_id, lock_run
from lem.run.hub import check_hub_models
from lem.run.meters import check_meters


def _pythons(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(value or {})


def _launchers(value: Mapping[str, Launcher] | None) -> Mapping[str, Launcher]:
    return dict(value or {})


@attrs.frozen
class CampaignOptions:
    """How a campaign runs and reports (the ``lem run`` options other than the config's)."""

    out_dir: Path = attrs.field(default=Path("results"), converter=Path)
    #: Continue this run (a directory under ``out_dir``), skipping its finished experiments.
    resume_id: str | None = None
    #: With ``resume_id``: the file may add experiments to the run (``--resume-add``); none may change.
    resume_add: bool = False
    #: Each experiment in this process instead of a fresh worker (debugging, tests).
    in_process: bool = False
    quiet: bool = False
    #: The engines' output (loaders, quantizers, start-up logs) on stderr too, not only in each
    #: experiment's ``engine.log`` (``lem run -v``).
    verbose: bool = False
    #: Print the summaries as JSON on stdout instead of the table.
    as_json: bool = False
    #: Write ``report.html`` in the run directory at the end.
    report: bool = True
    #: Backend -> the interpreter of the environment it is installed in (vLLM and TensorRT-LLM never share one).
    pythons: Mapping[str, str] = attrs.field(factory=dict, converter=_pythons)
    #: Each experiment as a task on this Ray cluster instead.
    ray: RayOptions | None = None
    #: Backend -> the command its worker runs under (``--launch``, ``[campaign.launch]``); ``pythons`` are ones too.
    launchers: Mapping[str, Launcher] = attrs.field(factory=dict, converter=_launchers)
    #: Seconds a launched worker has to start (``[campaign] start_timeout_s``, ``--start-timeout``).
    start_timeout_s: float = START_TIMEOUT_S


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


def run_campaign(loaded: LoadedFile, options: CampaignOptions | None = None, *, stdout: TextIO | None = None) -> bool:
    """Run every experiment of ``loaded`` under ``out_dir/<run-id>/``; ``True`` if all succeeded.

    An experiment succeeded when it ran to the end and its summary's status is ``ok``: one whose
    requests all failed (``failed``) or failed above ``measurement.max_failed_share`` (``degraded``)
    did not, and its line on stderr gives the share and the first causes.

    ``options`` (default: :class:`CampaignOptions`' defaults) say where and
    how. Each experiment runs in a fresh worker process unless ``in_process``. A failed experiment gets a
    ``failure.json`` and the rest still run. With ``resume_id``, experiments
    whose ``summary.json`` exists are skipped. A backend in ``pythons`` runs
    in that interpreter, where its worker validates the experiment before
    running it. With ``report``, ``report.html`` is written in the run
    directory at the end (a failure to write it is a warning, never a failed
    run). With ``ray``, each experiment is a task on that Ray cluster
    (:mod:`lem.campaign.ray_executor`); its meters are checked on its node.
    The table (or with ``as_json`` the JSON document) goes to ``stdout``.
    """
    options = options if options is not None else CampaignOptions()
    out = stdout if stdout is not None else sys.stdout
    root = options.out_dir
    if options.ray is None:  # a Ray task or a launched backend's worker checks its meters where it runs
        check_meters(loaded.experiments, {*options.pythons, *options.launchers})
        # A launched worker (a container) has its own Hugging Face cache: only local workers' models are probed.
        check_hub_models([e for e in loaded.experiments if e.config.backend not in options.launchers])
    if options.resume_id is not None:
        run_dir = check_resume_id(options.resume_id, root)
        run_id = options.resume_id
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
        before = read_json(run_dir / "run.json") if options.resume_id is not None else None
        if before is not None:
            check_resume(before, loaded, run_dir, options.resume_add)
        write_run(run_dir, run_id, loaded, before)
        all_ok = _run_all(loaded, options, run_dir, run_id, _executor(options, run_id, run_dir))
        ids = [e.id for e in loaded.experiments]
        report = write_run_report(run_dir, options.quiet) if options.report else None
        if options.as_json:
            json.dump(json_document(run_dir, run_id, ids, report, all_ok), out, indent=1)
            out.write("\n")
        else:
            shown = "" if report is None else f"report: {report}\n"
            out.write(status_table(run_dir, ids) + f"\n\n{shown}results: {run_dir}{os.sep}\n")
        out.flush()
        return all_ok
    finally:
        lock.release()


def _executor(options: CampaignOptions, run_id: str, run_dir: Path) -> Executor:
    if options.ray is not None:
        return RayExecutor(run_id, options.quiet, options.pythons, options.ray, run_dir, options.verbose)
    if options.in_process:
        return InProcessExecutor(run_id, options.quiet, verbose=options.verbose)
    launchers = {b: Launcher(b, (python,), "--python") for b, python in options.pythons.items()}
    every = {**launchers, **options.launchers}
    return LocalExecutor(run_id, options.quiet, every, options.start_timeout_s, options.verbose)


def _run_all(loaded: LoadedFile, options: CampaignOptions, run_dir: Path, run_id: str, executor: Executor) -> bool:
    """Prepare each experiment, let ``executor`` run those left to run, record how each ended."""
    total = len(loaded.experiments)
    # Experiments handed out and not ended: those a Ctrl-C interrupts. One is in it from its preparation on.
    in_flight: dict[str, Experiment] = {}
    # Experiments a resume kept from an earlier attempt that are not ok (degraded, or a damaged summary):
    # the run is not all ok, whichever attempt measured them.
    kept_not_ok: list[str] = []

    def tasks() -> Iterator[Task]:
        for i, exp in enumerate(loaded.experiments, 1):
            prefix = f"[{i}/{total}] " if total > 1 else ""
            in_flight[exp.id] = exp
            if not prepare(exp, run_dir, options.resume_id is not None):
                del in_flight[exp.id]
                kept = experiment_status(run_dir / exp.id)
                if kept["status"] != "ok":
                    kept_not_ok.append(exp.id)
                    print(
                        f"{prefix}{exp.id}: {kept['status'].upper()} in an earlier attempt, kept: {kept.get('reason')}",
                        file=sys.stderr,
                    )
                elif not options.quiet:
                    print(f"{prefix}{exp.id}: finished in an earlier attempt, skipped", file=sys.stderr)
                continue
            yield Task(exp, run_dir / exp.id, prefix)

    all_ok = True
    runs = executor.run(tasks())
    try:
        for done in runs:
            exp = done.task.experiment
            in_flight.pop(exp.id, None)
            if not done.outcome.ok:
                all_ok = False
                record_failure(exp, done.task.exp_dir, run_id, done.outcome)
                if not options.quiet:
                    print(f"{done.task.prefix}{exp.id}: FAILED{done.where}: {done.outcome.reason}", file=sys.stderr)
                continue
            # It ran to the end; whether its requests did is in its summary (lem.figures.outcome).
            row = experiment_status(done.task.exp_dir)
            if row["status"] in ("failed", "degraded"):
                all_ok = False
                if not options.quiet:
                    print(f"{done.task.prefix}{exp.id}: {row['status'].upper()}: {row.get('reason')}", file=sys.stderr)
    except KeyboardInterrupt:
        runs.close()  # what still runs stops (Ray cancels its tasks) before the interruptions are recorded
        stopped = [(e, record_interruption(e, run_dir / e.id, run_id)) for e in in_flight.values()]
        again = f"lem run {loaded.source} --resume {run_id} --out {run_dir.parent}{executor.resume_flags}"
        raise Interrupted(
            f"interrupted: {executor.stopped(stopped, run_id)}; finished experiments are kept (continue with `{again}`)"
        ) from None
    return all_ok and not kept_not_ok
