"""``lem results show``: a compact human summary of an experiment, like the result block of ``vllm bench serve``.

What ran (model, backend, engine settings, workload), requests and duration,
throughput, TTFT/TPOT/ITL mean, median and p99, energy (total, idle, dynamic,
J per token, with its method), goodput, precision and warnings: each figure
with its 95% interval over cycles. Labels, scales and estimate markers come
from :mod:`lem.figures.registry`; ``--json`` prints the summary file itself.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from lem.figures.registry import ESTIMATE, FLAGGED, figure, flags_of, format_value, method_of, uncertainty_text
from lem.figures.validity import cycles_text

#: The sections of the summary block: heading, figures (registry names) in order.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Throughput", ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s")),
    (
        "Latency",
        tuple(f"{lat}.{stat}" for lat in ("ttft_s", "tpot_s", "itl_s", "e2e_s") for stat in ("mean", "p50", "p99")),
    ),
    (
        "Energy",
        (
            "energy.total_j",
            "energy.idle_j",
            "energy.dynamic_j",
            "energy.j_per_output_token",
            "energy.dynamic_j_per_output_token",
            "energy.idle_j_per_output_token",
            "energy.mean_power_w",
            "energy.prefill_j_per_input_token",
            "energy.decode_j_per_output_token",
        ),
    ),
    ("Goodput", ("goodput.share", "goodput.requests_per_s", "goodput.j_per_good_request")),
    (
        "Quality",
        (
            "quality.accuracy",
            "quality.correct_answers",
            "quality.correct_answers_per_s",
            "energy.j_per_correct_answer",
            "energy.dynamic_j_per_correct_answer",
        ),
    ),
)
#: Config keys that say which engine settings and which workload ran (the backend's own table is added).
_ENGINE_PREFIXES = ("precision", "batching.", "sharding.", "quantization.")
_WORKLOAD_KEYS = (
    "dataset.source",
    "dataset.num_prompts",
    "dataset.input_length",
    "dataset.input_length_distribution",
    "generation.max_output_tokens",
    "generation.ignore_eos",
    "traffic.mode",
    "traffic.rate",
    "traffic.concurrency",
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _settings(config: Mapping[str, Any], backend: Any) -> tuple[str, str]:
    """``(engine settings, workload)`` as ``key=value`` lists from the flattened config."""
    own = f"{backend}."
    quantized = config.get("quantization.method") not in (None, "none")
    engine = [
        f"{k}={v}"
        for k, v in config.items()
        if (k.startswith(_ENGINE_PREFIXES) or k.startswith(own))
        and v not in (None, "none")
        and (quantized or not k.startswith("quantization."))
    ]
    work = [f"{k}={config[k]}" for k in _WORKLOAD_KEYS if config.get(k) is not None]
    return ", ".join(engine) or "-", ", ".join(work) or "-"


def _duration(summary: Mapping[str, Any]) -> float | None:
    """Seconds measured over the included cycles: each cycle's output tokens over its output tok/s."""
    tokens = (summary.get("workload") or {}).get("output_tokens") or []
    rates = ((summary.get("figures") or {}).get("output_tokens_per_s") or {}).get("values") or []
    if not tokens or len(tokens) != len(rates) or any(not _number(r) for r in rates):
        return None
    return float(sum(t / r for t, r in zip(tokens, rates, strict=True)))


def _figures_table(summary: Mapping[str, Any], names: Sequence[str]) -> tuple[Table | None, list[str]]:
    """One section: a row per figure (title, mean, 95% CI, marker) and the notes its markers need."""
    table = Table(box=box.SIMPLE, show_header=False, pad_edge=False, show_edge=False)
    table.add_column("figure", no_wrap=True)
    table.add_column("mean", justify="right", no_wrap=True)
    table.add_column("95% CI", no_wrap=True)
    table.add_column("", overflow="fold")
    notes: list[str] = []
    figures = summary.get("figures") or {}
    for name in names:
        fig = figure(name)
        entry = figures.get(name)
        if "show" not in fig.views or not isinstance(entry, Mapping):
            continue
        m = _number(entry.get("mean"))
        if m is None:
            why = entry.get("reason")
            if why is None and name.startswith(("energy.", "goodput.j")):
                why = summary.get("energy_reason")
            table.add_row(fig.title, "null", "", str(why or "not measured"))
            continue
        low, high = _number(entry.get("ci95_low")), _number(entry.get("ci95_high"))
        band = (
            "no CI (1 cycle)"
            if low is None or high is None
            else f"[{format_value(fig, low)}, {format_value(fig, high)}]"
        )
        marks = []
        method = method_of(summary, name)
        if method.estimate:
            marks.append(ESTIMATE)
            note = f"{ESTIMATE} rests on: {method.basis or 'the result does not record its basis'}"
            if note not in notes:
                notes.append(note)
        for why in flags_of(summary, name):
            marks.append(FLAGGED)
            notes.append(f"{FLAGGED} {fig.title}: {why}")
        budget = uncertainty_text(summary, name)
        if budget:  # the energy figure's uncertainty budget (lem.figures.uncertainty) beside it
            marks.append(budget)
        table.add_row(fig.title, format_value(fig, m), band, " ".join(dict.fromkeys(marks)))
    return (table if table.row_count else None), notes


