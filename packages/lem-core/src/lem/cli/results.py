"""The results commands of ``lem``: ``lem results list|show|aggregate|plot|compare|export`` and ``lem report``.

Registered on the ``lem`` group by :mod:`lem.cli.main`. Each command imports what it needs when it runs, so
that `lem --help` stays fast (target < 0.3 s; benchmarks/cli_startup.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lem.errors import ResultsError


@click.group()
def results() -> None:
    """List, show and re-aggregate results."""


STATUSES = ("ok", "degraded", "failed", "interrupted", "incomplete", "not started", "damaged")


@results.command("list")
@click.argument("directory", default="results", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--run", "runs", multiple=True, help="Only this run id (repeatable).")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Only this status (repeatable).")
@click.option("--backend", "backends", multiple=True, help="Only this backend (repeatable).")
def results_list(
    directory: str, as_json: bool, runs: tuple[str, ...], statuses: tuple[str, ...], backends: tuple[str, ...]
) -> None:
    """List the experiments under DIRECTORY (default ./results): id, model, backend, sweep values, key figures.

    A failure is one line here; `lem results show RUN_ID/EXPERIMENT_ID` gives its full reason.
    """
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.campaign.ending import table
    from lem.results.files import experiment_dirs, experiment_status

    root = Path(directory)
    if not root.is_dir():
        raise ResultsError(f"{directory}: no such results directory (run `lem run FILE --out {directory}` first)")
    rows = [experiment_status(d) for d in experiment_dirs(root)]
    rows = [
        r
        for r in rows
        if (not runs or r["id"].split("/", 1)[0] in runs)
        and (not statuses or r["status"] in statuses)
        and (not backends or r.get("backend") in backends)
    ]
    for r in rows:
        r["sweep_values"] = _sweep_values(Path(r["path"]))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        what = " matching the filters" if runs or statuses or backends else " yet"
        click.echo(f"{directory}: no results{what}")
        return
    keys = list(dict.fromkeys(k for r in rows for k in r["sweep_values"]))
    for r in rows:
        for k in keys:
            r[f"sweep:{k}"] = r["sweep_values"].get(k, "-")
        if r.get("reason"):
            r["reason"] = _one_line(str(r["reason"]), r["id"])
    click.echo(table(rows, [(k.rsplit(".", 1)[-1], f"sweep:{k}") for k in keys]))


def _sweep_values(exp_dir: Path) -> dict[str, Any]:
    """The experiment's sweep values, from whichever of its records holds them (none: ``{}``)."""
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.rundata import read_doc

    for name in ("summary.json", "failure.json", "interrupted.json", "setup.json"):
        doc = read_doc(exp_dir / name, [])
        values = (doc or {}).get("sweep_values")
        if isinstance(values, dict):
            return values
    return {}


