"""The ``lem`` command line.

Imports of lem's own modules are kept inside the commands, each marked
``deferred``: ``lem --help`` must not import the plugins, torch or anything
heavy (target < 0.3 s; benchmarks/cli_startup.py). Errors a user can cause (:class:`LemError`)
become one line on stderr and exit status 2. ``lem run`` exits 0 when every experiment is ok, 1 when
one failed or degraded, 2 on bad input, 130 when interrupted (README: exit status). The results commands
(``lem results ...``, ``lem report``) are in :mod:`lem.cli.results`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import click

from lem import __version__
from lem.cli.results import report, results
from lem.errors import LemError, PluginError

if TYPE_CHECKING:
    from lem.campaign.loop import CampaignOptions
    from lem.campaign.ray_executor import RayOptions


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
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.configfile.loading import load

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

    probe = "import lem.campaign.worker; print('lem-worker-ok')"
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
    from lem.campaign.loop import CONFIRM_ABOVE, duration_text, estimate_s  # deferred: `lem --help` stays fast

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
@click.option(
    "--resume",
    "resume_id",
    metavar="RUN_ID",
    help="Continue a run, skipping finished experiments; FILE must expand to the run's experiments.",
)
@click.option(
    "--resume-add",
    metavar="RUN_ID",
    help="As --resume, and FILE may add experiments to the run (none may change or go).",
)
@click.option(
    "--python",
    "pythons",
    multiple=True,
    metavar="BACKEND=PYTHON",
    help="Run BACKEND's experiments with another environment's interpreter "
    "(e.g. vllm=/opt/vllm-env/bin/python). Repeatable.",
)
@click.option(
    "--launch",
    "launch",
    multiple=True,
    metavar="BACKEND=COMMAND",
    help="Run BACKEND's workers as COMMAND -m lem.campaign.worker, e.g. "
    'tensorrt="docker run --rm -i --gpus all IMAGE python" (docs/launchers.md). Repeatable; '
    "wins over the file's [campaign.launch].",
)
@click.option(
    "--start-timeout",
    "start_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a worker has to start (an image pull, a queued job) [default: [campaign] start_timeout_s, or 600].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Show the engines' own output (loader, quantizer, start-up logs) as well as writing it to each"
    " experiment's engine.log.",
)
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
    yes: bool,
    **flags: Any,
) -> None:
    """Run the experiment(s) in FILE and write results under --out."""
    from lem.campaign.loop import run_campaign  # deferred: `lem --help` must not import the campaign

    _stop_on_sigterm()
    launch, start_timeout_s = flags.pop("launch"), flags.pop("start_timeout_s")
    options = _campaign_options(**flags)
    loaded = _load(file, preset, overrides, model, backend, external_backends={*options.pythons, *_backends(launch)})
    options = _with_launchers(options, loaded, launch, start_timeout_s)
    _confirm(loaded, yes, options.quiet)
    if not run_campaign(loaded, options):
        sys.exit(1)


def _campaign_options(
    out_dir: str,
    in_process: bool,
    resume_id: str | None,
    resume_add: str | None,
    pythons: tuple[str, ...],
    quiet: bool,
    verbose: bool,
    as_json: bool,
    no_report: bool,
    ray_address: str | None,
    **ray_args: Any,
) -> CampaignOptions:
    """``lem run``'s flags as :class:`lem.campaign.loop.CampaignOptions` (``--python`` and ``--ray*`` checked)."""
    from lem.campaign.loop import CampaignOptions  # deferred: `lem --help` must not import the campaign

    interpreters = _interpreters(pythons, in_process)
    if resume_id is not None and resume_add is not None:
        raise LemError("--resume and --resume-add exclude each other: give one run id, with --resume-add to extend it")
    return CampaignOptions(
        out_dir=out_dir,
        resume_id=resume_id if resume_add is None else resume_add,
        resume_add=resume_add is not None,
        in_process=in_process,
        quiet=quiet or as_json,
        verbose=verbose,
        as_json=as_json,
        report=not no_report,
        pythons=interpreters,
        ray=_ray_options(ray_address, in_process, **ray_args),
    )


def _backends(launch: tuple[str, ...]) -> set[str]:
    return {value.partition("=")[0].strip() for value in launch}


def _with_launchers(
    options: CampaignOptions, loaded: Any, launch: tuple[str, ...], start_timeout_s: float | None
) -> CampaignOptions:
    """``options`` with the launchers of ``--launch`` over the file's ``[campaign.launch]``, checked."""
    import attrs

    from lem.campaign.launcher import START_TIMEOUT_S, merged  # deferred: `lem --help` stays fast

    launchers = merged(loaded.launch, launch, options.pythons)
    launched = {b for b, launcher in launchers.items() if launcher.given_by != "--python"}
    if launched and options.in_process:
        raise LemError("--launch ([campaign.launch]) and --in-process exclude each other: a launcher starts a worker")
    if launched and options.ray is not None:
        raise LemError(
            f"--ray with a launcher for {', '.join(sorted(launched))}: not supported; Ray starts each worker itself"
            " (use --python for another interpreter there), or run the campaign without --ray"
        )
    timeout = start_timeout_s or loaded.start_timeout_s or START_TIMEOUT_S
    return attrs.evolve(options, launchers=launchers, start_timeout_s=timeout)


