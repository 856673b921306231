"""Campaigns on a Ray cluster (``lem run --ray``): one Ray task per experiment, results written as a local run does.

Ray schedules; lem does not. Each experiment becomes one Ray task that asks
for the resources the experiment needs and runs the same worker as a local
run (a fresh ``python -m lem.campaign.worker`` subprocess inside the task, so a crash
kills only that experiment). The task measures into a directory of its own
node and returns the experiment's files; the driver writes them atomically
under ``--out`` with exactly the local layout, so ``--resume`` and
``lem results aggregate`` work unchanged. With ``shared_out`` the task writes
straight into the run directory instead (a filesystem every node mounts at
the same path), for large timelines.

The campaign (:mod:`lem.campaign.loop`) prepares each experiment and
records how it ended, as for a local run; :class:`RayExecutor` only turns each
prepared experiment into a task (its job is the same plain JSON a local worker
reads, :mod:`lem.campaign.job`) and yields each as it ends, in the order
they end.

Ray is optional (``pip install 'lem-core[ray]'``) and imported only by
:func:`import_ray`, when a campaign uses it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.campaign.executors import Finished, Task
from lem.campaign.job import Outcome, collect_files, from_json, job_for, to_json, write_files
from lem.campaign.records import clear_partial
from lem.campaign.worker import run_in_worker
from lem.configfile.loading import Experiment
from lem.errors import LemError
from lem.run.environment import add_to_environment

INSTALL_HINT = "Ray is not installed in this environment: pip install 'lem-core[ray]'"


@attrs.frozen
class RayOptions:
    """How a campaign's experiments become Ray tasks (the CLI's ``--ray*`` options; see :data:`TASK_OPTIONS`)."""

    #: Cluster address (``ray start --head`` prints it, ``auto`` finds a local one); ``None``: ``ray.init()``'s own
    #: choice (``RAY_ADDRESS``, else a new local cluster).
    address: str | None = None
    num_cpus: float = 1.0
    #: ``None``: tensor × pipeline parallel size (0 for a CPU experiment).
    num_gpus: float | None = None
    memory_gb: float | None = None
    resources: Mapping[str, float] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    max_retries: int = 1
    #: The task writes into the run directory itself (a shared filesystem) instead of returning the files.
    shared_out: bool = False


#: Our option -> the Ray task option it sets (``ray.remote(...).options(**...)``), in :func:`task_options`.
TASK_OPTIONS = {
    "--ray-cpus": "num_cpus",
    "--ray-gpus": "num_gpus (default: sharding.tensor_parallel_size × pipeline_parallel_size; 0 on the CPU)",
    "--ray-memory (GB)": "memory (bytes)",
    "--ray-resource NAME=AMOUNT": "resources",
    "--ray-label KEY=VALUE": "label_selector",
    "--max-retries": "max_retries, and retry_exceptions=[WorkerDied] (a killed worker is re-run too)",
    "--python BACKEND=PYTHON": "runtime_env = {'py_executable': PYTHON} for that backend's tasks",
}


class WorkerDied(Exception):
    """Raised in a task whose worker process died or hung, so that Ray's ``max_retries`` re-runs it."""

    def __init__(self, reason: str, exit_code: int | None) -> None:
        super().__init__(reason, exit_code)
        self.reason, self.exit_code = reason, exit_code

    def __str__(self) -> str:
        return self.reason


def import_ray() -> Any:
    """``ray``, or a :class:`LemError` saying how to install it."""
    # Ray folds look-alike lines of different tasks into "[repeated Nx across cluster]": progress would lose
    # which experiment a line belongs to. Read when Ray is imported.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        # Imported as an untyped module: lem-core type-checks without Ray installed.
        return importlib.import_module("ray")
    except ImportError:
        raise LemError(f"--ray: {INSTALL_HINT}") from None


def _cpu_only(exp: Experiment) -> bool:
    # The backends that can run on the CPU say so in their own table (pytorch's device / device_map).
    table = exp.config.options_for(exp.config.backend)
    return table.get("device") == "cpu" or table.get("device_map") == "cpu"