def _one_line(reason: str, key: str, width: int = 120) -> str:
    """A failure's reason on one line (its first), pointing at `results show` when there is more."""
    lines = reason.strip().splitlines() or [""]
    first = lines[0] if len(lines[0]) <= width else lines[0][: width - 1] + "…"
    return first if first == reason.strip() else f"{first} (full reason: lem results show {key})"


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
@click.option("--json", "as_json", is_flag=True, help="Print the full summary.json (JSON) instead.")
def results_show(target: str, directory: str, as_json: bool) -> None:
    """Summarize TARGET (RUN_ID, RUN_ID/EXPERIMENT_ID or a path): what ran and each figure with its 95% CI.

    Estimated figures are marked "(estimate)" with what they rest on; --json prints the summary file itself.
    """
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.files import experiment_dirs, read_json, read_summary, resolve

    docs = []
    damaged = 0
    names = ("summary.json", "failure.json", "interrupted.json", "setup.json")
    for d in experiment_dirs(resolve(target, Path(directory))):
        name = next((n for n in names if (d / n).exists()), None)
        try:
            # A summary is checked as `lem results list` checks it (summary_damage): what it calls damaged.
            read = read_summary if name == "summary.json" else read_json
            doc = read(d / name) if name else {"experiment": str(d), "status": "not started"}
            docs.append(doc)
        except ResultsError as exc:  # name the damaged file, show the rest
            click.echo(f"lem: {exc}; skipped", err=True)
            damaged += 1
    if docs and as_json:
        click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    elif docs:
        # deferred: rich and the registry load only for the human summary
        from lem.results.show import summary_text

        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        click.echo(summary_text(docs, width), nl=False)
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
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.files import (
        SHAPE_ERRORS,
        aggregate_experiment,
        damaged_file,
        experiment_dirs,
        pool,
        resolve,
        write_json,
    )

    dirs = [d for t in targets or (directory,) for d in experiment_dirs(resolve(t, Path(directory)))]
    if not dirs:
        where = ", ".join(targets) or directory
        raise ResultsError(f"{where}: no experiments found, nothing to aggregate (see `lem results list`)")
    if pool_out:
        pooled = pool(dirs, allow_mixed_backends=allow_mixed_backends)  # refuses mixed backends before writing
    damaged = 0
    for d in dirs:
        short = _cut_short(d)
        if short is not None:  # its summary would make `lem results list` say ok and --resume skip it
            click.echo(
                f"lem: {d}: did not finish ({short}); skipped, no summary written"
                f" (`lem run FILE --resume {d.parent.name}` runs it again)",
                err=True,
            )
        elif any(d.glob("cycle-*.json")):  # a missing setup.json is named by aggregate_experiment
            timelines: list[str] = []
            try:
                aggregate_experiment(d, timelines)
            except ResultsError as exc:  # a damaged file: name it, go on with the rest
                click.echo(f"lem: {exc}; skipped", err=True)
                damaged += 1
                continue
            except SHAPE_ERRORS:
                click.echo(f"lem: {damaged_file(d)}; skipped", err=True)
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


def _cut_short(exp_dir: Path) -> str | None:
    """How an experiment without a summary stopped partway (killed, interrupted, failed); ``None`` if it did not.

    A run killed while it wrote the summary has all its cycles: that one is aggregated.
    """
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.figures.precision import unfinished
    from lem.results.files import SHAPE_ERRORS, cycle_paths, read_cycle, read_setup, setup_config

    if (exp_dir / "summary.json").exists() or not (exp_dir / "setup.json").exists():
        return None
    try:
        config, _ = setup_config(read_setup(exp_dir))
        return unfinished(config.measurement, [read_cycle(p) for p in cycle_paths(exp_dir)])
    except (ResultsError, *SHAPE_ERRORS):  # a damaged file: the aggregation names it
        return None


@results.command("plot")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(["pareto", "quality", "timeline", "cycles", "cdf", "roofline"]),
    help="Which plots (repeatable; default: all). pareto: J/output token against throughput, TTFT and TPOT "
    "across a sweep; quality: J/output token and J/correct answer against accuracy ([quality]); timeline: "
    "power, temperature and SM clock per cycle; cycles: per-cycle figures with "
    "mean and 95% CI; cdf: latency CDFs; roofline: decode FLOP/s against arithmetic intensity under the peaks.",
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
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results import plots
    from lem.results.rundata import read_run

    run = read_run(Path(directory))
    if not run.experiments:
        raise ResultsError(f"{directory}: no experiments found (give a run directory, see `lem results list`)")
    out = Path(out_dir) if out_dir else Path(directory) / "plots"
    damaged = plots.damaged_inputs(run)
    for line in damaged:  # what those files gave is left out; the rest is drawn
        click.echo(f"lem: {line}", err=True)
    for kind in kinds or plots.KINDS:
        for plot in plots.draw(kind, run):
            if plot.skipped is not None:
                click.echo(f"{kind}: {plot.name} not drawn: {plot.skipped}", err=True)
                continue
            for path in plots.save(plot, out, formats or ("png",)):
                click.echo(str(path))
    if damaged:
        sys.exit(1)


