"""``report.html``: one self-contained page per run (summary table, plots, labels, environment, config, warnings).

The page needs nothing but itself: CSS is inline, plots are SVG embedded as
``data:`` URIs (an ``<img>`` each, so the ids inside one SVG cannot clash
with another's), there is no script and no font or file from anywhere else.
Every piece of text from the results is escaped. Without matplotlib the
report is still written, with a line saying how to get the plots.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from lem import __version__
from lem.figures.registry import ESTIMATE, FLAGGED, Figure, find, flags_of, in_view, method_of
from lem.results import plots
from lem.results.files import write_atomic
from lem.results.rundata import ExperimentData, RunData, ci, figure, label, mean, number, read_run

#: Summary keys shown elsewhere in the report; every other key is shown as a label, whatever its name.
_SHOWN = {
    "schema_version", "kind", "experiment_id", "run_id", "backend", "model", "sweep_values", "status", "cycles",
    "figures", "latency_pooled", "prompts", "load", "warmup", "warnings", "config", "key", "idle_power_w",
}  # fmt: skip
_KIND_TITLES = {
    "pareto": "Pareto fronts: energy per token against speed",
    "timeline": "Power, temperature and clock over time",
    "cycles": "Cycle by cycle",
    "cdf": "Latency distributions",
}
#: Plot kinds drawn once per experiment, and how many experiments' of them the page holds.
PER_EXPERIMENT = ("timeline", "cycles")
MAX_PER_EXPERIMENT = 12
_MIME = {"svg": "svg+xml", "png": "png"}
_FIGURE_FIELDS = {"n", "missing", "values", "mean", "std", "ci95_low", "ci95_high"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;
color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:6px 0}
.wide{overflow-x:auto}#summary{font-size:12.5px}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}th{background:#f4f4f6}
td.num{text-align:right;white-space:nowrap}small{color:#666}.na{color:#999}.flag{color:#b35c00}
.est{color:#7a4b00;font-size:11px;text-decoration:none}ol.estimates{font-size:12px;color:#555}
.failed{color:#b00020;font-weight:600}.meta{color:#555}ul.warn li{margin:2px 0}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.plots.single{grid-template-columns:1fr}.plots.single img{width:100%;max-width:1100px}
figure{margin:0;border:1px solid #eee;padding:8px}
figure img{max-width:100%;height:auto}
figcaption{color:#555;font-size:12px}pre{background:#f7f7f9;padding:8px;overflow:auto;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:4px 0}dt{color:#555}dd{margin:0}
"""


@attrs.frozen
class Report:
    """What :func:`write_report` wrote: the file, the plots drawn and those skipped (with their reasons)."""

    path: Path
    plots: int
    skipped: tuple[str, ...]
    plots_available: bool


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None) -> str:
    return "n/a" if value is None else format(value, ".4g")


def _cell(exp: ExperimentData, fig: Figure, notes: dict[str, int]) -> str:
    """One figure's cell: mean, 95% CI below it, an estimate marker with its basis, a flag with its reasons.

    ``notes`` numbers each distinct estimate basis for the footnotes under the table.
    """
    name, scale = fig.name, fig.scale
    entry = figure(exp, name)
    m = mean(exp, name)
    if m is None:
        n = (entry or {}).get("n")
        why = "not measured" if n in (None, 0) else "unknown"
        return f'<td class="num na" title="{_e(name)}: {why}">n/a</td>'
    band = ci(exp, name)
    summary = exp.summary or {}
    flags = flags_of(summary, name)
    if not flags and band is not None and band[0] < 0 and not fig.may_be_negative and "flags" not in summary:
        flags = ["impossible negative CI bound: run more cycles (the figure cannot be negative)"]  # schema 1
    ci_text = "no CI (1 cycle)" if band is None else f"[{_num(band[0] * scale)}, {_num(band[1] * scale)}]"
    mark = ""
    method = method_of(summary, name)
    if method.estimate:
        basis = method.basis or "the result does not record its basis"
        k = notes.setdefault(basis, len(notes) + 1)
        mark += f' <a class="est" href="#est-{k}" title="{_e(ESTIMATE)} {_e(basis)}">{_e(ESTIMATE)}<sup>{k}</sup></a>'
    if flags:
        mark += f' <span class="flag" title="{_e(FLAGGED)} {_e("; ".join(flags))}">⚠</span>'
    return f'<td class="num">{_num(m * scale)}{mark}<br><small>{_e(ci_text)}</small></td>'