def _stop_on_sigterm() -> None:
    """SIGTERM (a batch scheduler's stop, `kill`) interrupts the run as Ctrl-C does: the experiment in
    progress is recorded as interrupted, finished ones are kept, and the run can be resumed."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not break the clean-up
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


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


#: Seconds the probe of a ``--ray ADDRESS`` waits for a TCP connection (Ray itself retries for minutes).
RAY_PROBE_S = 3.0


def _probe_ray(address: str, option: str) -> None:
    """One line, within :data:`RAY_PROBE_S`, when nothing listens at a Ray address (``auto``/none: Ray finds it)."""
    from lem.processes import listening  # deferred: `lem --help` stays fast

    if not address or address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        host, port = address.removeprefix("ray://"), ""
    number = int(port) if port else (10001 if client else 6379)
    if not listening(host.strip("[]"), number, RAY_PROBE_S):
        raise LemError(
            f"{option} {address}: nothing listens on {host}:{number} (no connection within {RAY_PROBE_S:g} s);"
            " start the cluster (`ray start --head`) or give its address (host:6379, or ray://host:10001)"
        )


def _ray_options(address: str | None, in_process: bool, **args: Any) -> RayOptions | None:
    """The ``--ray*`` options as :class:`lem.campaign.ray_executor.RayOptions`; ``None`` without ``--ray``."""
    if address is None:
        used = [k for k in ("ray_gpus", "ray_memory_gb") if args[k] is not None]
        used += [k for k in ("ray_resource", "ray_label", "ray_shared_out") if args[k]]
        if used:
            raise LemError(f"--{used[0].replace('_gb', '').replace('_', '-')} needs --ray")
        return None
    if in_process:
        raise LemError("--ray and --in-process exclude each other: a Ray task runs each experiment in its worker")
    from lem.campaign.ray_executor import RayOptions, import_ray  # deferred: `lem --help` stays fast

    import_ray()  # a missing Ray is one line before anything starts
    _probe_ray(address or os.environ.get("RAY_ADDRESS", ""), "--ray" if address else "RAY_ADDRESS")
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
@click.option("--options", "options_of", metavar="NAME", help="Print the option table a backend or meter declares.")
@click.option("--json", "as_json", is_flag=True, help="With --options: print JSON instead of a table.")
@click.option("--markdown", is_flag=True, help="With --options: print the README's Markdown table.")
def plugins(options_of: str | None, as_json: bool, markdown: bool) -> None:
    """List installed plugins as JSON (name, distribution, version, hooks), or one plugin's options."""
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.plugins import describe_plugins

    if options_of is None:
        click.echo(json.dumps(describe_plugins(), indent=2))
        return
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem import options
    from lem.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = pm.get_plugin(options_of)
    tables = options.tables_of(plugin) if plugin is not None else ()
    if not tables:
        declared = sorted(n for n, p in pm.list_name_plugin() if options.tables_of(p))
        hint = options.did_you_mean(options_of, declared, otherwise="plugins with a table: " + ", ".join(declared))
        raise PluginError(f"lem plugins --options {options_of}: no installed plugin declares that table ({hint})")
    if as_json:
        click.echo(json.dumps({t.name: options.as_json(t) for t in tables}, indent=2))
        return
    if markdown:
        click.echo("\n".join(options.markdown(t) for t in tables), nl=False)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for t in tables:
        view = Table(title=escape(f"[{t.name}] {t.doc}"), title_justify="left")
        for column in ("key", "type", "default", "bounds", "reaches", "what it does"):
            view.add_column(column, overflow="fold")
        for r in options.rows(t):
            view.add_row(*(escape(c) for c in (r.key, r.type, r.default, r.bounds, r.reaches, r.doc)))
        console.print(view)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json: bool) -> None:
    """List the built-in `random:` architectures (offline, random weights)."""
    # deferred: `lem --help` imports this module; a command's code loads when it runs
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
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.configfile.loading import dumps

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


@cli.command()
@click.option(
    "--launch",
    "launch",
    multiple=True,
    required=True,
    metavar="BACKEND=COMMAND",
    help="The launcher to check, as `lem run --launch` takes it. Repeatable.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds the launcher has to answer.",
)
def doctor(launch: tuple[str, ...], timeout_s: float) -> None:
    """Run each launcher once: are lem-core, the backend and GPUs visible where it lands?

    One line each; exit status 1 if lem-core or the backend is missing there (or the launcher gave no answer).
    """
    from lem.campaign.launcher import parse, probe  # deferred: `lem --help` stays fast

    launchers = [parse(value) for value in launch]
    ok = True
    for launcher in launchers:
        found = probe(launcher, timeout_s)
        ok = ok and found.ok
        for line in found.lines():
            click.echo(line)
    if not ok:
        sys.exit(1)


cli.add_command(results)
cli.add_command(report)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lem")
