"""Plots of a run with matplotlib (the ``plots`` extra): Pareto fronts (energy against speed and against
accuracy), power timelines, cycles, latency CDFs, the decode roofline.

Each ``draw_*`` function returns :class:`Plot` records: a matplotlib figure, or
the reason it was not drawn. A figure that would be empty or misleading (no
energy measured, a Pareto "front" of one experiment, one cycle with no
interval) is skipped with that reason instead. Figures are built with
``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot: no
global state, no display, nothing left open.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.errors import LemError
from lem.figures import registry
from lem.figures.requests import request_metrics
from lem.results.files import traces_from_json, write_atomic
from lem.results.rundata import (
    ExperimentData,
    RunData,
    ci,
    cycles,
    energy_reason,
    figure,
    label,
    mean,
    name_left_out,
    number,
    timelines,
)

KINDS = ("pareto", "quality", "timeline", "cycles", "cdf", "roofline")
#: Resolution of a plot shown on screen (the report's pictures) and of one written for print.
SCREEN_DPI = 110
PRINT_DPI = 300
INSTALL_HINT = "plots need matplotlib: pip install 'lem-core[plots]'"

#: The Pareto fronts' y axis; their x axes are the other figures of the registry's ``pareto`` view.
PARETO_Y = "energy.j_per_output_token"
#: Timeline columns drawn (when the meter sampled them): column, axis label.
TIMELINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("power_w", "power (W)"),
    ("temperature_c", "temperature (°C)"),
    ("sm_clock_mhz", "SM clock (MHz)"),
)
LATENCIES: tuple[tuple[str, str], ...] = (("ttft_s", "TTFT"), ("itl_s", "ITL"), ("tpot_s", "TPOT"), ("e2e_s", "E2E"))


@attrs.frozen
class Plot:
    """One figure (``figure``), or why it was not drawn (``skipped``); ``name`` is its file stem."""

    name: str
    title: str
    figure: Any = None
    skipped: str | None = None


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (the ``plots`` extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _ok(run: RunData) -> list[ExperimentData]:
    return [e for e in run.experiments if e.status == "ok"]


def _known(exp: ExperimentData, name: str) -> float:
    value = mean(exp, name)
    assert value is not None  # callers filter on it first
    return value


def _estimated(fig: registry.Figure, exps: Sequence[ExperimentData]) -> list[registry.Method]:
    """The methods of ``fig`` in those of ``exps`` where it rests on an estimate."""
    methods = [registry.method_of(e.summary or {}, fig.name) for e in exps]
    return [m for m in methods if m.estimate]


def _axis_label(fig: registry.Figure, exps: Sequence[ExperimentData]) -> str:
    """The figure's title, marked ``(estimate)`` when its value rests on an estimate in any of ``exps``."""
    return f"{fig.title} {registry.ESTIMATE}" if _estimated(fig, exps) else fig.title


def _estimate_notes(figs: Sequence[registry.Figure], exps: Sequence[ExperimentData]) -> list[str]:
    """One line per estimated figure: what its estimate rests on."""
    lines = []
    for fig in figs:
        bases = sorted({m.basis or "the result does not record its basis" for m in _estimated(fig, exps)})
        if bases:
            lines.append(f"{fig.title} {registry.ESTIMATE}: rests on {' | '.join(bases)}")
    return lines


def pareto_front(points: Sequence[tuple[float, float]], x_larger_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y: smaller is better), in order of x."""
    sign = -1.0 if x_larger_better else 1.0

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        ax, bx = sign * a[0], sign * b[0]
        return ax <= bx and a[1] <= b[1] and (ax < bx or a[1] < b[1])

    front = [i for i, p in enumerate(points) if not any(beats(q, p) for j, q in enumerate(points) if j != i)]
    return sorted(front, key=lambda i: points[i][0])


def point_label(exp: ExperimentData, runs: int = 2) -> str:
    """A point's legend entry: backend, run (when several are shown) and sweep values (or the experiment id)."""
    doc = exp.summary or exp.failure or exp.setup or {}
    parts = [str(doc.get("backend") or "?")]
    if runs > 1:
        parts.append(str(doc.get("run_id") or exp.path.parent.name))
    parts.append(label(exp))
    return " · ".join(parts)


def clipped(fig: registry.Figure, band: tuple[float, float] | None) -> tuple[float, float] | None:
    """A 95% interval cut to the figure's possible range: a figure that cannot be negative stops at 0."""
    if band is None or fig.may_be_negative:
        return band
    return max(band[0], 0.0), max(band[1], 0.0)