def _summary_table(run: RunData) -> str:
    columns = in_view("report")
    head = "".join(f"<th>{_e(h)}</th>" for h in ("experiment", "status", "backend", "model", "cycles"))
    head += "".join(f'<th data-figure="{_e(f.name)}">{_e(f.title)}</th>' for f in columns)
    rows = []
    notes: dict[str, int] = {}
    for exp in run.experiments:
        doc = exp.summary or exp.failure or exp.setup or {}
        status = f'<span class="failed">{_e(exp.status)}</span>' if exp.status == "failed" else _e(exp.status)
        cells = [
            f'<td><a href="#exp-{_e(exp.id)}">{_e(exp.id)}</a><br><small>{_e(label(exp))}</small></td>',
            f"<td>{status}</td>",
            f"<td>{_e(doc.get('backend', 'n/a'))}</td>",
            f"<td>{_e(doc.get('model', 'n/a'))}</td>",
            f'<td class="num">{_e((exp.summary or {}).get("cycles", "n/a"))}</td>',
        ]
        cells += [_cell(exp, fig, notes) for fig in columns]
        rows.append(f'<tr class="experiment" data-id="{_e(exp.id)}">{"".join(cells)}</tr>')
    table = f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    footnotes = "".join(
        f'<li id="est-{k}">{_e(ESTIMATE)} rests on an estimate, not a measurement: {_e(basis)}</li>'
        for basis, k in notes.items()
    )
    return f'<div class="wide">{table}</div>' + (f'<ol class="estimates">{footnotes}</ol>' if footnotes else "")


def warnings(run: RunData) -> list[str]:
    """Every warning of the run: config, unreadable files, failed experiments, each summary's, doubtful figures."""
    out = [f"config: {w}" for w in (run.run or {}).get("config_warnings") or ()]
    out += list(run.problems)
    for exp in run.experiments:
        out += list(exp.problems)
        if exp.status == "failed":
            out.append(f"{exp.id}: FAILED: {(exp.failure or {}).get('reason')}")
        elif exp.status not in ("ok", "damaged"):  # a damaged summary is named in its problems
            out.append(f"{exp.id}: {exp.status} (no summary.json)")
        summary = exp.summary or {}
        out += [f"{exp.id}: {w}" for w in summary.get("warnings") or ()]
        for name, entry in (summary.get("figures") or {}).items():
            if not isinstance(entry, Mapping):
                continue
            low, m = number(entry.get("ci95_low")), number(entry.get("mean"))
            if "ci95_low_impossible" in entry or "flags" in summary:
                continue  # schema 2: the summary flags these itself, and its warnings say so
            row = find(name)
            if row is not None and row.may_be_negative:
                if m is not None and m < 0:
                    out.append(
                        f"{exp.id}: {name} is negative ({m:.4g}): the idle baseline was above the windows' mean "
                        "power, so energy above idle is not resolved at this load"
                    )
            elif low is not None and low < 0:
                out.append(
                    f"{exp.id}: {name}: 95% CI lower bound {low:.4g} is below 0, impossible for this figure: "
                    "the cycles vary too much for their number; run more cycles (measurement.cycles)"
                )
    return list(dict.fromkeys(out))


def _labels(exp: ExperimentData) -> list[tuple[str, str]]:
    """The honest labels a summary carries: methods, reasons, estimates, flags (any key not shown elsewhere)."""
    summary = exp.summary or {}
    out: list[tuple[str, str]] = []
    for key, value in summary.items():
        if key in _SHOWN:
            continue
        if isinstance(value, Mapping) and key == "methods":
            out += [(f"methods.{k}", _text(v)) for k, v in value.items() if v is not None]
        elif value is not None:  # a null reason or digest says nothing; a measured 0 or an empty flag list does
            out.append((key, _text(value)))
    for name, entry in (summary.get("figures") or {}).items():
        if isinstance(entry, Mapping):
            # Flags on a figure (``ci95_low_impossible``...) are shown where they are raised, not where they are not.
            out += [(f"figures.{name}.{k}", _text(v)) for k, v in entry.items() if k not in _FIGURE_FIELDS and v]
    return out


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 400 else text[:400] + " …"


