"""``lem results compare``: headline figures of several experiments side by side, tested and checked for fairness.

Each figure is the mean over cycles with its 95% confidence interval (Student
t) and its ratio to the first experiment's. Whether a difference from the
first is *resolved* is Welch's two-sided t-test at 5% on the per-cycle values
(Welch-Satterthwaite degrees of freedom, rounded down; see
:func:`lem.figures.stats.welch_test`). A comparison is only fair when the workloads
match: model, precision, prompt-set digest, input and output token counts and,
where recorded, the generated-output digest; every mismatch is a warning
(``--strict``: an error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.errors import ResultsError
from lem.figures import marginal, quality
from lem.figures.registry import ESTIMATE, FLAGGED, dig, flags_of, in_view, method_of, uncertainty_of
from lem.figures.stats import welch_test
from lem.results.files import (
    cycle_paths,
    experiment_config,
    experiment_dirs,
    read_cycle_or_warn,
    read_summary,
    resolve,
)
from lem.results.shapes import kind_of, whole

TEST = (
    "Welch's two-sided t-test at 5% on per-cycle values against the first experiment "
    "(Welch-Satterthwaite degrees of freedom, rounded down)"
)


@attrs.frozen
class Entry:
    """One compared experiment: where it is, its summary and the workload facts the fairness check needs."""

    key: str
    path: Path
    summary: Mapping[str, Any]
    config: Mapping[str, Any]
    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]
    #: Passes over the prompt set per cycle (``measurement.min_window_s``); 1 before passes existed.
    passes: tuple[int, ...] = ()


def _workload(
    exp_dir: Path, summary: Mapping[str, Any], warn: Callable[[str], None]
) -> tuple[list[int], list[int], list[int]] | None:
    """Input tokens, output tokens and passes per cycle: from the summary (schema 2) or the cycle files (schema 1).

    The summary's ``workload`` is checked by :func:`~lem.results.shapes.summary_damage`; a cycle file whose
    token counts are not whole numbers is named through ``warn`` and gives ``None`` (the experiment is left out).
    """
    work = summary.get("workload")
    if work:
        ins, outs = list(work.get("input_tokens") or []), list(work.get("output_tokens") or [])
        return ins, outs, list(work.get("passes") or [1] * len(ins))
    ins, outs = [], []
    for p in cycle_paths(exp_dir):
        cycle = read_cycle_or_warn(p, warn)
        metrics = (cycle or {}).get("metrics") or {}
        if "input_tokens" in metrics:
            for key in ("input_tokens", "output_tokens"):
                if not whole(metrics.get(key)):
                    why = f"'metrics.{key}' is {kind_of(metrics.get(key))}, expected a whole number"
                    warn(f"{p}: damaged: {why}; {exp_dir} is left out")
                    return None
            ins.append(metrics["input_tokens"])
            outs.append(metrics["output_tokens"])
    return ins, outs, [1] * len(ins)


def gather(targets: Sequence[str], results_dir: Path, warn: Callable[[str], None]) -> list[Entry]:
    """The experiments named by ``targets`` (run ids expand to their experiments), in order.

    An experiment without a readable summary is reported through ``warn`` and left out.
    """
    entries = []
    for target in targets:
        dirs = experiment_dirs(resolve(target, results_dir))
        if not dirs:
            warn(f"{target}: no experiments in it")
        for d in dirs:
            if not (d / "summary.json").exists():
                why = "it failed (failure.json)" if (d / "failure.json").exists() else "it did not finish"
                warn(f"{d}: no summary.json ({why}); left out")
                continue
            try:  # a damaged summary (summary_damage: the check every reader makes) is named and left out
                summary = read_summary(d / "summary.json")
            except ResultsError as exc:
                warn(f"{exc}; left out")
                continue
            work = _workload(d, summary, warn)
            if work is None:
                continue
            ins, outs, passes = work
            key = summary.get("key") or f"{d.parent.name}/{d.name}"
            config = summary.get("config") or experiment_config(d)
            entries.append(Entry(key, d, summary, config, tuple(ins), tuple(outs), tuple(passes)))
    if len(entries) < 2:
        raise ResultsError(f"compare needs at least 2 experiments with a summary; found {len(entries)}")
    return entries


def _per_cycle(tokens: Sequence[float]) -> str:
    if not tokens:
        return "unknown"
    values = sorted(set(tokens))
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _per_pass(tokens: Sequence[int], passes: Sequence[int]) -> str:
    """Tokens per pass over the prompt set, per cycle: the workload, whatever number of passes a window took.

    Two engines given the same ``min_window_s`` run different numbers of passes
    (the faster one more); the work of each pass is what must match.
    """
    if not tokens or len(passes) != len(tokens) or any(p < 1 for p in passes):
        return _per_cycle(tokens)
    return _per_cycle([t // p if t % p == 0 else t / p for t, p in zip(tokens, passes, strict=True)])


def fairness(entries: Sequence[Entry]) -> list[str]:
    """One line per way a workload differs from the first's (model, precision, prompts, tokens, outputs)."""
    first = entries[0]
    problems = []

    def check(what: str, get: Callable[[Entry], Any], known: Callable[[Any], bool] = lambda v: True) -> None:
        base = get(first)
        for e in entries[1:]:
            value = get(e)
            if known(base) and known(value) and value != base:
                problems.append(f"{what} differs: {first.key} has {base}, {e.key} has {value}")

    check("model", lambda e: e.summary.get("model"))
    check("precision", lambda e: e.config.get("precision"), lambda v: v is not None)
    check("prompt-set digest", lambda e: (e.summary.get("prompts") or {}).get("digest"), lambda v: v is not None)
    check("input tokens per pass", lambda e: _per_pass(e.input_tokens, e.passes), lambda v: v != "unknown")
    check("output tokens per pass", lambda e: _per_pass(e.output_tokens, e.passes), lambda v: v != "unknown")
    # Goodput against different objectives is not comparable (schema 2 before [slo]: no objective either).
    check("SLO ([slo])", lambda e: slo_text((e.summary.get("slo") or {}).get("slo")))
    check("generated-output digest", lambda e: e.summary.get("output_digest"), lambda v: v is not None)
    return problems