def task_options(
    exp: Experiment, opts: RayOptions, pythons: Mapping[str, str], cluster_has_gpus: bool = True
) -> dict[str, Any]:
    """The Ray task options for ``exp``: its resources, pins, retries and runtime environment."""
    sharding = exp.config.sharding
    gpus = opts.num_gpus
    if gpus is None:
        wanted = sharding.tensor_parallel_size * sharding.pipeline_parallel_size
        gpus = 0 if _cpu_only(exp) or not cluster_has_gpus else wanted
    out: dict[str, Any] = {
        "num_cpus": opts.num_cpus,
        "num_gpus": gpus,
        "max_retries": opts.max_retries,
        "retry_exceptions": [WorkerDied],
        "name": f"lem:{exp.id}",
    }
    if opts.memory_gb is not None:
        out["memory"] = int(opts.memory_gb * 2**30)
    if opts.resources:
        out["resources"] = dict(opts.resources)
    if opts.labels:
        out["label_selector"] = dict(opts.labels)
    python = pythons.get(exp.config.backend)
    if python is not None:
        out["runtime_env"] = {"py_executable": python}
    return out


def _node() -> dict[str, Any]:
    ray = import_ray()
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "python": sys.executable,
    }


def run_task(job_json: str, shared_dir: str | None) -> dict[str, Any]:
    """The Ray task of one experiment: run its job in a fresh worker on this node; its files and outcome.

    The files are measured into a temporary directory and returned, or with ``shared_dir`` written into
    the run directory there. A worker that died or hung raises :class:`WorkerDied` (Ray retries it); any
    other failure is returned.
    """
    job = from_json(job_json)
    node = _node()
    if not job.quiet:
        where = f"running on node {node['node_ip']} ({node['node_id'][:12]})"
        print(f"{job.prefix}{job.experiment_id}: {where}", file=sys.stderr)
    tmp = None if shared_dir else tempfile.mkdtemp(prefix="lem-ray-")
    exp_dir = Path(shared_dir or str(tmp)) / job.experiment_id
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
        clear_partial(exp_dir)  # a retry on a shared directory must not keep an earlier attempt's cycles
        # A pinned environment (job.validate): this task's interpreter is it, and its worker validates the backend.
        outcome = run_in_worker(attrs.evolve(job, exp_dir=str(exp_dir)))
        if not outcome.ok and _died(outcome):
            raise WorkerDied(outcome.reason or "worker died", outcome.exit_code)
        # Added here: the worker does not know it ran under Ray.
        add_to_environment(exp_dir, "ray", node)
        files = collect_files(exp_dir) if tmp is not None else {}
        return {"outcome": attrs.asdict(outcome), "node": node, "files": files}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _died(outcome: Outcome) -> bool:
    # Reported by lem.campaign.worker.run_in_worker when no result came back: a signal, os._exit, a native
    # crash or a hang.
    died = ("worker process", "worker hung", "worker did not exit", "the worker did not start", "worker (launched")
    return (outcome.reason or "").startswith(died)


def _outcome_of(ray: Any, ref: Any, opts: RayOptions) -> tuple[Outcome, dict[str, Any] | None, dict[str, str]]:
    """Wait for one task: its outcome, the node it ran on and its files; Ray's own failures become outcomes."""
    attempts = f"{opts.max_retries + 1} attempt{'s' if opts.max_retries else ''}"
    try:
        done = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, WorkerDied):
            return Outcome(False, f"{cause.reason} ({attempts})", exit_code=cause.exit_code), None, {}
        return Outcome(False, f"{type(cause).__name__}: {cause}", str(exc)), None, {}
    except (
        ray.exceptions.RayError
    ) as exc:  # the node died, the task's worker process was killed, the task could not be placed
        first = (str(exc).strip().splitlines() or [""])[0]
        return Outcome(False, f"Ray {type(exc).__name__} ({attempts}): {first}", str(exc)), None, {}
    return Outcome(**done["outcome"]), done["node"], done["files"]