@click.command("report")
@click.argument("target")
@_results_dir("TARGET")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write here instead of TARGET/report.html.")
def report(target: str, directory: str, out_file: str | None) -> None:
    """Write one self-contained report.html for TARGET: a run (id or directory) or a results directory.

    Over a results directory (several runs: a sweep today, another backend tomorrow) the page lists each
    run with its source file and lem version, names every experiment by run and id, and shows what
    differs in config between them. Plots are also written as SVG and PNG in plots/ beside the page.
    """
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.files import resolve
    from lem.results.report import write_report
    from lem.results.rundata import read_run

    run_dir = resolve(target, Path(directory))
    if not read_run(run_dir).experiments:
        raise ResultsError(f"{target}: no experiments in {run_dir} (give a run directory, see `lem results list`)")
    done = write_report(run_dir, Path(out_file) if out_file else None)
    if not done.plots_available:
        # deferred: `lem --help` imports this module; a command's code loads when it runs
        from lem.results.plots import INSTALL_HINT

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
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.compare import banner, compare, gather, render

    entries = gather(targets, Path(directory), lambda line: click.echo(f"lem: warning: {line}", err=True))
    result = compare(entries)
    if strict and result["warnings"]:
        for line in result["warnings"]:
            click.echo(f"lem: error: {line} (--strict)", err=True)
        sys.exit(1)
    # Fairness warnings come first, where they cannot scroll away: on stderr for scripts and logs, and as a
    # banner above the table (a terminal shows the banner only, not the same lines twice).
    if as_json or not sys.stdout.isatty():
        for line in result["warnings"]:
            click.echo(f"lem: warning: {line}: the comparison may not be fair", err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        from rich.console import Console

        width = None if sys.stdout.isatty() else max(120, 30 * (len(entries) + 1))
        console = Console(width=width, markup=False)  # text in cells is data: "[hardware]" is not a style
        top = banner(result)
        if top is not None:
            console.print(top)
        console.print(render(result))


@results.command("export")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "jsonl", "boamps"]),
    default="csv",
    show_default=True,
    help="boamps: one BoAmps JSON report per experiment with energy, into the directory --out names.",
)
@click.option(
    "--level",
    type=click.Choice(["experiment", "cycle", "request"]),
    default="experiment",
    show_default=True,
    help="One row per experiment, per cycle or per request.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(),
    help="Write here: a file (default: stdout; parquet needs it), or a directory for boamps.",
)
@click.option(
    "--strict", is_flag=True, help="A damaged result file stops the export (nothing written) instead of being left out."
)
@click.option(
    "--infra-type",
    type=click.Choice(["publicCloud", "privateCloud", "onPremise", "other"]),
    default="other",
    show_default=True,
    help="boamps: infrastructure.infraType, where the machine is (lem cannot tell; 'other' is the catch-all).",
)
def results_export(directory: str, fmt: str, level: str, out_file: str | None, strict: bool, infra_type: str) -> None:
    """Export the results under DIRECTORY (results, run or experiment directory) as a table.

    A damaged result file is named on stderr and what it holds is left out (the rest is exported);
    --strict refuses instead, with one line listing every damaged file.
    """
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    if fmt == "boamps":
        # deferred: `lem --help` imports this module; a command's code loads when it runs
        from lem.results.boamps import write

        if not out_file:
            raise ResultsError("--format boamps writes one file per experiment: give --out DIRECTORY")

        def warn(line: str) -> None:
            click.echo(f"lem: warning: {line}", err=True)

        paths = write(Path(directory), Path(out_file), warn, infra_type)
        click.echo(f"{out_file}: {len(paths)} BoAmps report(s)", err=True)
        return
    if out_file and Path(out_file).is_dir():
        raise ResultsError(f"--out {out_file} is a directory: --format {fmt} writes one file; name the file")
    # deferred: `lem --help` imports this module; a command's code loads when it runs
    from lem.results.export import export

    n, _ = export(Path(directory), fmt, level, Path(out_file) if out_file else None, strict=strict)
    if out_file:
        click.echo(f"{out_file}: {n} rows ({level} level)", err=True)