def _limits(
    values: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    floor: float | None,
    ceiling: float | None = None,
) -> tuple[float, float]:
    """Axis limits holding every point and interval, never below ``floor`` (0 for a figure that cannot be negative)
    nor above ``ceiling`` (100% for a fraction)."""
    lo, hi = min([*values, *lows]), max([*values, *highs])
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    low, high = lo - pad, hi + pad
    return (max(low, floor) if floor is not None else low), (min(high, ceiling) if ceiling is not None else high)


_MARKERS = "osD^v<>pPX*h"


def _ok_pair(exps: Sequence[ExperimentData], y_name: str, what: str) -> tuple[list[ExperimentData], Plot | None]:
    """The experiments with results and ``y_name`` known, or the skipped plot saying why there are too few."""
    if len(exps) < 2:
        why = f"a Pareto front needs at least 2 experiments with results; this run has {len(exps)}"
        return [], Plot(what, "Pareto fronts", skipped=why)
    known = [e for e in exps if mean(e, y_name) is not None]
    if len(known) < 2:
        reason = energy_reason(exps) or f"no experiment has {registry.figure(y_name).label}"
        return [], Plot(what, "Pareto fronts", skipped=f"needs energy measured in 2+ experiments ({reason})")
    return known, None


def _pareto_figure(
    name: str,
    x_fig: registry.Figure,
    y_fig: registry.Figure,
    shown: Sequence[ExperimentData],
    exps: Sequence[ExperimentData],
    interval: Callable[[ExperimentData, registry.Figure], tuple[float, float] | None],
    notes: Sequence[str] = (),
    x_ceiling: float | None = None,
) -> Plot:
    """One Pareto figure of ``y_fig`` (smaller is better) against ``x_fig`` over ``shown``.

    Every point has its own legend entry (backend, run, sweep values); ``interval`` gives each point's 95%
    interval of a figure (unscaled), drawn as bars and held inside the axes; the front is drawn; the
    experiments of ``exps`` not in ``shown`` are named as left out; ``x_ceiling``: the x axis's upper bound
    (scaled) for a figure that cannot exceed one.
    """
    x_name, larger = x_fig.name, bool(x_fig.larger_is_better)
    title = f"{y_fig.title} vs {x_fig.title}"
    runs = len({(e.summary or {}).get("run_id") or e.path.parent.name for e in exps})
    methods = sorted({str((e.summary or {}).get("methods", {}).get("energy")) for e in shown})
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot()
    sx, sy = x_fig.scale, y_fig.scale
    pts = [(_known(e, x_name) * sx, _known(e, y_fig.name) * sy) for e in shown]
    front = pareto_front(pts, larger)
    xs_lo, xs_hi, ys_lo, ys_hi = [], [], [], []
    for i, (e, (x, y)) in enumerate(zip(shown, pts, strict=True)):
        xci, yci = interval(e, x_fig), interval(e, y_fig)
        xerr = yerr = None
        if xci is not None:
            lo, hi = xci[0] * sx, xci[1] * sx
            xs_lo.append(lo)
            xs_hi.append(hi)
            xerr = [[max(x - lo, 0.0)], [max(hi - x, 0.0)]]
        if yci is not None:
            lo, hi = yci[0] * sy, yci[1] * sy
            ys_lo.append(lo)
            ys_hi.append(hi)
            yerr = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]
        on = i in front
        ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt=_MARKERS[i % len(_MARKERS)],
            ms=8 if on else 6,
            capsize=3,
            color=f"C{i % 10}",
            mec="black" if on else f"C{i % 10}",
            mew=1.6 if on else 1.0,
            ecolor="0.6",
            label=point_label(e, runs) + ("  (on the front)" if on else ""),
        )
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="0.2", lw=1.2, label="Pareto front")
    x_floor = None if x_fig.may_be_negative else 0.0
    ax.set_xlim(*_limits([p[0] for p in pts], xs_lo, xs_hi, x_floor, x_ceiling))
    ax.set_ylim(*_limits([p[1] for p in pts], ys_lo, ys_hi, None if y_fig.may_be_negative else 0.0))
    ax.set_xlabel(_axis_label(x_fig, shown) + ("  (better →)" if larger else "  (← better)"))
    ax.set_ylabel(_axis_label(y_fig, shown) + "  (↓ better)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    missing = [point_label(e, runs) for e in exps if e not in shown]
    note = f"energy method: {', '.join(methods)}; bars: 95% CI over cycles where known"
    note += "" if x_fig.may_be_negative and y_fig.may_be_negative else ", cut at 0 where it reaches below"
    note += "".join(f"; {line}" for line in notes)
    note += f"; left out (not measured): {', '.join(missing)}" if missing else ""
    note += "".join(f"; {line}" for line in _estimate_notes((x_fig, y_fig), shown))
    fig.supxlabel(note, fontsize=7, color="0.35", wrap=True)
    return Plot(name, title, fig)


def _cycle_interval(exp: ExperimentData, fig: registry.Figure) -> tuple[float, float] | None:
    return clipped(fig, ci(exp, fig.name))


def draw_pareto(run: RunData) -> list[Plot]:
    """J per output token against throughput and against TTFT / TPOT p50 and p99, one figure per axis.

    Every point has its own legend entry (backend, run, sweep values), intervals are clipped to the
    possible range (with the axis), the front is drawn, and experiments without energy are left out and named.
    """
    exps = _ok(run)
    y_fig = registry.figure(PARETO_Y)
    with_energy, skipped = _ok_pair(exps, PARETO_Y, "pareto")
    if skipped is not None:
        return [skipped]
    out = []
    for x_fig in registry.in_view("pareto"):
        if x_fig.name == PARETO_Y:
            continue
        name = f"pareto-{x_fig.name.replace('.', '-')}"
        shown = [e for e in with_energy if mean(e, x_fig.name) is not None]
        if len(shown) < 2:
            title = f"{y_fig.title} vs {x_fig.title}"
            out.append(Plot(name, title, skipped=f"{x_fig.name} is known for {len(shown)} experiment(s); 2+ needed"))
            continue
        out.append(_pareto_figure(name, x_fig, y_fig, shown, exps, _cycle_interval))
    return out


# --- accuracy against energy (issue 27) -----------------------------------------------------------------

#: The quality Pareto fronts' x axis; their y axes are the energy figures of the registry's ``quality_pareto`` view.
QUALITY_X = "quality.accuracy"


def _accuracy_interval(exp: ExperimentData, fig: registry.Figure) -> tuple[float, float] | None:
    """Accuracy's Wilson 95% interval over the prompts (the summary's ``quality``); other figures' over cycles.

    Greedy decoding repeats each answer every cycle, so the prompts, not the cycles, are accuracy's
    uncertainty (lem.figures.quality). A fraction: the interval is held within [0, 1].
    """
    if fig.name != QUALITY_X:
        return _cycle_interval(exp, fig)
    q = (exp.summary or {}).get("quality") or {}
    low, high = number(q.get("wilson95_low")), number(q.get("wilson95_high"))
    band = (low, high) if low is not None and high is not None else ci(exp, fig.name)
    return None if band is None else (min(max(band[0], 0.0), 1.0), min(max(band[1], 0.0), 1.0))


def draw_quality(run: RunData) -> list[Plot]:
    """Energy per output token and per correct answer against accuracy (``[quality]``), one figure each.

    The Pareto code of :func:`draw_pareto`: a legend entry per point, the front, intervals clipped (accuracy's
    the Wilson interval over the prompts); experiments without a score or energy are left out and named.
    """
    exps = _ok(run)
    x_fig = registry.figure(QUALITY_X)
    scored = [e for e in exps if mean(e, QUALITY_X) is not None]
    if len(scored) < 2:
        reasons = sorted(
            {str(((e.summary or {}).get("quality") or {}).get("reason") or "no accuracy") for e in exps} - {"None"}
        )
        why = f"accuracy is known for {len(scored)} experiment(s); 2+ needed ({'; '.join(reasons) or 'none ran'})"
        return [Plot("quality", "accuracy against energy", skipped=why)]
    out = []
    for y_fig in registry.in_view("quality_pareto"):
        if y_fig.name == QUALITY_X:
            continue
        name = f"quality-{y_fig.name.replace('.', '-')}"
        shown, skipped = _ok_pair(scored, y_fig.name, name)
        if skipped is not None:
            out.append(attrs.evolve(skipped, title=f"{y_fig.title} vs {x_fig.title}"))
            continue
        notes = ["accuracy bars: Wilson 95% interval over the prompts"]
        out.append(_pareto_figure(name, x_fig, y_fig, shown, exps, _accuracy_interval, notes, x_fig.scale))
    return out


def _timeline_plot(exp: ExperimentData) -> Plot:
    name, title = f"timeline-{exp.id}", f"{label(exp)}: power, temperature and clock per cycle"
    tls = timelines(exp)
    if not tls:
        reason = energy_reason([exp]) or "the meter recorded no samples"
        return Plot(name, title, skipped=f"no timeline-NNN.csv files ({reason})")
    columns = [
        (c, lab) for c, lab in TIMELINE_COLUMNS if any(number(r.get(c)) is not None for _, rs in tls for r in rs)
    ]
    if not columns:
        return Plot(name, title, skipped="the timeline files have no power, temperature or clock column")
    # A cycle file whose number is damaged (null, text) is left out of the window shading, not fatal.
    docs = {int(n): d for d in cycles(exp) if (n := number(d.get("cycle"))) is not None and n.is_integer()}
    devices = sorted({r.get("device", "") for _, rs in tls for r in rs})
    fig = _figure(9.0, 1.2 + 2.0 * len(columns))
    axes = fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    offset, gap, drew_idle = 0.0, 0.0, False
    spans = []
    for c, rows in tls:
        doc = docs.get(c, {})
        ts = [number(r.get("t_s")) or 0.0 for r in rows]
        window = number((doc.get("energy_window") or {}).get("duration_s")) or number(
            (doc.get("window") or {}).get("duration_s")
        )
        dur = window if window is not None else (max(ts) if ts else 0.0)
        gap = gap or max(dur * 0.08, 0.05)
        spans.append((c, offset, offset + dur))
        for k, (col, _) in enumerate(columns):
            for i, dev in enumerate(devices):
                pts = [
                    (offset + t, number(r.get(col))) for t, r in zip(ts, rows, strict=True) if r.get("device") == dev
                ]
                pts = [(t, v) for t, v in pts if v is not None]
                if pts:
                    marker = "o" if len(pts) < 20 else None
                    lab = f"device {dev}" if c == tls[0][0] else None
                    axes[k].plot(*zip(*pts, strict=True), color=f"C{i}", marker=marker, ms=3, lw=1, label=lab)
        idle = {
            str(d.get("device")): number(d.get("idle_power_w")) for d in (doc.get("energy") or {}).get("devices") or ()
        }
        for i, dev in enumerate(devices):
            if idle.get(dev) is not None and columns[0][0] == "power_w":
                drew_idle = True
                lab = "idle baseline" if c == tls[0][0] and i == 0 else None
                axes[0].hlines(idle[dev], offset, offset + dur, colors=f"C{i}", linestyles="--", lw=1, label=lab)
        offset += dur + gap
    for ax in axes:
        for _, a, b in spans:
            ax.axvspan(a, b, color="0.5", alpha=0.12, lw=0)
        ax.grid(alpha=0.3)
    for (_, lab), ax in zip(columns, axes, strict=True):
        ax.set_ylabel(lab)
    for c, a, b in spans:
        axes[0].text((a + b) / 2, 1.01, f"cycle {c}", transform=axes[0].get_xaxis_transform(), ha="center", fontsize=8)
    if columns[0][0] == "power_w" and not drew_idle:
        axes[0].text(0.01, 0.02, "no idle baseline measured", transform=axes[0].transAxes, fontsize=8, color="0.35")
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("time in the measured windows (s); shaded: each cycle's window, laid end to end")
    fig.suptitle(title, fontsize=10)
    return Plot(name, title, fig)


def draw_timeline(run: RunData) -> list[Plot]:
    """Power (and temperature, SM clock) over time, one figure per experiment, every cycle's window shaded."""
    exps = [e for e in run.experiments if e.status in ("ok", "incomplete")]
    if not exps:
        return [Plot("timeline", "timelines", skipped="no experiment has measured cycles")]
    return _unique([_timeline_plot(e) for e in exps], exps)


def _unique(made: list[Plot], exps: Sequence[ExperimentData]) -> list[Plot]:
    """Per-experiment plots named by run too where an experiment id recurs (several runs of one sweep)."""
    if len({e.id for e in exps}) == len(exps):
        return made
    return [attrs.evolve(p, name=f"{e.path.parent.name}-{p.name}") for p, e in zip(made, exps, strict=True)]


def _cycles_plot(exp: ExperimentData) -> Plot:
    name, title = f"cycles-{exp.id}", f"{label(exp)}: figures per cycle, mean and 95% CI"
    n = int((exp.summary or {}).get("cycles") or 0)
    if n < 2:
        return Plot(name, title, skipped=f"{n} cycle(s): no confidence interval to draw (run at least 2 cycles)")
    shown = [f for f in registry.in_view("cycles_plot") if (figure(exp, f.name) or {}).get("n")]
    if not shown:
        return Plot(name, title, skipped="no figure of the summary has per-cycle values")
    fig = _figure(9.0, 2.6 * math.ceil(len(shown) / 3))
    axes = fig.subplots(math.ceil(len(shown) / 3), 3, squeeze=False).ravel()
    for ax, fig_row in zip(axes, shown, strict=False):
        f, s = fig_row.name, fig_row.scale
        entry = figure(exp, f) or {}
        values = [number(v) for v in entry.get("values") or ()]
        pts = [(i + 1, v * s) for i, v in enumerate(values) if v is not None]
        ax.plot(*zip(*pts, strict=True), "o", color="C0")
        m, band = mean(exp, f), ci(exp, f)
        if m is not None:
            ax.axhline(m * s, color="C3", lw=1, label="mean")
        if band is not None:
            ax.axhspan(band[0] * s, band[1] * s, color="C3", alpha=0.15, lw=0, label="95% CI")
        flagged = registry.flags_of(exp.summary or {}, f)
        ax.set_title(_axis_label(fig_row, [exp]) + (f" ⚠ {registry.FLAGGED}" if flagged else ""), fontsize=9)
        ax.set_xlabel("cycle", fontsize=8)
        ax.set_xticks(range(1, len(values) + 1))
        ax.grid(alpha=0.3)
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    notes = _estimate_notes(shown, [exp])
    notes += [
        f"{registry.FLAGGED} {f.title}: {why}" for f in shown for why in registry.flags_of(exp.summary or {}, f.name)
    ]
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=7, color="0.35", wrap=True)
    fig.suptitle(title, fontsize=10)
    return Plot(name, title, fig)