@attrs.frozen
class RayExecutor:
    """Each experiment as one Ray task (:func:`run_task`), as many at once as the cluster places."""

    run_id: str
    quiet: bool
    pythons: Mapping[str, str]
    opts: RayOptions
    run_dir: Path
    #: Engine logs in each task's output too, not only in each experiment's engine.log (``lem run -v``).
    verbose: bool = False

    @property
    def resume_flags(self) -> str:
        """``--ray ADDRESS`` again, for the ``--resume`` line."""
        return f" --ray {self.opts.address or ''}"

    def run(self, tasks: Iterator[Task]) -> Generator[Finished, None, None]:
        """Queue every task on Ray, then yield each as it ends.

        Ctrl-C (or closing this generator) cancels the outstanding tasks: each one's worker then stops the
        way Ctrl-C stops it.
        """
        ray = import_ray()
        started = _connect(ray, self.opts.address)
        pending: dict[Any, Task] = {}
        try:
            node_gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
            largest = max(node_gpus, default=0.0)
            remote = ray.remote(run_task)
            shared = str(self.run_dir.resolve()) if self.opts.shared_out else None
            for task in tasks:
                exp = task.experiment
                options = task_options(exp, self.opts, self.pythons, largest > 0)
                if options["num_gpus"] > largest > 0:
                    # Ray would keep an infeasible task pending for ever: fail it now and go on.
                    why = f"needs {options['num_gpus']:g} GPUs on one node; the largest node has {largest:g}"
                    yield Finished(task, Outcome(False, why))
                    continue
                validate = exp.config.backend in self.pythons
                job = job_for(exp, task.exp_dir, self.run_id, self.quiet, task.prefix, validate, verbose=self.verbose)
                pending[remote.options(**options).remote(to_json(job), shared)] = task
                if not self.quiet:
                    print(
                        f"{task.prefix}{exp.id}: {exp.config.backend} {exp.config.model}: queued on Ray"
                        f" ({options['num_cpus']:g} CPU, {options['num_gpus']:g} GPU)",
                        file=sys.stderr,
                    )
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    yield self._finish(ray, ref, pending.pop(ref))
        except (KeyboardInterrupt, GeneratorExit):
            _cancel(ray, list(pending))
            raise
        finally:
            if started:
                ray.shutdown()

    def _finish(self, ray: Any, ref: Any, task: Task) -> Finished:
        """Write one ended task's files under the run directory as a local run would; how it ended, and where."""
        outcome, node, files = _outcome_of(ray, ref, self.opts)
        write_files(task.exp_dir, files)
        where = f" on node {node['node_ip']} ({node['node_id'][:12]})" if node else ""
        if outcome.ok and not self.quiet:
            print(f"{task.prefix}{task.experiment.id}: done{where}", file=sys.stderr)
        return Finished(task, outcome, where)

    def stopped(self, interrupted: Sequence[tuple[Experiment, bool]], run_id: str) -> str:
        """``Ray tasks cancelled (experiments a, b) of run R``."""
        return f"Ray tasks cancelled (experiments {', '.join(e.id for e, _ in interrupted) or 'none'}) of run {run_id}"


#: Seconds the driver waits, after Ctrl-C, for cancelled tasks to stop their workers.
CANCEL_WAIT_S = 30.0


def _cancel(ray: Any, refs: list[Any]) -> None:
    # force=True ends the task's Ray worker process: its lem worker sees its stdin close and stops the way Ctrl-C
    # stops it (closing its engine). force=False, documented to raise KeyboardInterrupt in the task, left a task
    # blocked in run_in_worker running to its end (Ray 2.60). A task still queued is simply dropped.
    for ref in refs:
        ray.cancel(ref, force=True)
    deadline = time.monotonic() + CANCEL_WAIT_S
    left = refs
    while left and time.monotonic() < deadline:
        try:
            _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, Ray kills the tasks when the driver exits
            return


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to the cluster; ``True`` if this call did (the campaign then disconnects at its end)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, configure_logging=True, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LemError(
            f"--ray {address or ''}: cannot connect to a Ray cluster ({exc}); start one with `ray start --head`"
            " and pass the address it prints"
        ) from None
    return True
