"""A worker's job as plain JSON (the experiment, where its files go, the plugins to register), and its outcome.

The job is read by a worker that may run another environment's interpreter
(``--python``) or on another Ray node, so it is JSON, never a pickle: the
experiment's config travels as the TOML text the campaign writes to its
``experiment.toml``, read back with the same strict loader. The worker needs
no file from the campaign to start, so the job can later go to a machine that
shares no filesystem with it.

Plugins registered at run time (not through an entry point) travel by
reference: a module by its name, another object as ``module:qualname`` of a
module-level name that is that very object; the worker imports it afresh.
What cannot travel (and stays in the campaign's process, as before): an object
not reachable under a module-level name (one made inside a function, a
closure, a lambda), anything defined in ``__main__`` (the worker's
``__main__`` is the worker), and the state an object gained after its module
was imported.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from lem import plugins
from lem.configfile.loading import Experiment, dumps, loads
from lem.errors import LemError
from lem.results.files import write_atomic


@attrs.frozen
class Job:
    """One experiment for a worker: what to run, where its files go, how it reports, which plugins it needs."""

    experiment_id: str
    #: The experiment's config, exactly as its ``experiment.toml`` holds it.
    config_toml: str
    sweep_values: Mapping[str, Any]
    exp_dir: str
    run_id: str
    quiet: bool = False
    #: Put before each progress line (``"[2/5] "``).
    prefix: str = ""
    #: Run every plugin's ``validate_config`` in the worker first (another environment's interpreter).
    validate: bool = False
    #: ``(name, reference)`` of each plugin registered at run time: see :func:`carried_plugins`.
    plugins: tuple[tuple[str, str], ...] = ()
    #: The engine's output on stderr too, not only in the experiment's ``engine.log`` (``lem run -v``).
    verbose: bool = False

    @property
    def returns_files(self) -> bool:
        """The worker measures into a directory of its own and sends the files back (no ``exp_dir``: a launcher)."""
        return not self.exp_dir


@attrs.frozen
class Outcome:
    """How an experiment ended: ``ok``, or the reason it failed and details (traceback, exit status, and
    the launcher the worker ran under, which ``failure.json`` keeps when no ``environment.json`` was written)."""

    ok: bool
    reason: str | None = None
    detail: str | None = None
    exit_code: int | None = None
    launcher: dict[str, Any] | None = None


_converter = cattrs.Converter(forbid_extra_keys=True)


def job_for(
    exp: Experiment,
    exp_dir: Path,
    run_id: str,
    quiet: bool = False,
    prefix: str = "",
    validate: bool = False,
    *,
    verbose: bool = False,
) -> Job:
    """The job of ``exp``, carrying the plugins registered in this process now."""
    # A sweep value is a TOML value; a date (the one kind JSON lacks) travels as its text.
    values = json.loads(json.dumps(dict(exp.sweep_values), default=str))
    plugins = carried_plugins()
    return Job(exp.id, dumps(exp.config), values, str(exp_dir), run_id, quiet, prefix, validate, plugins, verbose)


def collect_files(exp_dir: Path) -> dict[str, str]:
    """An experiment's result files as ``{name: text}``: what a worker away from ``--out`` sends back.

    The campaign writes ``experiment.toml`` itself; temporaries (dot files) are never results. ``engine.log``
    holds what an engine printed, not always UTF-8: bytes that are not are replaced.
    """
    return {
        p.name: p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(exp_dir.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != "experiment.toml"
    }


def write_files(exp_dir: Path, files: Mapping[str, str]) -> None:
    """Write files :func:`collect_files` gathered under ``exp_dir``, each atomically, ``summary.json`` last.

    ``summary.json``'s presence is what marks the experiment finished for ``--resume``; a name that is
    not a plain file name is refused (the files come from another process, maybe another machine).
    """
    for name in sorted(files, key=lambda n: n == "summary.json"):
        if Path(name).name != name or name in ("", ".", "..") or name == "experiment.toml":
            raise LemError(f"worker sent a result file named {name!r}: not a file lem writes; not written")
        write_atomic(exp_dir / name, files[name])


def to_json(job: Job) -> str:
    """The job as one line of JSON."""
    return json.dumps(_converter.unstructure(job))


def from_json(text: str | bytes) -> Job:
    """The job written by :func:`to_json`; a :class:`LemError` if it is not one."""
    try:
        return _converter.structure(json.loads(text), Job)
    except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
        raise LemError(f"worker job: not a job lem wrote ({exc}); run the same lem version on both sides") from None


def experiment_of(job: Job) -> Experiment:
    """The job's experiment, its config read from the TOML text as ``--resume`` reads ``experiment.toml``."""
    config, problems = loads(job.config_toml)
    if config is None:
        said = "; ".join(p.format() for p in problems[:2])
        raise LemError(f"worker job: experiment {job.experiment_id}: its config does not load here: {said}")
    return Experiment(job.experiment_id, config, dict(job.sweep_values))


def _reference(plugin: Any) -> str | None:
    """``plugin``'s importable name (``module`` or ``module:qualname``), or ``None`` if it has none."""
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    module = getattr(plugin, "__module__", None) or type(plugin).__module__
    if module == "__main__" or module not in sys.modules:
        return None
    qualname = getattr(plugin, "__qualname__", None)  # a class or a function names itself
    names = [qualname] if isinstance(qualname, str) else []
    # An instance: the module-level name it is bound to.
    names += [k for k, v in vars(sys.modules[module]).items() if v is plugin and not k.startswith("__")]
    for name in names:
        try:
            if "<" not in name and _resolve(f"{module}:{name}") is plugin:
                return f"{module}:{name}"
        except AttributeError:  # a nested class's qualname that its module does not reach
            continue
    return None


def _resolve(reference: str) -> Any:
    """The object ``reference`` names, imported afresh (ImportError or AttributeError if it is not there)."""
    module, _, qualname = reference.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split(".") if qualname else ():
        obj = getattr(obj, part)
    return obj


def carried_plugins() -> tuple[tuple[str, str], ...]:
    """Plugins registered at run time (not entry points) that can travel, as ``(name, reference)``."""
    pm = plugins.get_plugin_manager()
    out: list[tuple[str, str]] = []
    for name, plugin in pm.list_name_plugin():
        if name in plugins.DEFAULT_PLUGINS or plugins.distribution_of(name) is not None or plugin is None:
            continue
        reference = _reference(plugin)
        if reference is not None:  # one that cannot travel (a test's local object) stays in this process
            out.append((name, reference))
    return tuple(out)


def register(carried: Iterable[tuple[str, str]]) -> None:
    """Register each carried plugin under its name, unless a plugin of that name is there already."""
    pm = plugins.get_plugin_manager()
    for name, reference in carried:
        if pm.get_plugin(name) is None:
            pm.register(_resolve(reference), name=name)