def _dl(pairs: Iterable[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs if v is not None) + "</dl>"


def _environment_pairs(env: Mapping[str, Any]) -> list[tuple[str, Any]]:
    cpu, py, os_ = env.get("cpu") or {}, env.get("python") or {}, env.get("os") or {}
    packages = env.get("packages") or {}
    ram = number(env.get("ram_bytes"))
    pairs: list[tuple[str, Any]] = [
        ("host", env.get("hostname")),
        ("os", os_.get("platform")),
        ("cpu", f"{cpu.get('model')} ({cpu.get('logical_cores')} logical cores, {cpu.get('available_cores')} usable)"),
        ("ram", None if ram is None else f"{ram / 2**30:.1f} GiB"),
        ("python", f"{py.get('implementation', '')} {py.get('version', '')}".strip()),
        ("lem packages", _text(packages.get("lem"))),
        ("libraries", _text({k: v for k, v in (packages.get("libraries") or {}).items() if v is not None})),
        ("cuda", _text(env.get("cuda"))),
    ]
    gpus = env.get("gpus")
    if gpus:
        pairs += [(f"gpu {i}", _text(g)) for i, g in enumerate(gpus)]
    else:
        pairs.append(("gpus", f"none recorded: {env.get('gpus_reason')}"))
    return pairs


def _environments(run: RunData) -> str:
    groups: dict[str, tuple[Mapping[str, Any], list[str]]] = {}
    for exp in run.experiments:
        if exp.environment is not None:
            key = json.dumps(exp.environment, sort_keys=True, default=str)
            groups.setdefault(key, (exp.environment, []))[1].append(exp.id)
    if not groups:
        return "<p class='na'>no environment.json was written</p>"
    parts = []
    for env, ids in groups.values():
        who = "all experiments" if len(groups) == 1 else ", ".join(ids)
        parts.append(f"<h3>{_e(who)}</h3>{_dl(_environment_pairs(env))}")
    return "".join(parts)


def _phase_text(phase: Any) -> str | None:
    """A load phase (an engine build): its time and, where measured, its energy."""
    seconds = number((phase or {}).get("duration_s"))
    if seconds is None:
        return None
    window = (phase or {}).get("energy_window") or {}
    energies = [number(d.get("energy_j")) for d in window.get("devices") or ()]
    known = [e for e in energies if e is not None]
    energy = f", {sum(known):.4g} J" if known and len(known) == len(energies) else ", energy not measured"
    return f"{seconds:.3g} s{energy}"


def _experiment(exp: ExperimentData) -> str:
    summary, setup = exp.summary or {}, exp.setup or {}
    prompts = summary.get("prompts") or setup.get("prompts") or {}
    load = summary.get("load") or setup.get("load") or {}
    doc = exp.summary or exp.failure or exp.setup or {}
    idle = number(summary.get("idle_power_w"))
    pairs: list[tuple[str, Any]] = [
        ("status", exp.status),
        ("key", summary.get("key")),
        ("backend", doc.get("backend")),
        ("model", doc.get("model")),
        ("sweep values", _text(doc.get("sweep_values") or {})),
        ("cycles", summary.get("cycles")),
        ("prompts", f"{prompts.get('count', '?')}: {prompts.get('description', '')}" if prompts else None),
        ("prompt-set digest", prompts.get("digest")),
        ("load", None if number(load.get("duration_s")) is None else f"{number(load.get('duration_s')):.3g} s"),
        *((f"load phase: {name}", _phase_text(phase)) for name, phase in (load.get("phases") or {}).items()),
        ("idle power", None if idle is None else f"{idle:.4g} W (summed over metered devices)"),
        *_labels(exp),
    ]
    parts = [f'<section class="exp" id="exp-{_e(exp.id)}"><h3>{_e(exp.id)}</h3>{_dl(pairs)}']
    if exp.failure is not None:
        parts.append(f'<p class="failed">failed: {_e(exp.failure.get("reason"))}</p>')
        if exp.failure.get("detail"):
            parts.append(f"<details><summary>traceback</summary><pre>{_e(exp.failure['detail'])}</pre></details>")
    if exp.config_toml is not None:
        parts.append(f"<details><summary>resolved config (experiment.toml)</summary><pre>{_e(exp.config_toml)}</pre>")
        parts.append("</details>")
    parts.append("</section>")
    return "".join(parts)


def _plots(run: RunData) -> tuple[str, int, list[str], bool]:
    if not plots.matplotlib_available():
        return f'<p class="note" id="no-plots">{_e(plots.INSTALL_HINT)}</p>', 0, [], False
    parts, skipped, drawn = [], [], 0
    for kind in plots.KINDS:
        shown = run
        if kind in PER_EXPERIMENT and len(run.experiments) > MAX_PER_EXPERIMENT:
            # One figure per experiment: a large sweep would make a page too big to open.
            shown = attrs.evolve(run, experiments=run.experiments[:MAX_PER_EXPERIMENT])
            rest = len(run.experiments) - MAX_PER_EXPERIMENT
            skipped.append(f"{kind}: {rest} more experiment(s) left out of the page; `lem results plot` draws all")
        try:
            made = plots.draw(kind, shown)
        except Exception as exc:  # a plot that fails must not cost the report
            made = [plots.Plot(kind, kind, skipped=f"could not be drawn: {type(exc).__name__}: {exc}")]
        figures = []
        for plot in made:
            if plot.skipped is not None:
                skipped.append(f"{plot.name}: {plot.skipped}")
                continue
            # A timeline holds every sample of every device: as a picture it stays small where SVG would not.
            fmt = "png" if kind == "timeline" else "svg"
            try:
                data = base64.b64encode(plots.render(plot, fmt)).decode("ascii")
            except Exception as exc:
                skipped.append(f"{plot.name}: could not be drawn: {type(exc).__name__}: {exc}")
                continue
            drawn += 1
            figures.append(
                f'<figure class="plot" data-name="{_e(plot.name)}"><img alt="{_e(plot.title)}" '
                f'src="data:image/{_MIME[fmt]};base64,{data}"><figcaption>{_e(plot.title)}</figcaption></figure>'
            )
        if figures:
            # Pareto panels are small and sit side by side; the others are wide and get a row each.
            grid = "plots" if kind == "pareto" else "plots single"
            parts.append(f'<h3>{_e(_KIND_TITLES[kind])}</h3><div class="{grid}">{"".join(figures)}</div>')
    if skipped:
        parts.append("<h3>not drawn</h3><ul>" + "".join(f"<li>{_e(s)}</li>" for s in skipped) + "</ul>")
    return "".join(parts), drawn, skipped, True


def render(run: RunData) -> tuple[str, int, list[str], bool]:
    """The report page of ``run``: ``(html, plots drawn, plots skipped with reasons, matplotlib available)``."""
    meta = run.run or {}
    run_id = meta.get("run_id") or run.path.name
    ok = sum(e.status == "ok" for e in run.experiments)
    plots_html, drawn, skipped, available = _plots(run)
    warns = warnings(run)
    warn_html = '<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul>" if warns else "<p>none</p>"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    body = [
        f"<h1>lem report: {_e(run_id)}</h1>",
        f'<p class="meta">source {_e(meta.get("source", "n/a"))} · lem {_e(meta.get("lem_version", "n/a"))} · '
        f"{len(run.experiments)} experiment(s), {ok} with results · written {_e(stamp)} by lem {_e(__version__)}</p>",
        "<h2>Summary</h2>",
        "<p><small>Each figure: the mean over cycles, below it the 95% confidence interval over cycles (Student t). "
        "n/a: not measured (each experiment's reasons are below). (estimate): the figure rests on an estimate, not a "
        "measurement; its footnote says on what. ⚠: flagged (an impossible CI bound, a negative energy in a cycle: "
        "hover for why).</small></p>",
        _summary_table(run),
        f"<h2>Warnings</h2>{warn_html}",
        f"<h2>Plots</h2>{plots_html}",
        "<h2>Experiments</h2>",
        *(_experiment(e) for e in run.experiments),
        f"<h2>Environment</h2>{_environments(run)}",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lem report {_e(run_id)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    return page, drawn, skipped, available


def write_report(run_dir: Path, out: Path | None = None) -> Report:
    """Write ``report.html`` for the run in ``run_dir`` (or to ``out``), atomically; returns what it holds."""
    page, drawn, skipped, available = render(read_run(run_dir))
    path = out if out is not None else run_dir / "report.html"
    write_atomic(path, page)
    return Report(path, drawn, tuple(skipped), available)
