"""The measured cycles: ``[sync ▸ meter window ▸ requests via traffic pattern ▸ generate_stream ▸ sync]``.

Each cycle's energy window opens and closes around exactly the measured
requests, with a device synchronize at both edges; it serves the prompt set
again until it lasts ``measurement.min_window_s``; under
``measurement.prefill_pass`` a second window serves the same requests with
one output token each. Between cycles the GPU cools down
(``measurement.cooldown_seconds``, ``measurement.thermal_floor_c``). There are
``measurement.cycles`` cycles, or more under ``measurement.target_rel_ci``
until the precision target holds: the stop rule is
:func:`lem.figures.precision.stops_after`, which the summary replays. Each cycle's files are written as soon as
it ends (``cycle-NNN.json``, ``timeline-NNN.csv``).

The host's load is sampled around each cycle (:mod:`lem.run.hostload`, the cycle's ``host`` block), and
each cycle is judged (:mod:`lem.figures.validity`): throttled, unsettled, busy host, throughput outlier.
Under ``measurement.validity = "retry"`` a spoilt cycle does not count, so the stop rule runs a
replacement; ``measurement.settle_wait_s`` waits before a cycle for the GPU's temperature to come back
within ``max_temperature_step_c`` of the previous cycle's start.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lem.config import ExperimentConfig, MeasurementConfig
from lem.figures import precision, quality, registry, validity
from lem.figures.requests import with_text
from lem.figures.summary import compute_cycle, traces_to_json
from lem.results.files import write_json, write_timeline
from lem.results.timelines import as_written
from lem.run.hostload import HostLoad
from lem.run.live import Live, metered, window_json
from lem.run.passes import prefill_config, serve_passes
from lem.run.progress import Progress
from lem.types import EnergyWindow

#: Give up waiting for ``measurement.thermal_floor_c`` after this long (and say so).
THERMAL_WAIT_MAX_S = 600.0
#: Length of the meter window read to learn the temperature while waiting.
THERMAL_PROBE_S = 1.0

#: One cycle's timeline as written to ``timeline-NNN.csv``, and read back.
Timeline = list[dict[str, Any]]


def run_cycles(live: Live, setup: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[int, Timeline]]:
    """Every measured cycle of the experiment: their raw records and their timelines by cycle number."""
    m = live.config.measurement
    cycles: list[dict[str, Any]] = []
    timelines: dict[int, Timeline] = {}
    host = HostLoad()
    for c in itertools.count(1):
        notes = [*cool_down(live), *settle(live, cycles[-1])] if c > 1 else []
        raw, timeline = measure_cycle(live, setup, c, notes, host)
        cycles.append(raw)
        if timeline is not None:
            timelines[c] = timeline
        verdict = validity.judge(m, cycles)[-1]
        if not verdict["valid"]:
            live.progress.note(f"cycle {c} spoilt ({m.validity}): " + "; ".join(verdict["reasons"]))
        if m.target_rel_ci is not None and c >= max(2, m.cycles):
            precise(m, cycles, live.progress)
        if precision.stops_after(m, cycles):
            break
    return cycles, timelines


def measure_cycle(
    live: Live, setup: Mapping[str, Any], c: int, notes: Sequence[str] = (), host: HostLoad | None = None
) -> tuple[dict[str, Any], Timeline | None]:
    """Cycle ``c``: its raw record (written to ``cycle-NNN.json``) and its timeline as written.

    :param notes: what happened around the cycle that the raw data cannot show (a thermal floor not reached).
    :param host: the host-load sampler read around the cycle's window (its ``host`` block).
    """
    config, progress = live.config, live.progress
    m = config.measurement
    of = f"{m.cycles}" if m.target_rel_ci is None else f"{m.cycles}-{m.cycle_limit}"
    progress.stage(f"cycle {c}/{of}", total=len(live.prompts) if m.min_window_s <= 0 else None)
    host = host or HostLoad()
    host.start()
    served, window = _served(live, config, c)
    load = host.stop()
    passes = served["passes"]
    raw: dict[str, Any] = {
        "experiment_id": setup["experiment_id"],
        "cycle": c,
        **served,
        "energy_reason": live.metering.reason,
        # What happened around the cycle that the raw data cannot show (a thermal floor not reached...).
        "notes": list(notes),
        # How busy the host was during the cycle's window (lem.run.hostload).
        "host": load,
    }
    if m.prefill_pass:
        # Right after its cycle, with the same warm state: the split is as close to the cycle as it can be.
        raw["prefill"] = prefill_pass(live, c, passes)
    timeline = as_written(window.timeline) if window is not None and window.timeline else None
    metrics, energy, warnings = compute_cycle(raw, setup, config, timeline)
    raw.update({"metrics": metrics, "energy": energy, "warnings": warnings})
    if timeline is not None and window is not None:
        write_timeline(live.directory / f"timeline-{c:03d}.csv", list(window.timeline))
    write_json(live.directory / f"cycle-{c:03d}.json", "cycle", raw, compact=True)
    jpt, row = energy["j_per_output_token"], registry.figure("energy.j_per_output_token")
    # The live line marks an estimate as every other screen does (lem.figures.registry).
    mark = f" {registry.ESTIMATE}" if registry.method_of(raw, row.name).estimate else ""
    detail = f"{metrics['output_tokens_per_s']:.1f} tok/s" + (
        f", {jpt:.3g} {row.label}{mark}" if jpt is not None else ""
    )
    progress.end(detail + (f", {passes} passes" if passes > 1 else ""))
    return raw, timeline


def prefill_pass(live: Live, c: int, passes: int) -> dict[str, Any]:
    """Cycle ``c``'s requests again (same prompts, same number of passes), one output token each, metered apart."""
    with live.progress.substage(f"  prefill pass of cycle {c}", total=len(live.prompts) * passes):
        served, _ = _served(live, prefill_config(live.config), c, passes)
    return served