def _figure(summary: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    figure: Mapping[str, Any] = (summary.get("figures") or {}).get(name) or {}
    return figure


def _values(summary: Mapping[str, Any], name: str) -> list[float]:
    fig = _figure(summary, name)
    return [float(v) for v in fig.get("values") or () if v is not None]


def compare(entries: Sequence[Entry]) -> dict[str, Any]:
    """The comparison as JSON-ready data: experiments, figures (mean, CI, ratio, Welch verdict), warnings."""
    figures = []
    has_slo = any((e.summary.get("slo") or {}).get("slo") for e in entries)
    paired = quality.compare_section([e.summary for e in entries])
    for row in in_view("compare"):
        name = row.name
        if name.startswith("goodput.") and not has_slo:
            continue
        if row.path[:2] == ("metrics", "quality") and paired is None:  # no experiment was scored ([quality])
            continue
        base = _values(entries[0].summary, name)
        base_mean = _figure(entries[0].summary, name).get("mean")
        cells = []
        for i, e in enumerate(entries):
            fig = _figure(e.summary, name)
            mean = fig.get("mean")
            method = method_of(e.summary, name)
            cell: dict[str, Any] = {
                "key": e.key,
                "n": fig.get("n", 0),
                "mean": mean,
                "ci95_low": fig.get("ci95_low"),
                "ci95_high": fig.get("ci95_high"),
                "reason": fig.get("reason"),
                "ratio": mean / base_mean if mean is not None and base_mean else None,
                # measured or estimate, and what an estimate rests on (lem.figures.registry.method_of)
                "method": method.kind,
                "method_detail": method.detail,
                "basis": method.basis,
                "flags": flags_of(e.summary, name),
                # the energy figure's uncertainty budget, combined (lem.figures.uncertainty)
                "uncertainty": uncertainty_of(e.summary, name),
                "uncertainty_not_covered": list(dig(e.summary, ("uncertainty", "figures", name, "not_covered")) or []),
            }
            if i > 0:
                cell["welch"] = welch_test(base, _values(e.summary, name))
            cells.append(cell)
        figures.append(
            {
                "figure": name,
                "label": row.label,
                "title": row.title,
                "unit": row.unit,
                "scale": row.scale,
                "larger_is_better": row.larger_is_better,
                "experiments": cells,
            }
        )
    return {
        "test": TEST,
        "experiments": [
            {
                "key": e.key,
                "path": str(e.path),
                "backend": e.summary.get("backend"),
                "model": e.summary.get("model"),
                "cycles": e.summary.get("cycles"),
                # additions for the table: what differs in config, and the SLO each was measured against
                "config": dict(e.config),
                "slo": (e.summary.get("slo") or {}).get("slo"),
            }
            for e in entries
        ],
        "figures": figures,
        "quality": paired,
        # Fixed and marginal energy across the compared experiments (a sweep): lem.figures.marginal.
        "marginal_energy": marginal.marginal_energy([e.summary for e in entries]),
        "warnings": fairness(entries),
    }


#: Marks a budget that leaves out a term it could not know (the caption names the terms).
PARTIAL = "(partial budget)"
#: The caption's line under a table that shows uncertainty budgets.
BUDGET_NOTE = (
    "budget ±: the energy figure's uncertainty budget, its relative bounds summed (counter resolution and update "
    "period, cross-check, idle baseline, run to run; docs/energy.md)"
)

#: Significant digits of every number the compare table prints.
SIGNIFICANT = 3


def significant(value: float, digits: int = SIGNIFICANT) -> str:
    """``value`` to ``digits`` significant digits in plain notation (``10650``, ``0.0123``), never ``1.065e+04``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    places = digits - 1 - math.floor(math.log10(abs(value)))
    if places <= 0:  # a large number: rounded to its significant digits, shown whole
        return f"{round(value, places):.0f}"
    return f"{value:.{places}f}"


def _num(value: float | None, scale: float) -> str:
    return "-" if value is None else significant(value * scale)


def _verdict(welch: Mapping[str, Any]) -> str:
    if welch["resolved"] is None:
        return "n/a"
    return "resolved" if welch["resolved"] else "not resolved"


#: Config keys whose difference the "config differs" row names first (then any other key that differs).
_FIRST_KEYS = ("backend", "model", "precision", "batching.batch_size", "batching.strategy")


def letters(n: int) -> list[str]:
    """Short column labels: A, B, ... Z, AA, AB ..."""
    out = []
    for i in range(n):
        text, k = "", i
        while True:
            text = chr(ord("A") + k % 26) + text
            k = k // 26 - 1
            if k < 0:
                break
        out.append(text)
    return out


def config_differences(result: Mapping[str, Any]) -> list[str]:
    """Per experiment, the config values that differ between the experiments (``batch_size=8, quantization=q8_0``)."""
    configs = [e.get("config") or {} for e in result["experiments"]]
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if len({repr(c.get(k)) for c in configs}) > 1]
    keys.sort(key=lambda k: _FIRST_KEYS.index(k) if k in _FIRST_KEYS else len(_FIRST_KEYS))
    return [", ".join(f"{k.rsplit('.', 1)[-1]}={c.get(k, '-')}" for k in keys) or "same config" for c in configs]


def slo_text(slo: Any) -> str:
    """An ``[slo]`` objective as text (``TTFT <= 200 ms, TPOT <= 50 ms``), ``none`` when there is none."""
    if not isinstance(slo, Mapping) or not slo:
        return "none"
    parts = []
    for key, value in slo.items():
        if value is None:  # a target not set (``e2e_ms`` null): no objective to print
            continue
        name = key.removesuffix("_ms").upper() if key.endswith("_ms") else key.replace("_", " ")
        parts.append(f"{name} <= {value:g} ms" if key.endswith("_ms") else f"{name} = {value:g}")
    return ", ".join(parts) or "none"


def banner(result: Mapping[str, Any]) -> Any:
    """The fairness warnings as a panel shown before the table (``None`` when the workloads match)."""
    if not result["warnings"]:
        return None
    from rich.panel import Panel

    text = "\n".join(f"• {w}" for w in result["warnings"])
    return Panel(text, title="not a fair comparison: the workloads differ", border_style="yellow", expand=False)


def render(result: Mapping[str, Any]) -> Any:
    """A rich ``Table`` of the comparison: one row per figure, one short-labelled column per experiment.

    Columns are lettered (A, B, ...) with a legend mapping each letter to its experiment; numbers have
    :data:`SIGNIFICANT` significant digits; a "config differs" row says what differs in config. A cell
    resting on an estimate is marked ``(estimate)``, a flagged one ``(flagged)``; the caption says what
    each estimate rests on. An energy figure shows its uncertainty budget's combined bound under it
    (``budget ±2.1%``), marked ``(partial budget)`` when a term is unknown (the caption names it).
    """
    from rich.table import Table

    notes = [f"resolved: {result['test']}"]
    bases: dict[str, str] = {}
    flagged: list[str] = []
    partial: list[str] = []
    budgets = False
    marks = letters(len(result["experiments"]))
    table = Table(title="lem results compare", show_lines=True, caption_justify="left")  # notes read as text
    table.add_column("figure", no_wrap=True)
    for mark, e in zip(marks, result["experiments"], strict=True):
        table.add_column(f"{mark}\n{e['backend']}", overflow="fold", min_width=14)
    table.add_row("config differs", *config_differences(result))
    slos = [slo_text(e.get("slo")) for e in result["experiments"]]
    if any(s != "none" for s in slos):
        table.add_row("SLO", *slos)
    for fig in result["figures"]:
        cells = [fig["title"]]
        for i, cell in enumerate(fig["experiments"]):
            if cell["mean"] is None:
                cells.append(f"null: {cell['reason']}" if cell.get("reason") else "-")
                continue
            low, mean, high = (_num(cell[k], fig["scale"]) for k in ("ci95_low", "mean", "ci95_high"))
            text = f"{mean} [{low}, {high}]"
            if cell["method"] == "estimate":
                text += f" {ESTIMATE}"
                bases.setdefault(cell["key"], cell["basis"] or "the result does not record its basis")
            if cell["flags"]:  # why, under the table: a long reason in a cell hides the numbers
                text += f" {FLAGGED}"
                flagged += [f"{FLAGGED} {marks[i]} {fig['title']}: {why}" for why in cell["flags"]]
            if cell.get("uncertainty") is not None:  # the energy figure's uncertainty budget (docs/energy.md)
                text += f"\nbudget ±{cell['uncertainty']:.1%}"
                budgets = True
                if cell.get("uncertainty_not_covered"):
                    text += f" {PARTIAL}"
                    partial.append(
                        f"{PARTIAL} {marks[i]} {fig['title']}: the budget does not cover "
                        + ", ".join(cell["uncertainty_not_covered"])
                    )
            if i > 0:
                ratio = "-" if cell["ratio"] is None else f"×{significant(cell['ratio'])}"
                text += f"\n{ratio} {_verdict(cell['welch'])}"
            cells.append(text)
        table.add_row(*cells)
    legend = [
        f"{m}: {e['key']} ({e['backend']}, {e['model']})" for m, e in zip(marks, result["experiments"], strict=True)
    ]
    notes = ["columns: " + "; ".join(legend), f"numbers: {SIGNIFICANT} significant digits; [95% CI]", *notes]
    notes += quality.render_lines(result.get("quality"))
    notes += [f"{ESTIMATE} {key}: rests on an estimate, not a measurement: {basis}" for key, basis in bases.items()]
    if budgets:
        notes.append(BUDGET_NOTE)
    table.caption = "\n".join([*notes, *flagged, *partial])
    return table
