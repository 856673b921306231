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
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from lem import __version__
from lem.errors import LemError
from lem.figures import marginal
from lem.figures.registry import ESTIMATE, FLAGGED, Figure, find, flags_of, in_view, method_of, uncertainty_text
from lem.results import plots
from lem.results.compare import significant
from lem.results.drilldown import (
    RunInfo,
    all_figures,
    anchors,
    boundary,
    config_text,
    differs,
    flat_config,
    grouped,
    run_info,
)
from lem.results.files import write_atomic
from lem.results.rundata import ExperimentData, RunData, ci, figure, label, mean, name_left_out, number, read_run

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
    "roofline": "Decode roofline",
    "quality": "Pareto fronts: energy against accuracy",
}
#: Plot kinds drawn once per experiment, and how many experiments' of them the page holds.
PER_EXPERIMENT = ("timeline", "cycles")
MAX_PER_EXPERIMENT = 12
#: Where each plot is also written as SVG and PNG at print size, next to the report.
PLOT_DIR = "plots"
_MIME = {"svg": "svg+xml", "png": "png"}
_FIGURE_FIELDS = {"n", "missing", "values", "mean", "std", "ci95_low", "ci95_high"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;
color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}table{border-collapse:collapse;margin:6px 0}
.wide{overflow-x:auto}#summary{font-size:12.5px}
table.fit{table-layout:fixed;width:100%}table.fit td,table.fit th{overflow-wrap:anywhere}
table.fit td.num{white-space:normal}.switch{font-size:12.5px}.switch label{margin:0 10px 0 2px}
#summary th:first-child{width:16%}#runs th:first-child,#differs th:first-child{width:22%}
.group{display:inline-block;vertical-align:top;margin:0 18px 8px 0;max-width:100%}
h4{font-size:13px;margin:10px 0 4px}table.small{font-size:12.5px}section.exp{border-top:1px solid #eee}
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


def _plain(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits in plain notation (``11070``, ``0.02442``), as compare prints
    (:func:`~lem.results.compare.significant`), less trailing zeros.

    Only a value too large or too small to read that way (FLOPs, 1e9 and above) keeps scientific notation.
    """
    if value and math.isfinite(value) and not 1e-4 <= abs(value) < 1e9:
        return format(value, f".{digits - 1}e")
    text = significant(value, digits)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _num(value: float | None) -> str:
    return "n/a" if value is None else _plain(value)


@attrs.frozen
class _Shown:
    """One experiment on the page: its data, its run and its unique anchor."""

    exp: ExperimentData
    run: RunInfo
    anchor: str

    @property
    def name(self) -> str:
        return f"{self.run.run_id}/{self.exp.id}"


def _shown(run: RunData) -> list[_Shown]:
    cache: dict[Path, Mapping[str, Any] | None] = {}
    infos = [run_info(e, cache) for e in run.experiments]
    return [_Shown(e, r, a) for e, r, a in zip(run.experiments, infos, anchors(run.experiments, infos), strict=True)]


def _cell(exp: ExperimentData, fig: Figure, notes: dict[str, int], group: str = "") -> str:
    """One figure's cell: mean, 95% CI below it, an estimate marker with its basis, a flag with its reasons.

    ``notes`` numbers each distinct estimate basis for the footnotes under the table.
    """
    name, scale = fig.name, fig.scale
    css = f"num fig g-{_slug(group)}" if group else "num"
    entry = figure(exp, name)
    m = mean(exp, name)
    if m is None:
        n = (entry or {}).get("n")
        why = "not measured" if n in (None, 0) else "unknown"
        return f'<td class="{css} na" title="{_e(name)}: {why}">n/a</td>'
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
    budget = uncertainty_text(summary, name)  # the energy figure's uncertainty budget (lem.figures.uncertainty)
    if budget:
        ci_text += f"; {budget}"
    return f'<td class="{css}">{_num(m * scale)}{mark}<br><small>{_e(ci_text)}</small></td>'


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _group_switch(groups: list[tuple[str, list[Figure]]]) -> tuple[str, str]:
    """Radio buttons that show one figure group of the summary at a time (CSS only), and their CSS."""
    names = ["all"] + [g for g, _ in groups]
    inputs = "".join(
        f'<input type="radio" name="figure-group" id="show-{_slug(g)}"{" checked" if g == "all" else ""}>'
        f'<label for="show-{_slug(g)}">{_e(g)}</label>'
        for g in names
    )
    css = "".join(
        f"#show-{_slug(g)}:checked~.wide .fig:not(.g-{_slug(g)}){{display:none}}" for g in names if g != "all"
    )
    return f'<span class="switch">figures shown: {inputs}', css


def _summary_table(run: RunData, shown: list[_Shown] | None = None) -> str:
    shown = _shown(run) if shown is None else shown
    groups = grouped(in_view("report"))
    several_runs = len({s.run.run_id for s in shown}) > 1
    head = "<th>experiment</th>" + ("<th>run</th>" if several_runs else "") + "<th>status, backend, model</th>"
    head += "<th>cycles</th>"
    head += "".join(
        f'<th class="fig g-{_slug(g)}" data-figure="{_e(f.name)}">{_e(f.title)}</th>'
        for g, figs in groups
        for f in figs
    )
    rows = []
    notes: dict[str, int] = {}
    for s in shown:
        exp = s.exp
        doc = exp.summary or exp.failure or exp.setup or {}
        status = f'<span class="failed">{_e(exp.status)}</span>' if exp.status == "failed" else _e(exp.status)
        cells = [f'<td><a href="#{_e(s.anchor)}">{_e(exp.id)}</a><br><small>{_e(label(exp))}</small></td>']
        if several_runs:
            cells.append(f'<td><a href="#run-{_e(_slug(s.run.run_id))}">{_e(s.run.run_id)}</a></td>')
        cells += [
            f"<td>{status}<br>{_e(doc.get('backend', 'n/a'))}<br><small>{_e(doc.get('model', 'n/a'))}</small></td>",
            f'<td class="num">{_e((exp.summary or {}).get("cycles", "n/a"))}</td>',
        ]
        cells += [_cell(exp, fig, notes, g) for g, figs in groups for fig in figs]
        rows.append(
            f'<tr class="experiment" data-id="{_e(exp.id)}" data-run="{_e(s.run.run_id)}" '
            f'data-anchor="{_e(s.anchor)}">{"".join(cells)}</tr>'
        )
    switch, switch_css = _group_switch(groups)
    table = f'<table id="summary" class="fit"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    footnotes = "".join(
        f'<li id="est-{k}">{_e(ESTIMATE)} rests on an estimate, not a measurement: {_e(basis)}</li>'
        for basis, k in notes.items()
    )
    fit = marginal.marginal_energy([s.exp.summary for s in shown if s.exp.summary])
    sweep = f'<p class="marginal">{_e(marginal.text(fit))}</p>' if len(shown) > 1 else ""
    return (
        f"<style>{switch_css}</style><div class='summary'>{switch}</span><div class=\"wide\">{table}</div></div>"
        + (f'<ol class="estimates">{footnotes}</ol>' if footnotes else "")
        + sweep
    )


def _link(anchor: str, text: str) -> str:
    return f'<a href="#{_e(anchor)}">{_e(text)}</a>'


def _runs_table(shown: list[_Shown]) -> str:
    """One row per run: its id, the file it ran from, the lem that ran it, its experiments."""
    runs: dict[str, tuple[RunInfo, list[_Shown]]] = {}
    for s in shown:
        runs.setdefault(s.run.run_id, (s.run, []))[1].append(s)
    rows = "".join(
        f'<tr id="run-{_e(_slug(info.run_id))}"><td>{_e(info.run_id)}</td><td>{_e(info.source or "not recorded")}</td>'
        f"<td>{_e(info.lem_version or 'not recorded')}</td>"
        f"<td>{', '.join(_link(s.anchor, s.exp.id) for s in exps)}</td></tr>"
        for info, exps in runs.values()
    )
    head = "<tr><th>run</th><th>source file</th><th>lem</th><th>experiments</th></tr>"
    return f'<table id="runs" class="fit"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _differs_table(shown: list[_Shown]) -> str:
    """The config keys whose values differ between the experiments shown, one column per experiment."""
    configs = [flat_config(s.exp) for s in shown]
    keys = differs(configs)
    if not keys:
        return "<p>every experiment shown has the same config</p>" if len(shown) > 1 else "<p>one experiment</p>"
    head = "<th>experiment</th>" + "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = "".join(
        f'<tr><td><a href="#{_e(s.anchor)}">{_e(s.name)}</a></td>'
        + "".join(f"<td>{_e(config_text(c.get(k)))}</td>" for k in keys)
        + "</tr>"
        for s, c in zip(shown, configs, strict=True)
    )
    return f'<table id="differs" class="fit"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def warnings(run: RunData) -> list[str]:
    """Every warning of the run: config, unreadable files (damaged cycle files and timelines too), failed
    experiments, each summary's, doubtful figures."""
    out = [f"config: {w}" for w in (run.run or {}).get("config_warnings") or ()]
    out += list(run.problems)
    for exp in run.experiments:
        out += list(exp.problems)
        name_left_out(exp, out)  # what the plots leave out, named as `lem results plot` names it
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
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
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
        # A meter records what it metered: a GPU, or (CodeCarbon) the CPU package and the RAM.
        pairs += [(_device_name(g, i), _text(g)) for i, g in enumerate(gpus)]
    else:
        pairs.append(("gpus", f"none recorded: {env.get('gpus_reason')}"))
    return pairs


def _device_name(device: Any, i: int) -> str:
    if not isinstance(device, Mapping):
        return f"device {i}"
    comp = device.get("component") or device.get("kind")
    index = device.get("index", device.get("device", i))
    if comp in (None, "gpu"):
        return f"gpu {index}"
    return f"metered {comp}"  # beside the host's own "cpu" and "ram" rows: say this one is what was metered


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


def _figure_rows(exp: ExperimentData, figs: list[Figure]) -> list[str]:
    rows = []
    summary = exp.summary or {}
    for fig in figs:
        m = mean(exp, fig.name)
        if m is None:
            continue
        band = ci(exp, fig.name)
        interval = "one cycle: no CI" if band is None else f"[{_fmt(fig, band[0])}, {_fmt(fig, band[1])}]"
        method = method_of(summary, fig.name)
        notes = [f"{ESTIMATE} {method.basis or ''}".strip()] if method.estimate else []
        notes += [f"{FLAGGED} {why}" for why in flags_of(summary, fig.name)]
        n = (figure(exp, fig.name) or {}).get("n")
        rows.append(
            f'<tr><td>{_e(fig.title)}</td><td class="num">{_e(_fmt(fig, m))}</td><td class="num">{_e(interval)}</td>'
            f'<td class="num">{_e(n)}</td><td><small>{_e("; ".join(notes))}</small></td></tr>'
        )
    return rows


def _fmt(fig: Figure, value: float) -> str:
    return _plain(value * fig.scale) if fig.spec == ".4g" else format(value * fig.scale, fig.spec)


def _small_table(title: str, rows: list[str], before: str = "") -> str:
    """One figure group of an experiment: ``before`` (the energy method and boundary), then its figures, if any."""
    head = "<tr><th>figure</th><th>mean</th><th>95% CI</th><th>cycles</th><th>notes</th></tr>"
    table = f'<table class="small">{head}{"".join(rows)}</table>' if rows else ""
    return f'<div class="group"><h4>{_e(title)}</h4>{before}{table}</div>'


def _workload(exp: ExperimentData) -> list[tuple[str, Any]]:
    summary, setup = exp.summary or {}, exp.setup or {}
    prompts = summary.get("prompts") or setup.get("prompts") or {}
    load = summary.get("load") or setup.get("load") or {}
    work = summary.get("workload") or {}
    idle = number(summary.get("idle_power_w"))

    def per_cycle(key: str) -> str | None:
        values = work.get(key)
        if not isinstance(values, list) or not values:
            return None
        distinct = sorted(set(values), key=str)
        return f"{distinct[0]} per cycle" if len(distinct) == 1 else f"{', '.join(map(str, values))} (per cycle)"

    return [
        ("prompts", f"{prompts.get('count', '?')}: {prompts.get('description', '')}" if prompts else None),
        ("prompt-set digest", prompts.get("digest")),
        ("requests", per_cycle("requests")),
        ("input tokens", per_cycle("input_tokens")),
        ("output tokens", per_cycle("output_tokens")),
        ("passes over the prompts", per_cycle("passes")),
        ("cycles", summary.get("cycles")),
        ("load", None if number(load.get("duration_s")) is None else f"{number(load.get('duration_s')):.3g} s"),
        *((f"load phase: {name}", _phase_text(phase)) for name, phase in (load.get("phases") or {}).items()),
        ("idle power", None if idle is None else f"{idle:.4g} W (summed over metered devices)"),
    ]


def _state(title: str, value: Any) -> str:
    """A small block (precision, thermal) of the summary, as a definition list; ``not recorded`` when null."""
    if isinstance(value, Mapping):
        body = _dl((str(k), _text(v)) for k, v in value.items())
    else:
        body = f"<p class='na'>{_e('not recorded' if value is None else _text(value))}</p>"
    return f'<div class="group"><h4>{_e(title)}</h4>{body}</div>'


def _experiment(s: _Shown, plots_html: str = "") -> str:
    exp = s.exp
    summary = exp.summary or {}
    doc = exp.summary or exp.failure or exp.setup or {}
    ident: list[tuple[str, Any]] = [
        ("run", s.run.run_id),
        ("status", exp.status),
        ("key", summary.get("key")),
        ("backend", doc.get("backend")),
        ("model", doc.get("model")),
        ("sweep values", _text(doc.get("sweep_values") or {})),
    ]
    parts = [
        f'<section class="exp" id="{_e(s.anchor)}" data-key="{_e(s.name)}"><h3>{_e(s.name)}</h3>{_dl(ident)}',
    ]
    if exp.failure is not None:
        parts.append(f'<p class="failed">failed: {_e(_first_line(exp.failure.get("reason")))}</p>')
    parts.append(f'<div class="group"><h4>workload</h4>{_dl(_workload(exp))}</div>')
    if exp.summary is not None:
        for group, figs in grouped(all_figures()):
            rows = _figure_rows(exp, figs)
            before = ""
            if group == "energy":
                methods = summary.get("methods") or {}
                where = boundary(exp)
                before = _dl(
                    [
                        ("method", methods.get("energy") if isinstance(methods, Mapping) else None),
                        ("boundary", where or "no device metered"),
                        ("estimate basis", methods.get("energy_basis") if isinstance(methods, Mapping) else None),
                        ("not measured", summary.get("energy_reason")),
                    ]
                )
            if rows or before:
                parts.append(_small_table(group, rows, before))
        parts.append(_state("precision", summary.get("precision")))
        parts.append(_state("thermal state", summary.get("thermal")))
    parts.append(plots_html)
    parts.append(f"<details><summary>raw details</summary>{_dl(_labels(exp))}")
    if exp.failure is not None and exp.failure.get("reason"):
        parts.append(f"<p>full reason:</p><pre>{_e(exp.failure.get('reason'))}</pre>")
    if exp.failure is not None and exp.failure.get("detail"):
        parts.append(f"<details><summary>traceback</summary><pre>{_e(exp.failure['detail'])}</pre></details>")
    if exp.config_toml is not None:
        parts.append(f"<details><summary>resolved config (experiment.toml)</summary><pre>{_e(exp.config_toml)}</pre>")
        parts.append("</details>")
    parts.append("</details></section>")
    return "".join(parts)


def _first_line(text: Any) -> str:
    line = str(text or "").strip().splitlines()[0] if str(text or "").strip() else ""
    return line if len(line) <= 200 else line[:200] + " …"


def _figure_html(plot: plots.Plot, fmt: str, saved: dict[str, list[Path]]) -> str:
    data = base64.b64encode(plots.render(plot, fmt)).decode("ascii")
    files = "".join(
        f' <a href="{_e(p.parent.name)}/{_e(p.name)}">{_e(p.suffix[1:])}</a>' for p in saved.get(plot.name, ())
    )
    return (
        f'<figure class="plot" data-name="{_e(plot.name)}"><img alt="{_e(plot.title)}" '
        f'src="data:image/{_MIME[fmt]};base64,{data}"><figcaption>{_e(plot.title)}'
        f"{' · print size:' + files if files else ''}</figcaption></figure>"
    )


@attrs.define
class _Drawn:
    """The plots of a page as they are drawn: how many, which were skipped and why, where files went."""

    plot_dir: Path | None
    drawn: int = 0
    skipped: list[str] = attrs.Factory(list)
    saved: dict[str, list[Path]] = attrs.Factory(dict)

    def html(self, made: list[plots.Plot], kind: str) -> list[str]:
        out = []
        for plot in made:
            if plot.skipped is not None:
                self.skipped.append(f"{plot.name}: {plot.skipped}")
                continue
            # A timeline holds every sample of every device: as a picture it stays small where SVG would not.
            fmt = "png" if kind == "timeline" else "svg"
            try:
                if self.plot_dir is not None:
                    self.saved[plot.name] = plots.save(plot, self.plot_dir, ("svg", "png"), dpi=plots.PRINT_DPI)
                out.append(_figure_html(plot, fmt, self.saved))
            except Exception as exc:
                self.skipped.append(f"{plot.name}: could not be drawn: {_why_not_drawn(exc, kind)}")
                continue
            self.drawn += 1
        return out


def _draw(kind: str, run: RunData) -> list[plots.Plot]:
    try:
        return plots.draw(kind, run)
    except Exception as exc:  # a plot that fails must not cost the report
        return [plots.Plot(kind, kind, skipped=f"could not be drawn: {_why_not_drawn(exc, kind)}")]


def _why_not_drawn(exc: Exception, kind: str) -> str:
    """Why a plot failed, in words a reader of the report can act on (a Python error's name is not)."""
    if isinstance(exc, LemError):  # a file that cannot be written, a damaged input: its own line says
        return str(exc)
    if isinstance(exc, OverflowError | ValueError | ZeroDivisionError):
        return "a value in the results is beyond what the plot can show (a damaged or absurd raw value)"
    return f"drawing it failed unexpectedly ({exc}); `lem results plot RUN --kind {kind}` draws it alone"


def _plots(run: RunData, shown: list[_Shown], drawn: _Drawn) -> tuple[str, dict[str, str]]:
    """The plots across experiments (Pareto fronts, CDFs), and each experiment's own plots by anchor."""
    if not plots.matplotlib_available():
        return f'<p class="note" id="no-plots">{_e(plots.INSTALL_HINT)}</p>', {}
    parts = []
    for kind in plots.KINDS:
        if kind in PER_EXPERIMENT:
            continue
        figures = drawn.html(_draw(kind, run), kind)
        if figures:
            # Pareto panels are small and sit side by side; the others are wide and get a row each.
            grid = "plots" if kind in ("pareto", "quality") else "plots single"
            parts.append(f'<h3>{_e(_KIND_TITLES[kind])}</h3><div class="{grid}">{"".join(figures)}</div>')
    own: dict[str, str] = {}
    for i, s in enumerate(shown):
        if i >= MAX_PER_EXPERIMENT:
            continue  # one figure per experiment: a large sweep would make a page too big to open
        one = attrs.evolve(run, experiments=(s.exp,))
        figures = []
        for kind in PER_EXPERIMENT:
            made = [p for p in _draw(kind, one) if p.skipped is None or p.name != kind]
            if len({x.run.run_id for x in shown}) > 1:  # the same experiment id recurs across runs
                made = [attrs.evolve(p, name=f"{_slug(s.run.run_id)}-{p.name}") for p in made]
            figures += drawn.html(made, kind)
        if figures:
            own[s.anchor] = f'<div class="plots single">{"".join(figures)}</div>'
    rest = len(shown) - MAX_PER_EXPERIMENT
    if rest > 0:
        for kind in PER_EXPERIMENT:
            drawn.skipped.append(
                f"{kind}: {rest} more experiment(s) left out of the page; `lem results plot` draws all"
            )
    if drawn.skipped:
        parts.append("<h3>not drawn</h3><ul>" + "".join(f"<li>{_e(s)}</li>" for s in drawn.skipped) + "</ul>")
    return "".join(parts), own


def render(run: RunData, plot_dir: Path | None = None) -> tuple[str, int, list[str], bool]:
    """The report page of ``run``: ``(html, plots drawn, plots skipped with reasons, matplotlib available)``.

    ``plot_dir``: where each plot is also written as SVG and PNG at print size (none when ``None``).
    """
    meta = run.run or {}
    shown = _shown(run)
    run_ids = list(dict.fromkeys(s.run.run_id for s in shown))
    drawn = _Drawn(plot_dir)
    plots_html, own = _plots(run, shown, drawn)
    available = plots.matplotlib_available()
    ok = sum(e.status == "ok" for e in run.experiments)
    warns = warnings(run)
    warn_html = '<ul class="warn">' + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul>" if warns else "<p>none</p>"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    if meta:
        title = str(meta.get("run_id") or run.path.name)
        origin = f"source {_e(meta.get('source', 'not recorded'))} · lem {_e(meta.get('lem_version', 'not recorded'))}"
    else:
        title = f"{run.path.name} ({len(run_ids)} run{'s' if len(run_ids) != 1 else ''})"
        origin = "results directory: each run's source file and lem version are in the runs table"
    body = [
        f"<h1>lem report: {_e(title)}</h1>",
        f'<p class="meta">{origin} · {len(run.experiments)} experiment(s), {ok} with results · '
        f"written {_e(stamp)} by lem {_e(__version__)}</p>",
        *([f"<h2>Runs</h2>{_runs_table(shown)}"] if not meta or len(run_ids) > 1 else []),
        "<h2>Summary</h2>",
        "<p><small>Each figure: the mean over cycles, below it the 95% confidence interval over cycles (Student t). "
        "n/a: not measured (each experiment's reasons are below). (estimate): the figure rests on an estimate, not a "
        "measurement; its footnote says on what. ⚠: flagged (an impossible CI bound, a negative energy in a cycle: "
        "hover for why).</small></p>",
        _summary_table(run, shown),
        f"<h2>What differs</h2>{_differs_table(shown)}",
        f"<h2>Warnings</h2>{warn_html}",
        f"<h2>Plots</h2>{plots_html}",
        "<h2>Experiments</h2>",
        *(_experiment(s, own.get(s.anchor, "")) for s in shown),
        f"<h2>Environment</h2>{_environments(run)}",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lem report {_e(title)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    return page, drawn.drawn, drawn.skipped, available


def write_report(run_dir: Path, out: Path | None = None) -> Report:
    """Write ``report.html`` for the run in ``run_dir`` (or to ``out``), atomically; returns what it holds."""
    path = out if out is not None else run_dir / "report.html"
    page, drawn, skipped, available = render(read_run(run_dir), path.parent / PLOT_DIR)
    write_atomic(path, page)
    return Report(path, drawn, tuple(skipped), available)