def _served(
    live: Live, config: ExperimentConfig, c: int, passes: int | None = None
) -> tuple[dict[str, Any], EnergyWindow | None]:
    """The prompt set served under ``config`` in one metered window (``passes`` times, or until
    ``min_window_s``), synchronized at both edges: its record and the meter's window."""
    model = live.model
    model.synchronize()
    with metered(live.metering.meter) as w:
        t0 = time.monotonic_ns()
        traces, served = serve_passes(model, live.prompts, config, live.progress, c, t0, passes=passes)
        model.synchronize()
    # After the window: decoding outputs and scoring them is lem's work, not the engine's.
    rows = traces_to_json(with_text(traces, model.tokenizer), t0)
    quality.annotate(rows, [p.reference for p in live.prompts], config.quality)
    record = {
        # The timeline's t_s counts from the meter window's opening, timeline_offset_s before t0.
        "window": {"duration_s": (w.t1 - t0) / 1e9, "timeline_offset_s": (t0 - w.t0) / 1e9},
        "passes": served,
        "requests": rows,
        "energy_window": window_json(w.window),
    }
    return record, w.window


def cool_down(live: Live) -> list[str]:
    """Wait before a cycle: ``measurement.cooldown_seconds``, then until the GPU is below ``thermal_floor_c``.

    Returns the notes for the cycle's record (the floor ignored or not reached).
    """
    m, meter, progress = live.config.measurement, live.metering.meter, live.progress
    if m.cooldown_seconds > 0:
        progress.stage("cool-down")
        time.sleep(m.cooldown_seconds)
        progress.end()
    if m.thermal_floor_c is None:
        return []
    if meter is None:
        return ["measurement.thermal_floor_c ignored: no energy meter to read temperatures from"]
    deadline = time.monotonic() + THERMAL_WAIT_MAX_S
    progress.stage("thermal")
    while True:
        meter.start()
        time.sleep(THERMAL_PROBE_S)
        temps = [r["temperature_c"] for r in meter.stop().timeline if r.get("temperature_c") is not None]
        progress.advance(0)
        if not temps:
            progress.end()
            return ["measurement.thermal_floor_c ignored: the meter reports no temperature"]
        if max(temps) <= m.thermal_floor_c:
            progress.end(f"{max(temps):.0f} °C")
            return []
        if time.monotonic() > deadline:
            progress.end()
            return [f"GPU stayed above thermal_floor_c {m.thermal_floor_c} °C for {THERMAL_WAIT_MAX_S:.0f} s"]


def settle(live: Live, previous: Mapping[str, Any]) -> list[str]:
    """Wait (up to ``measurement.settle_wait_s``) until every GPU is within ``max_temperature_step_c`` of its
    temperature at the previous cycle's start; the notes for the cycle's record when it did not settle."""
    m, meter, progress = live.config.measurement, live.metering.meter, live.progress
    if m.settle_wait_s <= 0 or meter is None:
        return []
    before = {
        int(d["device"]): d["start"]["temperature_c"]
        for d in (previous.get("energy") or {}).get("thermal", {}).get("devices", ())
        if d.get("start", {}).get("temperature_c") is not None
    }
    if not before:
        return []
    deadline = time.monotonic() + m.settle_wait_s
    progress.stage("settle")
    while True:
        meter.start()
        time.sleep(THERMAL_PROBE_S)
        now: dict[int, float] = {}
        for r in meter.stop().timeline:
            if r.get("temperature_c") is not None and r.get("device") in before:
                now[int(r["device"])] = float(r["temperature_c"])
        progress.advance(0)
        off = {d: t - before[d] for d, t in now.items() if abs(t - before[d]) > m.max_temperature_step_c}
        if not off:
            progress.end()
            return []
        if time.monotonic() > deadline:
            progress.end()
            listed = ", ".join(f"GPU {d} {step:+.0f} °C" for d, step in sorted(off.items()))
            return [f"temperature did not settle within measurement.settle_wait_s {m.settle_wait_s:g} s ({listed})"]


def precise(m: MeasurementConfig, cycles: Sequence[dict[str, Any]], progress: Progress) -> bool:
    """Whether the precision target holds over the cycles the summary includes; shows the current relative CIs."""
    target = m.target_rel_ci
    assert target is not None
    kept = [cycles[i] for i in validity.partition(m, cycles)["included"]]
    met, rels, applies = precision.check(kept, target, m.target_figures)
    shown = ", ".join(f"{name} ±{rels[name]:.2%}" if rels[name] is not None else f"{name} unknown" for name in applies)
    verdict = "met" if met else "not yet"
    progress.note(f"precision after {len(kept)} cycles: 95% CI {shown} (target ±{target:.2%}: {verdict})")
    return met