def draw_cycles(run: RunData) -> list[Plot]:
    """Per-cycle values of the headline figures with their mean and 95% CI band, one figure per experiment."""
    exps = _ok(run)
    if not exps:
        return [Plot("cycles", "cycles", skipped="no experiment has a summary")]
    return _unique([_cycles_plot(e) for e in exps], exps)


def _latencies(exp: ExperimentData) -> dict[str, list[float]]:

    out: dict[str, list[float]] = {k: [] for k, _ in LATENCIES}
    for doc in cycles(exp):
        try:
            per_request = [request_metrics(t) for t in traces_from_json(doc.get("requests") or ())]
        except (KeyError, TypeError, ValueError):
            continue
        for r in per_request:
            for k in ("ttft_s", "tpot_s", "e2e_s"):
                if r.get(k) is not None:
                    out[k].append(float(r[k]))
            out["itl_s"] += [float(x) for x in r.get("itl_s") or ()]
    for k in ("itl_s", "tpot_s"):
        # A backend that could not stream (beam search) has no ITL or TPOT: its summary says so with null.
        entry = figure(exp, f"{k}.p50")
        if entry is not None and not entry.get("n"):
            out[k] = []
    return out


def draw_cdf(run: RunData) -> list[Plot]:
    """Latency CDFs (TTFT, ITL, TPOT, E2E) from the raw cycle files, one line per experiment."""
    exps = [e for e in run.experiments if e.status in ("ok", "incomplete")]
    data = [(e, _latencies(e)) for e in exps]
    panels = [(k, lab) for k, lab in LATENCIES if any(d[k] for _, d in data)]
    if not panels:
        return [Plot("cdf", "latency CDFs", skipped="no request latencies in the cycle files")]
    fig = _figure(min(4.0 * len(panels), 14.0), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (k, lab) in zip(axes, panels, strict=True):
        for i, (e, d) in enumerate(data):
            xs = sorted(v * 1e3 for v in d[k])
            if xs:
                ys = [0.0] + [(j + 1) / len(xs) for j in range(len(xs))]
                ax.step([xs[0], *xs], ys, where="post", color=f"C{i % 10}", label=f"{label(e)} (n={len(xs)})")
        ax.set_title(lab, fontsize=10)
        ax.set_xlabel(f"{lab} (ms)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests (ITL: of tokens)")
    axes[0].legend(fontsize=7)
    fig.suptitle("latency CDFs over every request of every cycle", fontsize=10)
    return [Plot("cdf", "latency CDFs", fig)]


DRAW: dict[str, Callable[[RunData], list[Plot]]] = {
    "pareto": draw_pareto,
    "quality": draw_quality,
    "timeline": draw_timeline,
    "cycles": draw_cycles,
    "cdf": draw_cdf,
    "roofline": lambda run: draw_roofline(run),
}


def draw(kind: str, run: RunData) -> list[Plot]:
    """The plots of one kind; :class:`LemError` when matplotlib is missing or the kind is unknown."""
    if kind not in DRAW:
        raise LemError(f"--kind {kind}: unknown plot kind; choose one of {', '.join(KINDS)}")
    if not matplotlib_available():
        raise LemError(INSTALL_HINT)
    return DRAW[kind](run)


def render(plot: Plot, fmt: str, dpi: int = SCREEN_DPI) -> bytes:
    """The figure as ``png`` or ``svg`` bytes (SVG text as paths: no fonts needed to show it)."""
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else {}
    plot.figure.savefig(buf, format=fmt, dpi=dpi, metadata=meta)
    return buf.getvalue()


#: What to do when the plots' destination is full.
AGAIN = "nothing partial was left: free some space, or choose another --out, then try again"


def save(plot: Plot, out_dir: Path, formats: Sequence[str] = ("png",), dpi: int = PRINT_DPI) -> list[Path]:
    """Write the figure to ``out_dir/<name>.<fmt>`` for each format (PNG at ``dpi``); returns the paths.

    Each file is rendered first, then written atomically (:func:`lem.results.files.write_atomic`): an
    unwritable or full destination is one :class:`~lem.errors.ResultsError` line and leaves no empty
    or partial file.
    """
    paths = []
    for fmt in formats:
        path = out_dir / f"{plot.name}.{fmt}"
        write_atomic(path, render(plot, fmt, dpi), AGAIN)
        paths.append(path)
    return paths


def damaged_inputs(run: RunData) -> list[str]:
    """One line per damaged file the plots of ``run`` read (summaries, cycle files, timelines), naming it.

    The plots leave what such a file gave out and draw the rest (a damaged summary's experiment is
    ``damaged``, not ``ok``); these lines say what was left out and why.
    """
    lines = list(run.problems)
    for exp in run.experiments:
        lines += exp.problems
        name_left_out(exp, lines)
    return lines


# --- roofline (issue 28) --------------------------------------------------------------------------------


def draw_roofline(run: RunData) -> list[Plot]:
    """Decode FLOP/s achieved against decode arithmetic intensity, one point per experiment, under the roof
    of each device's peaks (memory-bound slope, compute-bound ceiling) where they are known."""
    ai_row = registry.figure("efficiency.decode_arithmetic_intensity")
    y_row = registry.figure("efficiency.decode_flops_per_s")
    exps = [e for e in _ok(run) if mean(e, ai_row.name) is not None and mean(e, y_row.name) is not None]
    title = "decode roofline: achieved FLOP/s against arithmetic intensity"
    if not exps:
        return [Plot("roofline", title, skipped="no experiment has decode steps with a known architecture")]
    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    xs = [_known(e, ai_row.name) for e in exps]
    span = (min(xs) / 4, max(max(xs) * 4, 1e3))
    roofs: dict[tuple[float, float], str] = {}
    for e in exps:
        hw = (e.summary or {}).get("hardware") or {}
        bw, tf, n = hw.get("peak_memory_bandwidth_gbs"), hw.get("peak_tflops"), hw.get("devices") or 1
        if isinstance(bw, (int, float)) and isinstance(tf, (int, float)):
            roofs.setdefault((bw * 1e9 * n, tf * 1e12 * n), f"{hw.get('device_name') or '[hardware]'} × {n}")
    for i, ((bw, tf), name) in enumerate(roofs.items()):
        grid = [span[0] * (span[1] / span[0]) ** (k / 200) for k in range(201)]
        ax.plot(grid, [min(tf, x * bw) for x in grid], "-", color=f"C{i}", alpha=0.6, label=f"roof: {name}")
    for e, x in zip(exps, xs, strict=True):
        ax.plot([x], [_known(e, y_row.name)], "o", color="C3")
        ax.annotate(label(e), (x, _known(e, y_row.name)), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(_axis_label(ai_row, exps))
    ax.set_ylabel(_axis_label(y_row, exps))
    ax.grid(alpha=0.3, which="both")
    if roofs:
        ax.legend(fontsize=7)
    else:
        fig.supxlabel("no peaks known (set [hardware]): points without a roof", fontsize=7, color="0.35")
    ax.set_title(title, fontsize=10)
    return [Plot("roofline", title, fig)]
