"""The ``lem`` command line.

Imports are kept inside the commands: ``lem --help`` must not import the
plugins, torch or anything heavy. Errors a user can cause (:class:`LemError`)
become one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Collection
from typing import Any

import click

from lem import __version__
from lem.errors import LemError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LemError as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"lem: {line}" if not line.startswith("lem:") else line, err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # 128 + SIGINT, as shells expect of a command stopped by Ctrl-C.
            click.echo("lem: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="lem")
def cli() -> None:
    """LLM Energy Measure: energy, throughput and latency of LLM inference.

    Write an experiment as TOML, then `lem run exp.toml`.
    """


_config_options = [
    click.option("--preset", help="Preset applied under the file (overrides the file's own `preset`)."),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key (TOML value), e.g. --set generation.max_output_tokens=64. Repeatable.",
    ),
    click.option("--model", help="Shortcut for --set model=..."),
    click.option("--backend", help="Shortcut for --set backend=..."),
]


def config_options(f: Any) -> Any:
    for option in reversed(_config_options):
        f = option(f)
    return f


def _load(
    path: str,
    preset: str | None,
    overrides: tuple[str, ...],
    model: str | None,
    backend: str | None,
    external_backends: Collection[str] = (),
) -> Any:
    from lem.loading import load

    extra = [f"model={json.dumps(model)}"] if model else []
    extra += [f"backend={json.dumps(backend)}"] if backend else []
    loaded = load(path, preset=preset, overrides=[*overrides, *extra], external_backends=external_backends)
    for problem in loaded.warnings:
        click.echo(problem.format(loaded.source), err=True)
    return loaded


def _interpreters(values: tuple[str, ...], in_process: bool) -> dict[str, str]:
    """Parse ``--python BACKEND=PYTHON`` options; each must name an executable."""
    out: dict[str, str] = {}
    for value in values:
        backend, sep, python = value.partition("=")
        if not sep or not backend or not python:
            raise LemError(f"--python {value}: expected BACKEND=PYTHON, e.g. --python vllm=/opt/vllm-env/bin/python")
        found = shutil.which(python)
        if found is None:
            raise LemError(
                f"--python {value}: '{python}' is not an executable; give the path of that environment's python"
            )
        _check_interpreter(value, found)
        out[backend] = found
    if out and in_process:
        raise LemError("--python and --in-process exclude each other: another interpreter needs a worker process")
    return out


def _check_interpreter(value: str, python: str) -> None:
    """``python`` must be a Python that can start lem's worker (lem-core installed there)."""
    import subprocess

    probe = "import lem.worker; print('lem-worker-ok')"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LemError(f"--python {value}: cannot run '{python}' ({exc})") from None
    if "lem-worker-ok" not in done.stdout:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise LemError(
            f"--python {value}: '{python}' cannot start lem's worker ({said}); "
            "give a Python with lem-core installed (pip install lem-core in that environment)"
        )


def _confirm(loaded: Any, yes: bool, quiet: bool) -> None:
    """Say how many experiments a sweep runs and how long they take at least; ask above a threshold."""
    from lem.campaign import CONFIRM_ABOVE, duration_text, estimate_s

    n = len(loaded.experiments)
    if n <= 1:
        return
    floor = duration_text(estimate_s(loaded.experiments))
    line = (
        f"{loaded.source}: {n} experiments; estimated at least {floor}"
        " (worker starts, idle baselines and cool-downs; generation time comes on top)"
    )
    if n <= CONFIRM_ABOVE or yes:
        if not quiet:
            click.echo(line, err=True)
        return
    if not sys.stdin.isatty():
        raise LemError(f"{line}: more than {CONFIRM_ABOVE}; pass --yes to run them all")
    click.echo(line, err=True)
    if not click.confirm(f"Run all {n} experiments?", err=True):
        raise LemError("not started (answer y, or pass --yes, to run them)")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@config_options
@click.option(
    "--out",
    "out_dir",
    default="results",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Results directory.",
)
@click.option("--in-process", is_flag=True, help="Run experiments in this process (debugging, tests).")
@click.option("--resume", "resume_id", metavar="RUN_ID", help="Continue a run, skipping finished experiments.")
@click.option(
    "--python",
    "pythons",
    multiple=True,
    metavar="BACKEND=PYTHON",
    help="Run BACKEND's experiments with another environment's interpreter "
    "(e.g. vllm=/opt/vllm-env/bin/python). Repeatable.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON on stdout.")
