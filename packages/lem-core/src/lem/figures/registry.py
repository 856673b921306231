"""The figure registry: every figure lem summarizes over cycles, defined once and read by every screen.

One :class:`Figure` row per figure says where its per-cycle value lives in a
cycle's ``{"metrics": ..., "energy": ...}`` blocks, its one label, unit and
display scale, whether it may honestly be negative, where the reason of a
null is found, whether a precision target may apply to it, which views show
it, which way is better, and what its method rests on. The summary
(:mod:`lem.figures.summary`), the end-of-run table and ``lem results list``
(:mod:`lem.campaign.ending`), ``results show`` and ``compare``, the HTML
report, the plots and export all read these rows, so a label, a scale or an
estimate marker is the same wherever a number is shown.

Adding a figure is one row here plus its computation (and its recomputation
in ``tests/test_recompute.py``; a test fails when either is missing).

Methods: a figure is *measured* unless its value rests on something that was
estimated. Energy figures rest on the energy block's method (a meter labels
each device ``counter``, ``power-integration`` or ``estimate``: CodeCarbon
without RAPL guesses CPU power from a TDP); a figure resting on an estimate
is an estimate and its basis is what the meter says the estimate rests on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from lem.figures.stats import PERCENTILES

#: The screens that show figures (a row's ``views`` names those that show it).
#: ``quality_pareto``: accuracy (the x axis) and the energy figures plotted against it (issue 27).
VIEWS = ("run_table", "show", "compare", "report", "cycles_plot", "pareto", "quality_pareto", "export")
#: Every view but the few that choose their figures one by one.
_WIDE = frozenset({"show", "export"})

#: What a figure's method rests on: nothing estimated, the energy block's method, the FLOPs count's method.
MethodSource = Literal["measured", "energy", "flops"]

#: Marker text of a figure whose value rests on an estimate, and of a flagged one, on text screens.
ESTIMATE = "(estimate)"
FLAGGED = "(flagged)"

#: FLOPs from "2 × parameters × tokens" (no architecture config): an approximation, so an estimate.
_FLOPS_APPROXIMATION = "2 × parameters × tokens"


@attrs.frozen
class Figure:
    """One figure: its summary name, where its per-cycle value lives, and how every screen shows it.

    :param name: its key in ``summary.json``'s ``figures`` (``energy.j_per_output_token``).
    :param path: where a cycle's value is, in ``{"metrics": ..., "energy": ...}`` blocks.
    :param label: the one label every screen shows (without the unit).
    :param unit: the unit after scaling (``ms``), or ``""`` when the label says it (``J/out tok``).
    :param scale: display scale (seconds are shown as ms: ``1e3``).
    :param spec: ``format`` spec of a displayed value.
    :param may_be_negative: a negative value is honest (energy above idle), not a flag.
    :param reason: ``(block path, keys)``: where a null figure's reason is, the first key of the first
        cycle that gives one.
    :param precision_target: a precision target (``measurement.target_rel_ci``) may apply to it.
    :param views: the views that show it (see :data:`VIEWS`).
    :param larger_is_better: which way is better (Pareto fronts, compare), ``None`` when neither.
    :param method: what its method rests on (see :data:`MethodSource`).
    :param flags: keys of the summary's ``flags`` that, when set, mark this figure as flagged.
    """

    name: str
    path: tuple[str, ...]
    label: str
    unit: str = ""
    scale: float = 1.0
    spec: str = ".4g"
    may_be_negative: bool = False
    reason: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    precision_target: bool = False
    views: frozenset[str] = _WIDE
    larger_is_better: bool | None = None
    method: MethodSource = "measured"
    flags: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """The label with its unit (``TTFT p50 (ms)``): every screen's heading of this figure."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


def _views(*extra: str) -> frozenset[str]:
    return _WIDE | frozenset(extra)


