"""Where a campaign's experiments run: the executor interface, a local worker process each, or this process.

The campaign (:mod:`lem.campaign.loop`) owns the loop over experiments: it
prepares each one's directory, skips those a resumed run finished, and
records failures and interruptions. An executor only runs what it is handed:
:meth:`Executor.run` pulls each prepared :class:`Task` when it can start it
and yields a :class:`Finished` as each one ends, so one executor may run
experiments one after another (:class:`LocalExecutor`,
:class:`InProcessExecutor`) and another many at once
(:class:`lem.campaign.ray_executor.RayExecutor`).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from lem.campaign.job import Outcome, job_for
from lem.campaign.launcher import START_TIMEOUT_S, Launcher
from lem.campaign.worker import failure_reason, run_in_worker
from lem.configfile.loading import Experiment
from lem.run.enginelog import engine_log
from lem.run.progress import Progress
from lem.run.runner import run_experiment


@attrs.frozen
class Task:
    """One prepared experiment: its directory holds the ``experiment.toml`` it runs with."""

    experiment: Experiment
    exp_dir: Path
    #: Put before each line about it (``"[2/5] "``).
    prefix: str


@attrs.frozen
class Finished:
    """A task that ended, how, and where it ran (``" on node ..."``, or empty for this machine)."""

    task: Task
    outcome: Outcome
    where: str = ""


class Executor(Protocol):
    """Runs a campaign's tasks; the campaign records what they leave."""

    @property
    def resume_flags(self) -> str:
        """Options the ``--resume`` line repeats so that a resumed run runs the same way (``" --ray ADDRESS"``)."""
        ...

    def run(self, tasks: Iterator[Task]) -> Generator[Finished, None, None]:
        """Pull each task when it can start and yield each as it ends.

        Ctrl-C, or closing the generator, stops what still runs; Ctrl-C then propagates.
        """
        ...

    def stopped(self, interrupted: Sequence[tuple[Experiment, bool]], run_id: str) -> str:
        """What a Ctrl-C stopped: ``interrupted`` holds each experiment in flight and whether it was still running."""
        ...


def _one_at_a_time(interrupted: Sequence[tuple[Experiment, bool]], run_id: str) -> str:
    if not interrupted:
        return f"run {run_id} stopped between experiments"
    exp, running = interrupted[0]
    return f"experiment {exp.id} of run {run_id} {'stopped' if running else 'had finished'}"


def _announce(task: Task, quiet: bool) -> None:
    if not quiet:
        exp = task.experiment
        print(f"{task.prefix}{exp.id}: {exp.config.backend} {exp.config.model}", file=sys.stderr)


@attrs.frozen
class LocalExecutor:
    """Each experiment in a fresh worker process on this machine (``python -m lem.campaign.worker``), in turn.

    ``launchers`` maps a backend to the command its worker runs under
    (:mod:`lem.campaign.launcher`: another environment's interpreter, a
    container runtime, ``srun``); such a worker validates its experiment
    there first, measures into a directory of its own and sends the files
    back, which are written here. It has ``start_timeout_s`` to start.
    """

    run_id: str
    quiet: bool = False
    launchers: Mapping[str, Launcher] = attrs.field(factory=dict)
    start_timeout_s: float = START_TIMEOUT_S
    #: Engine logs on the terminal too, not only in each experiment's engine.log (``lem run -v``).
    verbose: bool = False

    @property
    def resume_flags(self) -> str:
        """The ``--launch`` options (``--python`` included) again, for the ``--resume`` line."""
        given = [launcher for launcher in self.launchers.values() if launcher.given_by != "[campaign.launch]"]
        return "".join(launcher.flag() for launcher in given)

    def run(self, tasks: Iterator[Task]) -> Generator[Finished, None, None]:
        """Run each task in its own worker, one after another."""
        for task in tasks:
            _announce(task, self.quiet)
            launcher = self.launchers.get(task.experiment.config.backend)
            # Launched, the backend's own checks run where it is installed, before anything else; and the
            # worker shares no path with us: it gets no directory, and sends its files back.
            job = job_for(
                task.experiment,
                task.exp_dir,
                self.run_id,
                self.quiet,
                task.prefix,
                launcher is not None,
                verbose=self.verbose,
            )
            if launcher is not None:
                job = attrs.evolve(job, exp_dir="")
            outcome = run_in_worker(job, launcher, deliver_to=task.exp_dir, start_timeout_s=self.start_timeout_s)
            if not outcome.ok and (outcome.reason or "").startswith("KeyboardInterrupt"):
                raise KeyboardInterrupt  # the worker saw the Ctrl-C first
            yield Finished(task, outcome)

    def stopped(self, interrupted: Sequence[tuple[Experiment, bool]], run_id: str) -> str:
        """``experiment X of run R stopped``."""
        return _one_at_a_time(interrupted, run_id)


@attrs.frozen
class InProcessExecutor:
    """Each experiment in this process (``--in-process``: debugging, tests); an exception fails only it."""

    run_id: str
    quiet: bool = False
    resume_flags: str = ""
    #: Engine logs on the terminal too, not only in each experiment's engine.log (``lem run -v``).
    verbose: bool = False

    def run(self, tasks: Iterator[Task]) -> Generator[Finished, None, None]:
        """Run each task here, one after another."""
        for task in tasks:
            _announce(task, self.quiet)
            outcome = run_here(
                task.experiment, task.exp_dir, self.run_id, self.quiet, task.prefix, verbose=self.verbose
            )
            yield Finished(task, outcome)

    def stopped(self, interrupted: Sequence[tuple[Experiment, bool]], run_id: str) -> str:
        """``experiment X of run R stopped``."""
        return _one_at_a_time(interrupted, run_id)


def run_here(
    exp: Experiment, exp_dir: Path, run_id: str, quiet: bool = False, prefix: str = "", *, verbose: bool = False
) -> Outcome:
    """Run one experiment in this process; exceptions (not Ctrl-C) become a failed outcome.

    The engine's output goes to the experiment's ``engine.log`` (:mod:`lem.run.enginelog`), and with
    ``verbose`` to the terminal as well.
    """
    try:
        # The engine's output (C's included) goes to engine.log; the progress to what stderr was.
        with engine_log(exp_dir, tee=verbose) as terminal:
            progress = Progress(prefix, quiet=quiet, stream=terminal)
            try:
                run_experiment(exp, exp_dir, run_id, progress)
            finally:
                progress.close()  # a stage ended by an exception must not leave its live line running
    except Exception as exc:
        return Outcome(False, failure_reason(exc), traceback.format_exc())
    return Outcome(True)
