"""A cycle's figures from its raw record, and an experiment's summary over its cycles, labelled honestly.

Raw request rows (arrival, token events, ids, errors) and energy windows are
the source of truth; :func:`compute_cycle` and :func:`summarize` derive every
figure from them, so ``lem results aggregate`` can recompute a summary later,
also over results written by an older schema.

The labels a reader needs to not misread a figure are put in the result
itself: null figures carry a ``reason``; a figure whose 95% interval reaches
below zero though it cannot be negative is flagged ``ci95_low_impossible``; a
negative dynamic energy is flagged per cycle (its value kept); a negative
decode energy is flagged per cycle and its decode figures are null (so not
averaged); several energy methods across cycles are each named with the
number of cycles they covered.

The experiment's settings come as a typed :class:`lem.config.ExperimentConfig`
(the runner's own, or one restructured from the stored config by
:func:`lem.results.files.setup_config`): defaults live in :mod:`lem.config` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lem.config import ExperimentConfig
from lem.figures import goodput, outcome, quality, uncertainty, validity
from lem.figures.attribution import NEGATIVE_DECODE, per_request, prefill_decode, step_energy
from lem.figures.digests import cycle_output_digest, ids_digest
from lem.figures.energy import energy_figures, idle_power
from lem.figures.hardware import cycle_roofline
from lem.figures.precision import precision_block, rel_ci
from lem.figures.registry import FIGURES, dig, estimate_basis, null_reason
from lem.figures.requests import RequestTrace, cycle_metrics, failure_reasons, latency_distributions, request_metrics
from lem.figures.stats import MIN_SAMPLES_FOR_PERCENTILES, distribution, interval
from lem.figures.steady import steady_state
from lem.figures.thermal import thermal_context

#: Results written before schema 2 recorded neither prompt ids nor output ids.
NOT_RECORDED_V1 = "not recorded: these results were written by lem's schema 1"


# --- traces in JSON form ------------------------------------------------------------


def traces_to_json(traces: Sequence[RequestTrace], t0_ns: int) -> list[dict[str, Any]]:
    """Raw request rows with times relative to the cycle's start (integers, ns), ids, digest and error."""
    return [
        {
            "id": t.id,
            "input_tokens": t.input_tokens,
            "origin_ns": None if t.origin_ns is None else t.origin_ns - t0_ns,
            "events": [[ts - t0_ns, n] for ts, n in t.events],
            "finished": t.finished,
            "token_ids": None if t.token_ids is None else list(t.token_ids),
            "output_digest": ids_digest(t.token_ids),
            "error": t.error,
            "output_text": t.output_text,
        }
        for t in traces
    ]


def traces_from_json(rows: Iterable[Mapping[str, Any]]) -> list[RequestTrace]:
    """The inverse of :func:`traces_to_json` (times stay relative to the cycle's start; schema 1 rows too)."""
    return [
        RequestTrace(
            int(r["id"]),
            int(r["input_tokens"]),
            r["origin_ns"],
            tuple((int(t), int(n)) for t, n in r["events"]),
            bool(r["finished"]),
            None if r.get("token_ids") is None else tuple(int(i) for i in r["token_ids"]),
            r.get("error"),
            r.get("output_text"),
        )
        for r in rows
    ]


# --- one cycle ------------------------------------------------------------------------