_LATENCY_LABELS = {"ttft_s": "TTFT", "itl_s": "ITL", "tpot_s": "TPOT", "e2e_s": "E2E"}
#: Latency statistics each view shows: ``(latency, stat) -> views``.
_LATENCY_VIEWS = {
    ("ttft_s", "p50"): ("run_table", "compare", "report", "cycles_plot", "pareto"),
    ("ttft_s", "p99"): ("compare", "report", "pareto"),
    ("itl_s", "p50"): ("compare", "report"),
    ("itl_s", "p99"): ("compare",),
    ("tpot_s", "p50"): ("compare", "report", "cycles_plot", "pareto"),
    ("tpot_s", "p99"): ("compare", "report", "pareto"),
    ("e2e_s", "p50"): ("report",),
}
#: Summary flags (a list of cycles, or ``{cycles, count, figures, handling}``) of a dynamic energy below zero,
#: and of a decode energy below zero (the prefill pass took more than the cycle).
_NEGATIVE_DYNAMIC = ("negative_dynamic_energy", "negative_dynamic_energy_cycles")
_NEGATIVE_DECODE = ("negative_decode_energy",)


def _latency_rows() -> tuple[Figure, ...]:
    return tuple(
        Figure(
            f"{lat}.{stat}",
            ("metrics", lat, stat),
            f"{label} {stat}",
            "ms",
            1e3,
            reason=(("metrics", lat), ("reason",)),
            views=_views(*_LATENCY_VIEWS.get((lat, stat), ())),
            larger_is_better=False,
        )
        for lat, label in _LATENCY_LABELS.items()
        for stat in ("mean", *(f"p{q}" for q in PERCENTILES))
    )


def _energy(key: str, label: str, unit: str = "", **kw: Any) -> Figure:
    return Figure(f"energy.{key}", ("energy", key), label, unit, method="energy", **kw)


def _goodput(key: str, label: str, unit: str = "", **kw: Any) -> Figure:
    keys = ("reason", "energy_reason") if key.endswith("j_per_good_request") else ("reason",)
    where = ("metrics", "goodput")
    return Figure(f"goodput.{key}", (*where, key), label, unit, reason=(where, keys), **kw)


def _quality(key: str, label: str, unit: str = "", name: str | None = None, **kw: Any) -> Figure:
    keys = ("reason", "energy_reason") if key.endswith("j_per_correct_answer") else ("reason",)
    where = ("metrics", "quality")
    return Figure(name or f"quality.{key}", (*where, key), label, unit, reason=(where, keys), **kw)


_PREFILL_DECODE = (("energy", "prefill_decode"), ("reason",))


def _roofline(key: str, label: str, unit: str = "", reason: str = "reason", **kw: Any) -> Figure:
    where = ("metrics", "roofline")
    return Figure(f"efficiency.{key}", (*where, key), label, unit, reason=(where, (reason, "reason")), **kw)