def render(doc: Mapping[str, Any], console: Console) -> None:
    """Print the summary block of one experiment's document (a summary, or a failure/interrupted/setup record)."""
    key = doc.get("key") or doc.get("experiment") or doc.get("experiment_id") or "?"
    status = doc.get("status") or doc.get("kind") or "?"
    console.rule(f"lem results show: {key}", characters="=")
    if not isinstance(doc.get("figures"), Mapping):
        console.print(f"status: {status}" + (f": {doc['reason']}" if doc.get("reason") else ""), markup=False)
        console.print("no summary: figures are written when the experiment finishes (--json shows the record)")
        return
    config = doc.get("config") or {}
    engine, workload = _settings(config, doc.get("backend"))
    work = doc.get("workload") or {}
    requests = sum(work.get("requests") or ())
    failed = doc.get("failed_requests") or 0
    duration = _duration(doc)
    # Spoilt cycles left out of the figures are left out of the request count and duration too.
    left_out = bool((doc.get("validity") or {}).get("excluded_cycles"))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    for k, v in (
        ("model", doc.get("model")),
        ("backend", doc.get("backend")),
        ("engine settings", engine),
        ("workload", workload),
        ("cycles", cycles_text(doc)),
        (
            "requests",
            f"{requests - failed} ok, {failed} failed"
            + (f" in the {doc.get('cycles_included')} included cycle(s)" if left_out else ""),
        ),
        (
            "measured duration",
            "unknown"
            if duration is None
            else f"{duration:.3f} s over " + ("the included cycles" if left_out else "all cycles"),
        ),
        ("energy method", (doc.get("methods") or {}).get("energy") or f"none: {doc.get('energy_reason')}"),
    ):
        facts.add_row(k, str(v))
    console.print(facts)
    notes: list[str] = []
    for heading, names in SECTIONS:
        if heading == "Goodput" and not (doc.get("slo") or {}).get("slo"):
            console.rule(heading, characters="-")
            console.print(f"no goodput: {(doc.get('slo') or {}).get('reason') or 'no [slo]'}", markup=False)
            continue
        q = doc.get("quality") or {}
        if heading == "Quality" and not q.get("scorer"):
            console.rule(heading, characters="-")
            console.print(f"no quality: {q.get('reason') or 'no [quality]'}", markup=False)
            continue
        table, more = _figures_table(doc, names)
        if table is not None:
            console.rule(heading, characters="-")
            console.print(table)
            notes += [n for n in more if n not in notes]
        if heading == "Quality" and q.get("accuracy") is not None:
            # Over the prompts (lem.figures.quality): greedy answers repeat, the prompt set is the uncertainty.
            console.print(
                f"accuracy over the prompts ({q['scorer']}): {q['prompts_correct']} of {q['prompts_scored']} "
                f"prompts right, {q['accuracy']:.1%} (Wilson 95% [{q['wilson95_low']:.1%}, {q['wilson95_high']:.1%}])",
                markup=False,
            )
    precision = doc.get("precision")
    if isinstance(precision, Mapping):
        console.rule("Precision", characters="-")
        rels = precision.get("rel_ci95") or {}
        achieved = ", ".join(
            f"{figure(k).title} ±{v:.1%}" if isinstance(v, float) else f"{k} unknown" for k, v in rels.items()
        )
        verdict = "met" if precision.get("met") else "not met"
        console.print(
            f"target ±{precision.get('target_rel_ci', 0):.1%} (95% CI half-width over the mean): {verdict} after "
            f"{precision.get('cycles')} cycle(s) of at most {precision.get('max_cycles')}; achieved: {achieved}",
            markup=False,
        )
    if notes:
        console.rule("Notes", characters="-")
        for n in notes:
            console.print(n, markup=False)
    warnings = doc.get("warnings") or []
    console.rule(f"Warnings ({len(warnings)})", characters="-")
    for w in warnings:
        console.print(f"- {w}", markup=False)
    console.print("Each figure: the mean over cycles and its 95% confidence interval (Student t).", style="dim")


def summary_text(docs: Sequence[Mapping[str, Any]], width: int | None = None) -> str:
    """The summary blocks of ``docs`` as plain text (no colour), ``width`` columns wide (default 100)."""
    buf = io.StringIO()
    console = Console(
        file=buf, width=width or 100, color_system=None, force_terminal=False, highlight=False, markup=False
    )
    for doc in docs:
        render(doc, console)
    return "".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines())