def compute_cycle(
    raw: Mapping[str, Any],
    setup: Mapping[str, Any],
    config: ExperimentConfig,
    timeline: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(metrics, energy, warnings)`` of one cycle from its raw record, the experiment's setup and config.

    ``timeline`` is the cycle's meter timeline (``timeline-NNN.csv`` as :func:`lem.results.timelines.read_timeline`
    gives it): the steady-state energy, the energy per step and the thermal context come from it.
    """
    traces = traces_from_json(raw["requests"])
    model = setup.get("model_info", {})
    metrics, warnings = cycle_metrics(
        traces,
        raw["window"]["duration_s"],
        model.get("model_config"),
        model.get("num_parameters"),
        num_beams=config.generation.num_beams,
    )
    # Passes over the prompt set (measurement.min_window_s); results before it served the set once.
    metrics["passes"] = passes = int(raw.get("passes", 1))
    # The digest is the first pass's, so cycles with different numbers of passes compare; every pass
    # of the same prompts is checked against it.
    rows = sorted(raw["requests"], key=lambda r: int(r["id"]))
    size = len(rows) // passes if passes > 0 and len(rows) % passes == 0 else len(rows)
    digests = [cycle_output_digest(rows[i : i + size]) for i in range(0, len(rows), size)] if size else [None]
    metrics["output_digest"] = digests[0]
    metrics["outputs_identical_across_passes"] = None if None in digests else len(set(digests)) == 1
    offset = float(raw["window"].get("timeline_offset_s", 0.0))
    metrics["steady_state"] = steady_state(traces, timeline, offset)
    metrics["roofline"] = cycle_roofline(traces, model, config, metrics["flops"])
    idle = setup.get("idle", {})
    idle_w = idle_power(idle.get("window"))
    threshold = config.measurement.cross_check_threshold
    energy, ewarn = energy_figures(
        raw.get("energy_window"),
        raw.get("energy_reason"),
        idle_w,
        idle.get("reason"),
        metrics["output_tokens"],
        threshold,
    )
    prefill = raw.get("prefill")
    prefill_energy = None
    if prefill is not None:
        out_tokens = sum(n for r in prefill["requests"] for _, n in r["events"])
        prefill_energy, pwarn = energy_figures(
            prefill.get("energy_window"), raw.get("energy_reason"), idle_w, idle.get("reason"), out_tokens, threshold
        )
        ewarn += [f"prefill pass: {w}" for w in pwarn]
    energy["prefill_pass"] = prefill_energy
    energy["prefill_decode"] = prefill_decode(energy["total_j"], energy["idle_j"], traces, prefill, prefill_energy)
    energy["steps"] = step_energy(traces, timeline, offset)
    energy["per_request"] = per_request(traces, energy["total_j"], energy["prefill_decode"])
    energy["thermal"], twarn = thermal_context(timeline)
    per = [request_metrics(t) for t in traces]
    metrics["goodput"] = goodput.cycle_goodput(
        per, metrics["duration_s"], energy, config.slo, config.generation.num_beams
    )
    metrics["quality"] = quality.cycle_quality(raw["requests"], metrics["duration_s"], energy, config.quality)
    return metrics, energy, warnings + ewarn + twarn


def headline_figures(blocks: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every headline figure over cycles (``{"metrics": ..., "energy": ...}`` blocks), with its labels."""
    figures = {}
    for row in FIGURES:
        name, path = row.name, row.path
        fig = interval([dig(b, path) for b in blocks])
        present = [v for v in fig["values"] if v is not None]
        if fig["ci95_low"] is not None:
            # A figure that cannot be negative (its row says so, and all its values are >= 0) with an interval
            # below 0: the raw bound is kept, the flag says it is impossible (too few cycles for this spread).
            # Energy above idle may honestly be negative: its interval below 0 is no flag.
            fig["ci95_low_impossible"] = not row.may_be_negative and fig["ci95_low"] < 0 <= min(present)
        if not present and row.reason is not None:
            why = null_reason(row, blocks)
            if why:
                fig["reason"] = why
        fig["rel_ci95"] = rel_ci(fig["values"])
        if name.startswith("ttft_s."):
            note = next((dig(b, ("metrics", "ttft_s", "note")) for b in blocks), None)
            if note:
                fig["note"] = note
        figures[name] = fig
    return figures


# --- warnings over cycles ----------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def group_warnings(items: Sequence[tuple[int, str]]) -> list[str]:
    """One line per kind of per-cycle warning: ``cycles 1, 2, 3: ...``.

    Messages that differ only in their numbers (a window of 0.41 s in one
    cycle, 0.47 s in the next) are one warning, each varying number shown as
    its range ``low–high``.
    """
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for cycle, msg in items:
        groups.setdefault(_NUMBER.sub("\0", msg), []).append((cycle, _NUMBER.findall(msg)))
    lines = []
    for template, members in groups.items():
        cycles = sorted({c for c, _ in members})
        slots = []
        for i in range(template.count("\0")):
            values = [nums[i] for _, nums in members]
            if len(set(values)) == 1:
                slots.append(values[0])
            else:
                slots.append(f"{min(values, key=float)}–{max(values, key=float)}")
        text = template
        for slot in slots:
            text = text.replace("\0", slot, 1)
        lines.append(f"cycle{'s' if len(cycles) > 1 else ''} {', '.join(map(str, cycles))}: {text}")
    return lines


def energy_methods(energies: Sequence[Mapping[str, Any]]) -> tuple[str | None, dict[str, int]]:
    """``(method, {method: cycles})``: one method, or ``"mixed: a, b"`` when cycles used several."""
    counts: dict[str, int] = {}
    for e in energies:
        if e.get("method"):
            counts[e["method"]] = counts.get(e["method"], 0) + 1
    if not counts:
        return None, {}
    return (next(iter(counts)) if len(counts) == 1 else "mixed: " + ", ".join(sorted(counts))), counts