#: Every figure summarized across cycles, in the order the summary lists them.
FIGURES: tuple[Figure, ...] = (
    Figure(
        "output_tokens_per_s",
        ("metrics", "output_tokens_per_s"),
        "output tok/s",
        spec=".1f",
        precision_target=True,
        views=_views("run_table", "compare", "report", "cycles_plot", "pareto"),
        larger_is_better=True,
    ),
    Figure("total_tokens_per_s", ("metrics", "total_tokens_per_s"), "total tok/s", spec=".1f", larger_is_better=True),
    Figure("requests_per_s", ("metrics", "requests_per_s"), "req/s", spec=".3g", larger_is_better=True),
    *_latency_rows(),
    _energy("total_j", "total energy", "J", larger_is_better=False),
    _energy("idle_j", "idle energy", "J"),
    _energy("dynamic_j", "dynamic energy", "J", may_be_negative=True, flags=_NEGATIVE_DYNAMIC),
    _energy(
        "j_per_output_token",
        "J/out tok",
        precision_target=True,
        views=_views("run_table", "compare", "report", "cycles_plot", "pareto", "quality_pareto"),
        larger_is_better=False,
    ),
    _energy(
        "dynamic_j_per_output_token",
        "dynamic J/out tok",
        may_be_negative=True,
        flags=_NEGATIVE_DYNAMIC,
        views=_views("compare", "report", "cycles_plot"),
        larger_is_better=False,
    ),
    # Energy you can defend (issue 26): the fixed share of J/token (idle power × time per token); the dynamic
    # share is dynamic J/out tok above. Each energy figure's uncertainty budget: lem.figures.uncertainty.
    _energy(
        "idle_j_per_output_token",
        "idle J/out tok",
        reason=(("energy",), ("idle_reason",)),
        views=_views("compare", "report"),
        larger_is_better=False,
    ),
    _energy("output_tokens_per_j", "out tok/J", larger_is_better=True),
    _energy("mean_power_w", "mean power", "W", views=_views("compare", "report", "cycles_plot")),
    _energy("peak_power_w", "peak power", "W"),
    Figure("flops.total", ("metrics", "flops", "total"), "FLOPs", method="flops"),
    Figure(
        "flops.achieved_flops_per_s",
        ("metrics", "flops", "achieved_flops_per_s"),
        "achieved FLOP/s",
        method="flops",
        larger_is_better=True,
    ),
    # Requests that met the [slo] (lem.figures.goodput); compare shows them when an experiment has one.
    _goodput("share", "SLO attainment", "%", scale=100.0, views=_views("compare"), larger_is_better=True),
    _goodput("requests_per_s", "goodput", "req/s", views=_views("compare"), larger_is_better=True),
    _goodput(
        "j_per_good_request",
        "J/request within SLO",
        method="energy",
        views=_views("compare"),
        larger_is_better=False,
    ),
    _goodput(
        "dynamic_j_per_good_request",
        "dynamic J/request within SLO",
        method="energy",
        may_be_negative=True,
        flags=_NEGATIVE_DYNAMIC,
        larger_is_better=False,
    ),
    # Steady state (lem.figures.steady): its energy is the power timeline integrated over the window.
    Figure(
        "steady_state.output_tokens_per_s",
        ("metrics", "steady_state", "output_tokens_per_s"),
        "steady-state output tok/s",
        spec=".1f",
        reason=(("metrics", "steady_state"), ("reason",)),
        larger_is_better=True,
    ),
    Figure(
        "steady_state.j_per_output_token",
        ("metrics", "steady_state", "j_per_output_token"),
        "steady-state J/out tok",
        reason=(("metrics", "steady_state"), ("energy_reason",)),
        method="energy",
        larger_is_better=False,
    ),
    # Measured by the prefill-only pass (measurement.prefill_pass, lem.figures.attribution).
    Figure(
        "energy.prefill_j_per_input_token",
        ("energy", "prefill_decode", "prefill_j_per_input_token"),
        "prefill J/in tok",
        reason=_PREFILL_DECODE,
        method="energy",
        larger_is_better=False,
    ),
    Figure(
        "energy.decode_j_per_output_token",
        ("energy", "prefill_decode", "decode_j_per_output_token"),
        "decode J/out tok",
        reason=_PREFILL_DECODE,
        method="energy",
        flags=_NEGATIVE_DECODE,
        larger_is_better=False,
    ),
    Figure(
        "energy.decode_dynamic_j_per_output_token",
        ("energy", "prefill_decode", "decode_dynamic_j_per_output_token"),
        "decode dynamic J/out tok",
        reason=_PREFILL_DECODE,
        method="energy",
        may_be_negative=True,
        flags=(*_NEGATIVE_DECODE, *_NEGATIVE_DYNAMIC),
        larger_is_better=False,
    ),
    # Distance from the hardware's limit (roofline; lem.figures.hardware, bytes from lem.figures.flops).
    _roofline(
        "memory_bandwidth_utilization",
        "decode MBU",
        "%",
        scale=100.0,
        reason="mbu_reason",
        views=_views("compare", "report"),
        larger_is_better=True,
    ),
    _roofline(
        "flops_utilization",
        "prefill MFU",
        "%",
        scale=100.0,
        reason="flops_reason",
        views=_views("compare", "report"),
        larger_is_better=True,
    ),
    _roofline(
        "roofline_decode_tokens_per_s",
        "decode roofline tok/s",
        spec=".1f",
        reason="mbu_reason",
        views=_views("compare", "report"),
        larger_is_better=None,
    ),
    _roofline("achieved_memory_bandwidth_gbs", "decode memory bandwidth", "GB/s", larger_is_better=True),
    _roofline("decode_arithmetic_intensity", "decode arithmetic intensity", "FLOP/B"),
    _roofline("decode_flops_per_s", "decode FLOP/s", larger_is_better=True),
    # --- quality: outputs scored against references ([quality], lem.figures.quality) ---
    _quality(
        "accuracy",
        "accuracy",
        "%",
        scale=100.0,
        views=_views("compare", "report", "quality_pareto"),
        larger_is_better=True,
    ),
    _quality("correct", "correct answers", name="quality.correct_answers", larger_is_better=True),
    _quality("correct_answers_per_s", "correct answers/s", views=_views("compare"), spec=".3g", larger_is_better=True),
    _quality(
        "j_per_correct_answer",
        "J/correct answer",
        name="energy.j_per_correct_answer",
        method="energy",
        views=_views("compare", "report", "quality_pareto"),
        larger_is_better=False,
    ),
    _quality(
        "dynamic_j_per_correct_answer",
        "dynamic J/correct answer",
        name="energy.dynamic_j_per_correct_answer",
        method="energy",
        may_be_negative=True,
        flags=_NEGATIVE_DYNAMIC,
        larger_is_better=False,
    ),
)