@click.option("--no-report", is_flag=True, help="Do not write report.html in the run directory at the end.")
@click.option("--yes", "-y", is_flag=True, help="Run a large sweep without asking.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run each experiment as a task on a Ray cluster (ADDRESS, or `auto`; none: RAY_ADDRESS or a local one).",
)
@click.option("--ray-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True, help="CPUs per Ray task.")
@click.option(
    "--ray-gpus", type=click.FloatRange(min=0), help="GPUs per Ray task [default: tensor × pipeline parallel]."
)
@click.option("--ray-memory", "ray_memory_gb", type=click.FloatRange(min=0), help="Memory (GB) per Ray task.")
@click.option(
    "--ray-resource", multiple=True, metavar="NAME=AMOUNT", help="A custom Ray resource per task. Repeatable."
)
@click.option("--ray-label", multiple=True, metavar="KEY=VALUE", help="Only nodes with this Ray label. Repeatable.")
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Re-runs of a Ray task whose node or worker died.",
)
@click.option(
    "--ray-shared-out", is_flag=True, help="Ray tasks write under --out themselves (a filesystem all nodes share)."
)
def run(
    file: str,
    preset: str | None,
    overrides: tuple[str, ...],
    model: str | None,
    backend: str | None,
    out_dir: str,
    in_process: bool,
    resume_id: str | None,
    pythons: tuple[str, ...],
    quiet: bool,
    as_json: bool,
    no_report: bool,
    yes: bool,
    ray_address: str | None,
    **ray_args: Any,
) -> None:
    """Run the experiment(s) in FILE and write results under --out."""
    from lem.campaign import run_campaign

    interpreters = _interpreters(pythons, in_process)
    ray = _ray_options(ray_address, in_process, **ray_args)
    loaded = _load(file, preset, overrides, model, backend, external_backends=interpreters)
    _confirm(loaded, yes, quiet or as_json)
    ok = run_campaign(
        loaded,
        out_dir=out_dir,
        in_process=in_process,
        resume_id=resume_id,
        pythons=interpreters,
        quiet=quiet or as_json,
        as_json=as_json,
        report=not no_report,
        ray=ray,
    )
    if not ok:
        sys.exit(1)


def _pairs(option: str, values: tuple[str, ...], convert: Any) -> dict[str, Any]:
    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key] = convert(raw)
        except ValueError:
            raise LemError(
                f"{option} {value}: expected KEY=VALUE ({convert.__name__} value), e.g. {option} H100=1"
            ) from None
    return out


def _ray_options(address: str | None, in_process: bool, **args: Any) -> Any:
    """The ``--ray*`` options as :class:`lem.distributed.RayOptions`; ``None`` without ``--ray``."""
    if address is None:
        used = [k for k in ("ray_gpus", "ray_memory_gb") if args[k] is not None]
        used += [k for k in ("ray_resource", "ray_label", "ray_shared_out") if args[k]]
        if used:
            raise LemError(f"--{used[0].replace('_gb', '').replace('_', '-')} needs --ray")
        return None
    if in_process:
        raise LemError("--ray and --in-process exclude each other: a Ray task runs each experiment in its worker")
    from lem.distributed import RayOptions, import_ray

    import_ray()  # a missing Ray is one line before anything starts
    return RayOptions(
        address=address or None,
        num_cpus=args["ray_cpus"],
        num_gpus=args["ray_gpus"],
        memory_gb=args["ray_memory_gb"],
        resources=_pairs("--ray-resource", args["ray_resource"], float),
        labels=_pairs("--ray-label", args["ray_label"], str),
        max_retries=args["max_retries"],
        shared_out=args["ray_shared_out"],
    )


@cli.command()
def plugins() -> None:
    """List installed plugins as JSON (name, distribution, version, hooks)."""
    from lem.plugins import describe_plugins

    click.echo(json.dumps(describe_plugins(), indent=2))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the built-in `random:` architectures (offline, random weights)."""
    from lem.architectures import describe

    rows = describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["model"]) for r in rows)
    for r in rows:
        click.echo(f"{r['model']:<{width}}  {r['description']}")


@cli.group()
def config() -> None:
    """Check and inspect experiment files."""


@config.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@config_options
def config_validate(
    file: str, preset: str | None, overrides: tuple[str, ...], model: str | None, backend: str | None
) -> None:
    """Check FILE; print every problem, exit 2 if there is an error."""
    loaded = _load(file, preset, overrides, model, backend)
    n = len(loaded.experiments)
    click.echo(f"{file}: OK ({n} experiment{'s' if n != 1 else ''}, {len(loaded.warnings)} warning(s))")


@config.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@config_options
def config_show(
    file: str, preset: str | None, overrides: tuple[str, ...], model: str | None, backend: str | None
) -> None:
    """Print the resolved config of every experiment in FILE as TOML."""
    from lem.loading import dumps

    loaded = _load(file, preset, overrides, model, backend)
    for i, exp in enumerate(loaded.experiments):
        if len(loaded.experiments) > 1:
            click.echo(f"{'' if i == 0 else chr(10)}# experiment {exp.id}")
        click.echo(dumps(exp.config), nl=False)


@config.command("expand")
@click.argument("file", type=click.Path(dir_okay=False))
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def config_expand(
    file: str, preset: str | None, overrides: tuple[str, ...], model: str | None, backend: str | None, as_json: bool
) -> None:
    """List the experiments FILE's [sweep] expands to, with their ids."""
    loaded = _load(file, preset, overrides, model, backend)
    rows = [{"id": e.id, "values": dict(e.sweep_values)} for e in loaded.experiments]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for row in rows:
        values = "  ".join(f"{k}={v!r}" for k, v in row["values"].items())
        click.echo(f"{row['id']}  {values}".rstrip())