# --- the summary -----------------------------------------------------------------------------------


def _outputs(cycles: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``output_digest`` of the first cycle and whether every cycle produced the same outputs."""
    digests = [m["output_digest"] for m in metrics]
    recorded = any("token_ids" in r for c in cycles for r in c["requests"])
    if not digests or digests[0] is None:
        why = "the backend did not report the generated token ids" if recorded else NOT_RECORDED_V1
        return {"output_digest": None, "outputs_identical_across_cycles": None, "output_digest_reason": why}
    same = None if any(d is None for d in digests) else len(set(digests)) == 1
    return {"output_digest": digests[0], "outputs_identical_across_cycles": same, "output_digest_reason": None}


def _prompts(setup: Mapping[str, Any]) -> dict[str, Any] | None:
    prompts = setup.get("prompts")
    if prompts is None:
        return None
    out = dict(prompts)
    if "digest" not in out:
        out.update({"digest": None, "digest_of": None, "digest_reason": NOT_RECORDED_V1})
    return out


def summarize(
    setup: Mapping[str, Any],
    config: ExperimentConfig,
    cycles: Sequence[Mapping[str, Any]],
    timelines: Mapping[int, Sequence[Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The summary of an experiment, recomputed from ``setup.json``, raw cycle records and their timelines.

    ``config`` is the experiment's; ``setup["config"]`` (its flattened form, see
    :func:`lem.results.files.flat_config`) is copied into the summary as it is, for readers.
    ``timelines`` maps a cycle number to its timeline rows (see :func:`compute_cycle`).
    """
    timelines = timelines or {}
    beams = config.generation.num_beams
    meas = config.measurement
    computed = [compute_cycle(c, setup, config, timelines.get(int(c["cycle"]))) for c in cycles]
    metrics = [m for m, _, _ in computed]
    energies = [e for _, e, _ in computed]
    blocks = [
        {"metrics": mx, "energy": e, "host": c.get("host")} for c, (mx, e, _) in zip(cycles, computed, strict=True)
    ]
    # Spoilt cycles (lem.figures.validity): under "invalidate" and "retry" they are left out of the figures.
    parts = validity.partition(meas, blocks)
    numbers = [int(c["cycle"]) for c in cycles]
    included = [blocks[i] for i in parts["included"]]
    kept = [cycles[i] for i in parts["included"]]
    kept_metrics = [metrics[i] for i in parts["included"]]
    figures = headline_figures(included)
    validity_block = validity.summary_block(meas, numbers, parts)
    left_out = validity.left_out_line(validity_block, len(cycles))
    if left_out is not None and not included:
        for fig in figures.values():
            fig["reason"] = left_out
    warnings = list(setup.get("warnings", ()))
    spoilt = [(numbers[i], f"spoilt: {why}") for i in parts["invalid"] for why in parts["verdicts"][i]["reasons"]]
    per_cycle = [
        (int(c["cycle"]), msg)
        for c, (_, _, w) in zip(cycles, computed, strict=True)
        for msg in [*c.get("notes", ()), *w]
    ]
    warnings += group_warnings(per_cycle + spoilt)
    if left_out is not None:
        warnings.append(left_out)
    kept_energies = [energies[i] for i in parts["included"]]
    cross = _cross_check(numbers, energies, meas.cross_check_threshold)
    if cross["exceeding_cycles"]:
        warnings.append(
            f"energy counter and integrated power disagree by more than {meas.cross_check_threshold:.0%} in cycle(s) "
            f"{', '.join(map(str, cross['exceeding_cycles']))} (largest {cross['largest_rel_diff']:+.1%})"
        )
    if len(cycles) < 2:
        warnings.append(f"{len(cycles)} cycle(s): no confidence interval (run at least 2 cycles, better 5+)")
    elif len(included) < 2:
        warnings.append(f"{len(included)} cycle(s) included: no confidence interval (the others were spoilt)")
    # Spoilt cycles left out of the figures are left out of the pooled ones too (their requests ran throttled...).
    per_request = [request_metrics(t) for c in kept for t in traces_from_json(c["requests"])]
    pooled = latency_distributions(per_request, beams)
    few = [f"{key} ({d['n']})" for key, d in pooled.items() if 0 < d["n"] < MIN_SAMPLES_FOR_PERCENTILES]
    if few:
        limit = MIN_SAMPLES_FOR_PERCENTILES
        warnings.append(f"pooled percentiles rest on fewer than {limit} samples: {', '.join(few)}")
    if beams > 1:
        warnings.append(f"{pooled['itl_s']['reason']}: ITL and TPOT are null; {pooled['ttft_s']['note']}")
    reasons = failure_reasons(per_request)
    failed = sum(reasons.values())
    if failed:
        listed = "; ".join(f"{why} ({n})" for why, n in reasons.items())
        warnings.append(f"{failed} of {len(per_request)} requests failed over {len(kept)} cycle(s): {listed}")
    method, method_cycles = energy_methods(energies)
    if len(method_cycles) > 1:
        used = ", ".join(f"{m} in {n} cycle(s)" for m, n in method_cycles.items())
        warnings.append(f"cycles measured energy by different methods ({used}): their figures are less comparable")
    negative = [int(c["cycle"]) for c, e in zip(cycles, energies, strict=True) if e.get("dynamic_negative")]
    flags = _energy_flags(cycles, energies, negative)
    if flags[NEGATIVE_DECODE]["count"]:
        flagged = flags[NEGATIVE_DECODE]
        warnings.append(
            f"negative decode energy in {flagged['count']} of {len(cycles)} cycle(s) (cycles "
            f"{', '.join(map(str, flagged['cycles']))}): the prefill-only pass took more energy than the cycle; "
            f"their {', '.join(flagged['figures'])} are null and left out of the means (raw values in each "
            "cycle's energy.prefill_decode.negative)"
        )
    impossible = [name for name, f in figures.items() if f.get("ci95_low_impossible")]
    if impossible:
        warnings.append(
            f"the 95% interval of {', '.join(impossible)} reaches below zero though the figure cannot be negative: "
            "the interval is too wide to say much; run more cycles (measurement.cycles)"
        )
    precision = precision_block(config.measurement, blocks)
    if precision is not None and not precision["met"]:
        warnings.append(
            f"precision target not met: 95% CI within ±{precision['target_rel_ci']:.1%} of the mean not reached "
            f"in {len(cycles)} cycle(s) (measurement.max_cycles); achieved: "
            + ", ".join(f"{k} ±{v:.1%}" if v is not None else f"{k} unknown" for k, v in precision["rel_ci95"].items())
        )
    throttled = [int(c["cycle"]) for c, e in zip(cycles, energies, strict=True) if _throttled(e)]
    status = outcome.cycles_status(
        outcome.request_status(len(per_request), reasons, config.measurement.max_failed_share),
        len(cycles),
        len(kept),
        left_out,
    )
    run_id, exp_id = setup.get("run_id"), setup.get("experiment_id")
    return {
        "key": f"{run_id}/{exp_id}",
        "experiment_id": exp_id,
        "run_id": run_id,
        "backend": setup.get("backend"),
        "model": setup.get("model"),
        "sweep_values": setup.get("sweep_values", {}),
        "config": dict(setup.get("config") or {}),
        "status": status.status,
        "status_reason": status.reason,
        "cycles": len(cycles),
        "figures": figures,
        "latency_pooled": pooled,
        "slo": goodput.summary_block(config.slo, [m["goodput"] for m in kept_metrics], per_request),
        "quality": quality.summary_block(
            kept, (setup.get("prompts") or {}).get("count"), config.quality, None if included else left_out
        ),
        "failed_requests": failed,
        "failure_reasons": reasons,
        "workload": {
            "requests": [m["requests"] for m in kept_metrics],
            "input_tokens": [m["input_tokens"] for m in kept_metrics],
            "output_tokens": [m["output_tokens"] for m in kept_metrics],
            "failed_requests": [m["failed_requests"] for m in kept_metrics],
            "passes": [m["passes"] for m in kept_metrics],
        },
        "precision": precision,
        "cycles_included": len(included),
        "validity": validity_block,
        "cross_check": cross,
        "uncertainty": uncertainty.budget(kept_energies, figures, (setup.get("idle") or {}).get("power_spread")),
        "host_load": [c.get("host") for c in cycles],
        "per_request_energy": _per_request_energy(kept_energies),
        "thermal": {"throttled_cycles": throttled},
        **_outputs(cycles, metrics),
        "flags": {**flags, "ci95_low_impossible": impossible},
        "methods": {
            "energy": method,
            "energy_cycles": method_cycles,
            # What an estimated energy rests on (a TDP, a constant RAM power): every screen shows it.
            "energy_basis": estimate_basis(d for e in energies for d in e.get("devices") or ()),
            "idle": next((e["idle_method"] for e in energies if e["idle_method"]), None),
            "peak_power": next((e["peak_power_method"] for e in energies if e["peak_power_method"]), None),
            "flops": next((m["flops"]["method"] for m in metrics), None),
            "steady_state": next((m["steady_state"]["definition"] for m in metrics), None),
            "steady_state_energy": next(
                (m["steady_state"]["energy_method"] for m in metrics if m["steady_state"]["energy_method"]), None
            ),
            "prefill_decode": next(
                (e["prefill_decode"]["method"] for e in energies if e["prefill_decode"]["method"]), None
            ),
            "steps": next((e["steps"]["method"] for e in energies), None),
            "weight_widths": next((m["roofline"]["widths"]["basis"] for m in metrics if "roofline" in m), None),
        },
        # The peaks the utilisation figures are measured against (lem.figures.hardware), with their sources.
        "hardware": next((m["roofline"]["hardware"] for m in metrics if "roofline" in m), None),
        "energy_reason": next((e["reason"] for e in energies if e["reason"]), None),
        "idle_reason": next((e["idle_reason"] for e in energies if e["idle_reason"]), None),
        "prompts": _prompts(setup),
        "load": setup.get("load"),
        "idle_power_w": energies[0]["idle_power_w"] if energies else None,
        "warmup": setup.get("warmup"),
        "warnings": list(dict.fromkeys(warnings)),
    }


#: The figures a negative dynamic energy makes meaningless (their values are kept, flagged).
DYNAMIC_FIGURES = ("energy.dynamic_j", "energy.dynamic_j_per_output_token")


def _energy_flags(
    cycles: Sequence[Mapping[str, Any]], energies: Sequence[Mapping[str, Any]], negative_dynamic: list[int]
) -> dict[str, Any]:
    """The summary's energy flags: negative dynamic energy (values kept) and negative decode energy (nulled),
    each with the cycles it hit, their count and the figures it touches."""
    decode: list[int] = []
    figures: set[str] = set()
    for c, e in zip(cycles, energies, strict=True):
        split = e.get("prefill_decode") or {}
        if NEGATIVE_DECODE in (split.get("flags") or ()):
            decode.append(int(c["cycle"]))
            figures |= {f"energy.{k}" for k in split["negative"] if k.endswith("_per_output_token")}
    return {
        "negative_dynamic_energy_cycles": negative_dynamic,
        "negative_dynamic_energy": {
            "cycles": negative_dynamic,
            "count": len(negative_dynamic),
            "figures": list(DYNAMIC_FIGURES) if negative_dynamic else [],
            "handling": "kept: energy near idle can come out below it; the dynamic figures of these cycles mean little",
        },
        NEGATIVE_DECODE: {
            "cycles": decode,
            "count": len(decode),
            "figures": sorted(figures),
            "handling": "null in these cycles (left out of the means); raw values in energy.prefill_decode.negative",
        },
    }


def _cross_check(cycles: Sequence[int], energies: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    """The summary's ``cross_check``: the largest counter/integration disagreement and the cycles past the
    threshold or too short to check (see :func:`lem.figures.energy.cross_check`)."""
    checks = [(c, e.get("cross_check") or {}) for c, e in zip(cycles, energies, strict=True)]
    diffs = [(c, x["rel_diff"]) for c, x in checks if x.get("rel_diff") is not None]
    largest = max(diffs, key=lambda cd: abs(cd[1]), default=None)
    return {
        "threshold": threshold,
        "largest_rel_diff": None if largest is None else largest[1],
        "largest_in_cycle": None if largest is None else largest[0],
        "exceeding_cycles": [c for c, x in checks if x.get("exceeds")],
        "short_window_cycles": [c for c, x in checks if x.get("short_window")],
        "reason": None if diffs else next((x.get("reason") for _, x in checks if x.get("reason")), "no cycle"),
    }


def _throttled(energy: Mapping[str, Any]) -> bool:
    return any(d["throttled"] for d in (energy.get("thermal") or {}).get("devices", ()))


def _per_request_energy(energies: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Energy per request pooled over cycles: an estimate by token share (see :mod:`lem.figures.attribution`)."""
    blocks = [e["per_request"] for e in energies if e.get("per_request")]
    values = [j for b in blocks for j in (b["j"] or ())]
    method = next((b["method"] for b in blocks if b["method"]), None)
    reason = None if values else next((b["reason"] for b in blocks if b["reason"]), "no energy was measured")
    return {"estimate": True, "method": method, "reason": reason, "j": distribution(values)}