_BY_NAME = {f.name: f for f in FIGURES}


def figure(name: str) -> Figure:
    """The row of figure ``name``; ``KeyError`` naming it when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name}: no such figure in lem.figures.registry") from None


def find(name: str) -> Figure | None:
    """The row of figure ``name``, or ``None`` (a summary written by another lem may hold others)."""
    return _BY_NAME.get(name)


def in_view(view: str) -> tuple[Figure, ...]:
    """The figures ``view`` shows, in registry order; ``ValueError`` for an unknown view."""
    if view not in VIEWS:
        raise ValueError(f"{view}: unknown view; one of {', '.join(VIEWS)}")
    return tuple(f for f in FIGURES if view in f.views)


# --- methods -------------------------------------------------------------------------------------------


@attrs.frozen
class Method:
    """How a figure's value was obtained: ``measured`` or ``estimate``, and for an estimate what it rests on.

    :param kind: ``"measured"`` or ``"estimate"``.
    :param basis: what the estimate rests on (a TDP, a constant RAM power), ``None`` when measured or
        when the result does not record it.
    :param detail: the method as the result names it (``counter``, ``estimate``, ``mixed: counter,
        estimate``), ``None`` for figures that are measured by definition.
    """

    kind: Literal["measured", "estimate"]
    basis: str | None = None
    detail: str | None = None

    @property
    def estimate(self) -> bool:
        """Whether the figure rests on an estimate."""
        return self.kind == "estimate"


MEASURED = Method("measured")


def estimate_basis(devices: Iterable[Mapping[str, Any]]) -> str | None:
    """What the estimated parts of an energy figure rest on: each estimated device's reason, once each.

    ``devices`` are an energy block's ``devices`` (or several cycles' together).
    """
    bases = [
        f"{d.get('component') or 'gpu'}: {d['reason']}" if d.get("reason") else f"{d.get('component') or 'gpu'}"
        for d in devices
        if isinstance(d, Mapping) and d.get("method") == "estimate"
    ]
    return "; ".join(dict.fromkeys(bases)) or None


def _from_detail(detail: Any, basis: Any) -> Method:
    if not isinstance(detail, str):
        return MEASURED
    if "estimate" in detail:
        return Method("estimate", basis if isinstance(basis, str) and basis else None, detail)
    return Method("measured", None, detail)


def method_of(doc: Mapping[str, Any], name: str) -> Method:
    """The method of figure ``name`` in a summary (``summary.json``) or a cycle (``cycle-NNN.json``).

    A summary says it in ``methods`` (``energy``, ``energy_basis``, ``flops``); a cycle in its ``energy``
    block (``method``, each device's ``method`` and ``reason``) and ``metrics.flops.method``.
    """
    row = find(name)
    source = "measured" if row is None else row.method
    if source == "measured":
        return MEASURED
    methods = doc.get("methods")
    if isinstance(methods, Mapping):  # a summary
        if source == "energy":
            return _from_detail(methods.get("energy"), methods.get("energy_basis"))
        return _flops(methods.get("flops"))
    if source == "energy":
        energy = doc.get("energy")
        if not isinstance(energy, Mapping):
            return MEASURED
        devices = energy.get("devices")
        basis = estimate_basis(devices) if isinstance(devices, Sequence) else None
        return _from_detail(energy.get("method"), basis)
    metrics = doc.get("metrics")
    flops = metrics.get("flops") if isinstance(metrics, Mapping) else None
    return _flops(flops.get("method") if isinstance(flops, Mapping) else None)


def _flops(detail: Any) -> Method:
    if detail == _FLOPS_APPROXIMATION:
        return Method("estimate", "FLOPs approximated as 2 × parameters × tokens (no architecture config)", detail)
    return Method("measured", None, detail if isinstance(detail, str) else None)


def flags_of(summary: Mapping[str, Any], name: str) -> list[str]:
    """Why figure ``name`` of a summary is flagged (one short line each); empty when it is not.

    A 95% interval reaching below zero for a figure that cannot be negative (``ci95_low_impossible``),
    and the summary's ``flags`` a row names (cycles whose dynamic or decode energy came out negative).
    """
    out = []
    figures = summary.get("figures")
    entry = figures.get(name) if isinstance(figures, Mapping) else None
    flags = summary.get("flags")
    flags = flags if isinstance(flags, Mapping) else {}
    impossible = flags.get("ci95_low_impossible")
    if (isinstance(entry, Mapping) and entry.get("ci95_low_impossible") is True) or (
        isinstance(impossible, list) and name in impossible
    ):
        out.append("impossible negative CI bound: run more cycles (the figure cannot be negative)")
    row = find(name)
    for key in row.flags if row is not None else ():
        if key.endswith("_cycles") and isinstance(flags.get(key.removesuffix("_cycles")), Mapping):
            continue  # the older list of cycles beside its table: the table says it (with its handling)
        value: Any = flags.get(key)
        handling = None
        if isinstance(value, Mapping):  # {cycles, count, figures, handling}: the figures it touches are named
            table: Mapping[str, Any] = value
            touched = table.get("figures")
            if isinstance(touched, list) and name not in touched:
                continue
            value, handling = table.get("cycles"), table.get("handling")
        if value:
            which = f" in cycle(s) {', '.join(map(str, value))}" if isinstance(value, list) else ""
            how = f" ({handling})" if handling else ""
            out.append(f"{key.removesuffix('_cycles').replace('_', ' ')}{which}{how}")
    return list(dict.fromkeys(out))


# --- display --------------------------------------------------------------------------------------------


def format_value(fig: Figure, value: float | None, spec: str | None = None) -> str:
    """``value`` scaled for display and formatted with the row's spec (``-`` when ``None``)."""
    return "-" if value is None else format(value * fig.scale, spec or fig.spec)


def marked(text: str, method: Method, flags: Sequence[str] = ()) -> str:
    """``text`` (a displayed value) with the estimate and flag markers it needs on a text screen."""
    if method.estimate:
        text += f" {ESTIMATE}"
    if flags:
        text += f" {FLAGGED}"
    return text


def dig(doc: Mapping[str, Any], path: Sequence[str]) -> Any:
    """``doc[path[0]][path[1]]...``, ``None`` where a step is missing."""
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def cycle_value(blocks: Mapping[str, Any], fig: Figure) -> Any:
    """The figure's value in one cycle's ``{"metrics": ..., "energy": ...}`` blocks (``None`` if absent)."""
    return dig(blocks, fig.path)


def null_reason(fig: Figure, blocks: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``fig`` is null: the first reason a cycle's block gives at the row's ``reason``, or ``None``."""
    if fig.reason is None:
        return None
    where, keys = fig.reason
    for b in blocks:
        for key in keys:
            why = dig(b, (*where, key))
            if why:
                return str(why)
    return None


def uncertainty_of(summary: Mapping[str, Any], name: str) -> float | None:
    """The combined relative bound of figure ``name``'s uncertainty budget (``0.023`` for ±2.3%), or ``None``
    when the summary has no budget for it (see :mod:`lem.figures.uncertainty`)."""
    entry = dig(summary, ("uncertainty", "figures", name, "combined"))
    return float(entry) if isinstance(entry, (int, float)) and not isinstance(entry, bool) else None


def uncertainty_text(summary: Mapping[str, Any], name: str) -> str:
    """``budget ±2.3%`` beside an energy figure on a text screen (empty when it has none)."""
    bound = uncertainty_of(summary, name)
    if bound is None:
        return ""
    missing = dig(summary, ("uncertainty", "figures", name, "not_covered")) or []
    return f"budget ±{bound:.1%}" + (" (not covering " + ", ".join(missing) + ")" if missing else "")