@cli.group()
def results() -> None:
    """List, show and re-aggregate results."""


@results.command("list")
@click.argument("directory", default="results", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def results_list(directory: str, as_json: bool) -> None:
    """List the experiments under DIRECTORY (default ./results): id, model, backend, key figures."""
    from pathlib import Path

    from lem.campaign import table
    from lem.errors import ResultsError
    from lem.results import experiment_dirs, experiment_status

    root = Path(directory)
    if not root.is_dir():
        raise ResultsError(f"{directory}: no such results directory (run `lem run FILE --out {directory}` first)")
    rows = [experiment_status(d) for d in experiment_dirs(root)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif rows:
        click.echo(table(rows))
    else:
        click.echo(f"{directory}: no results yet")


def _results_dir(targets: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``--dir`` option of the results commands: the directory their ``targets`` argument is relative to."""
    verb = "are" if targets.endswith("S") else "is"
    return click.option(
        "--dir",
        "directory",
        default="results",
        show_default=True,
        type=click.Path(file_okay=False),
        help=f"Results directory that {targets} {verb} relative to.",
    )


@results.command("show")
@click.argument("target")
@_results_dir("TARGET")
def results_show(target: str, directory: str) -> None:
    """Print the full summary (JSON) of TARGET: RUN_ID, RUN_ID/EXPERIMENT_ID or a path."""
    from pathlib import Path

    from lem.errors import ResultsError
    from lem.results import experiment_dirs, read_json, resolve

    docs = []
    damaged = 0
    names = ("summary.json", "failure.json", "interrupted.json", "setup.json")
    for d in experiment_dirs(resolve(target, Path(directory))):
        name = next((n for n in names if (d / n).exists()), None)
        try:
            docs.append(read_json(d / name) if name else {"experiment": str(d), "status": "not started"})
        except ResultsError as exc:  # name the damaged file, show the rest
            click.echo(f"lem: {exc}; skipped", err=True)
            damaged += 1
    if docs:
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    if damaged:
        sys.exit(1)


@results.command("aggregate")
@click.argument("targets", nargs=-1)
@_results_dir("TARGETS")
@click.option(
    "--pool",
    "pool_out",
    type=click.Path(dir_okay=False),
    help="Also pool the cycles of all TARGETS into one summary written to this JSON file.",
)
@click.option("--allow-mixed-backends", is_flag=True, help="Allow pooling experiments run on different backends.")
def results_aggregate(
    targets: tuple[str, ...], directory: str, pool_out: str | None, allow_mixed_backends: bool
) -> None:
    """Recompute the summaries of TARGETS (runs or experiments; default: all of --dir) from their raw cycles."""
    from pathlib import Path

    from lem.errors import ResultsError
    from lem.results import SHAPE_ERRORS, aggregate_experiment, damaged_file, experiment_dirs, pool, resolve, write_json

    dirs = [d for t in targets or (directory,) for d in experiment_dirs(resolve(t, Path(directory)))]
    if not dirs:
        where = ", ".join(targets) or directory
        raise ResultsError(f"{where}: no experiments found, nothing to aggregate (see `lem results list`)")
    if pool_out:
        pooled = pool(dirs, allow_mixed_backends=allow_mixed_backends)  # refuses mixed backends before writing
    damaged = 0
    for d in dirs:
        if (d / "setup.json").exists() and any(d.glob("cycle-*.json")):
            timelines: list[str] = []
            try:
                aggregate_experiment(d, timelines)
            except ResultsError as exc:  # a damaged file: name it, go on with the rest
                click.echo(f"lem: {exc}; skipped", err=True)
                damaged += 1
                continue
            except SHAPE_ERRORS as exc:
                click.echo(f"lem: {damaged_file(d, exc)}: damaged (wrong JSON shape); skipped", err=True)
                damaged += 1
                continue
            for line in timelines:
                click.echo(f"lem: {d}/{line}", err=True)
            click.echo(f"{d}/summary.json: recomputed")
        else:
            click.echo(f"{d}: no cycles, skipped", err=True)
    if pool_out:
        write_json(Path(pool_out), "pooled-summary", pooled)
        click.echo(f"{pool_out}: {pooled['cycles']} cycles of {len(dirs)} experiments pooled")
    if damaged:
        sys.exit(1)


@results.command("plot")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["pareto", "timeline", "cycles", "cdf"]),
    help="Which plots (repeatable; default: all). pareto: J/output token against throughput, TTFT and TPOT "
    "across a sweep; timeline: power, temperature and SM clock per cycle; cycles: per-cycle figures with "
    "mean and 95% CI; cdf: latency CDFs.",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Where to write them (default DIR/plots).")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["png", "svg"]),
    help="File format (repeatable; default png).",
)
def results_plot(directory: str, kinds: tuple[str, ...], out_dir: str | None, formats: tuple[str, ...]) -> None:
    """Draw plots of the results in DIRECTORY (a run, an experiment or a results directory) with matplotlib."""
    from pathlib import Path

    from lem import plots
    from lem.errors import ResultsError
    from lem.rundata import read_run

    run = read_run(Path(directory))
    if not run.experiments:
        raise ResultsError(f"{directory}: no experiments found (give a run directory, see `lem results list`)")
    out = Path(out_dir) if out_dir else Path(directory) / "plots"
    for kind in kinds or plots.KINDS:
        for plot in plots.draw(kind, run):
            if plot.skipped is not None:
                click.echo(f"{kind}: {plot.name} not drawn: {plot.skipped}", err=True)
                continue
            for path in plots.save(plot, out, formats or ("png",)):
                click.echo(str(path))


@cli.command("report")
@click.argument("target")
@_results_dir("TARGET")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of RUN/report.html.")
def report(target: str, directory: str, out_file: str | None) -> None:
    """Write one self-contained report.html for a run: TARGET is a run id or a run directory."""
    from pathlib import Path

    from lem.errors import ResultsError
    from lem.report import write_report
    from lem.results import resolve
    from lem.rundata import read_run

    run_dir = resolve(target, Path(directory))
    if not read_run(run_dir).experiments:
        raise ResultsError(f"{target}: no experiments in {run_dir} (give a run directory, see `lem results list`)")
    done = write_report(run_dir, Path(out_file) if out_file else None)
    if not done.plots_available:
        from lem.plots import INSTALL_HINT

        click.echo(f"lem: {INSTALL_HINT} (the report was written without them)", err=True)
    for line in done.skipped:
        click.echo(f"not drawn: {line}", err=True)
    click.echo(str(done.path))


@results.command("compare")
@click.argument("targets", nargs=-1, required=True)
@_results_dir("TARGETS")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--strict", is_flag=True, help="Workload differences are errors (exit 1), not warnings.")
def results_compare(targets: tuple[str, ...], directory: str, as_json: bool, strict: bool) -> None:
    """Compare TARGETS side by side (run ids, RUN_ID/EXPERIMENT_ID or paths; a run expands to its experiments).

    Headline figures with 95% CIs and the ratio to the first; a difference is
    "resolved" by Welch's two-sided t-test at 5% on per-cycle values. Warns when
    the workloads differ (model, precision, prompt-set digest, token counts,
    output digests).
    """
    from pathlib import Path

    from lem.compare import compare, gather, render

    entries = gather(targets, Path(directory), lambda line: click.echo(f"lem: warning: {line}", err=True))
    result = compare(entries)
    if strict and result["warnings"]:
        for line in result["warnings"]:
            click.echo(f"lem: error: {line} (--strict)", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from rich.console import Console

        width = None if sys.stdout.isatty() else max(120, 40 * (len(entries) + 1))
        Console(width=width).print(render(result))
    for line in result["warnings"]:
        click.echo(f"lem: warning: {line}: the comparison may not be fair", err=True)


@results.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "jsonl"]), default="csv", show_default=True)
@click.option(
    "--level",
    type=click.Choice(["experiment", "cycle", "request"]),
    default="experiment",
    show_default=True,
    help="One row per experiment, per cycle or per request.",
)
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False), help="Write here (default: stdout; parquet needs it)."
)
def results_export(directory: str, fmt: str, level: str, out_file: str | None) -> None:
    """Export the results under DIRECTORY (results, run or experiment directory) as a table."""
    from pathlib import Path

    from lem.export import export

    n = export(Path(directory), fmt, level, Path(out_file) if out_file else None)
    if out_file:
        click.echo(f"{out_file}: {n} rows ({level} level)", err=True)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lem")
