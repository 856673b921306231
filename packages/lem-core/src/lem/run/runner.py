"""One experiment's lifecycle, and the campaign that runs every experiment of a file.

Order per experiment: environment capture → energy meter → load the model
(its time and energy recorded apart, and any phase the backend reports apart
from that: :mod:`lem.phases`) → idle baseline with the model resident
→ warm-up → N measured cycles (more under ``measurement.target_rel_ci``, until
the precision target holds) → summary. Each cycle's energy window opens and
closes around exactly the measured requests, with a device synchronize at
both edges; it serves the prompt set again until it lasts
``measurement.min_window_s``; under ``measurement.prefill_pass`` a second
window serves the same requests with one output token each. Files are written
as soon as they exist (see :mod:`lem.results.files`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.configfile.loading import Experiment, unstructure
from lem.errors import BackendError, MeterUnavailable
from lem.figures import precision
from lem.figures.digests import prompt_digest
from lem.figures.energy import device_key, peak_total_power
from lem.figures.requests import request_metrics
from lem.figures.summary import compute_cycle, summarize, traces_to_json
from lem.phases import LoadPhases
from lem.results.files import flat_config, write_json, write_timeline
from lem.results.timelines import as_written
from lem.run import environment, traffic
from lem.run.meters import meter_devices, open_meter
from lem.run.passes import prefill_config, serve, serve_passes
from lem.run.progress import Progress
from lem.types import EnergyMeter, EnergyWindow, LoadedModel

#: Give up waiting for ``measurement.thermal_floor_c`` after this long (and say so).
THERMAL_WAIT_MAX_S = 600.0
#: Length of the meter window read to learn the temperature while waiting.
THERMAL_PROBE_S = 1.0


def window_json(window: EnergyWindow | None) -> dict[str, Any] | None:
    """An energy window in JSON form: its timeline goes to CSV, the timeline's peak total power stays here."""
    if window is None:
        return None
    out: dict[str, Any] = {
        "duration_s": window.duration_s,
        "devices": [attrs.asdict(d) for d in window.devices],
        "warnings": list(window.warnings),
    }
    if len(window.devices) > 1:  # one device: its own peak is already exact
        keys = [device_key(attrs.asdict(d)) for d in window.devices]
        out["peak_power_w"] = peak_total_power(window.timeline, keys)
    return out


def load_prompts(config: ExperimentConfig, model: LoadedModel) -> Any:
    """The experiment's prompts (``lem.prompts``), tokenized by the model's tokenizer."""
    from lem.prompts import load_prompts as load

    vocab = model.model_config.get("vocab_size")
    return load(config.dataset, tokenizer=model.tokenizer, seed=config.seed, vocab_size=vocab)


def warm_up(model: LoadedModel, prompts: Sequence[Any], config: ExperimentConfig, progress: Progress) -> dict[str, Any]:
    """Serve warm-up requests from the prompt set: a fixed number, or until latency settles (CV).

    Requests go in rounds of one full batch (or one concurrency's worth)
    arriving together, so per-request latency measures service, not queueing,
    and its coefficient of variation over the last ``warmup_window`` requests
    can settle. The count is rounded up to whole rounds: a warm-up smaller than
    a batch would leave the measured batch shape cold (first-cycle slowdowns of
    2-3x were seen on a GPU at batch 8 after a 2-request warm-up).
    """
    m = config.measurement
    cv_mode = m.warmup == "cv"
    target = m.warmup_max_requests if cv_mode else m.warmup_requests
    record: dict[str, Any] = {"mode": m.warmup, "requests": 0, "latencies_s": [], "converged": None, "cv": None}
    if target <= 0 or not prompts:
        return record
    per_round = config.traffic.concurrency if config.traffic.mode == "concurrency" else config.batching.batch_size
    per_round = max(1, int(per_round or 1))
    target = math.ceil(target / per_round) * per_round
    progress.stage("warm-up", total=target if not cv_mode else None)
    latencies: list[float] = []
    closed = config.traffic.mode == "concurrency"
    while len(latencies) < target:
        n = per_round
        batch = [prompts[(len(latencies) + i) % len(prompts)] for i in range(n)]
        requests = traffic.make_requests(batch, None if closed else [0] * n, first_id=len(latencies))
        for tr in serve(model, requests, config, progress):
            e2e = request_metrics(tr)["e2e_s"]
            latencies.append(e2e if e2e is not None else math.inf)
        progress.advance(len(latencies))
        if cv_mode and len(latencies) >= m.warmup_window:
            window = latencies[-m.warmup_window :]
            mean = sum(window) / len(window)
            sd = math.sqrt(sum((x - mean) ** 2 for x in window) / (len(window) - 1))
            record["cv"] = sd / mean if mean > 0 else None
            if record["cv"] is not None and record["cv"] < m.warmup_cv_threshold:
                record["converged"] = True
                break
    if cv_mode and not record["converged"]:
        record["converged"] = False
    # JSON has no infinity: an unknown latency is null.
    record.update({"requests": len(latencies), "latencies_s": [x if math.isfinite(x) else None for x in latencies]})
    progress.end("" if record["cv"] is None else f"CV {record['cv']:.3f}")
    return record


def _cool_down(meter: EnergyMeter | None, config: ExperimentConfig, progress: Progress) -> list[str]:
    m = config.measurement
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


class _Window:
    """An energy window as a ``with`` block: the meter opens on entry and closes on exit.

    ``t0``/``t1`` are this process's clock just inside the meter's edges; the
    caller synchronizes the device before entering and before leaving.
    """

    def __init__(self, meter: EnergyMeter | None) -> None:
        self.meter = meter
        self.window: EnergyWindow | None = None
        self.t0 = self.t1 = 0

    def __enter__(self) -> _Window:
        if self.meter is not None:
            self.meter.start()
        self.t0 = time.monotonic_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t1 = time.monotonic_ns()
        if self.meter is not None:
            self.window = self.meter.stop()


def _write_environment(exp_dir: Path, meter: EnergyMeter | None, meter_reason: str | None) -> None:
    gpus = meter.environment() if meter is not None else None
    write_json(exp_dir / "environment.json", "environment", environment.capture(gpus, meter_reason))


def run_experiment(exp: Experiment, exp_dir: Path, run_id: str, progress: Progress) -> dict[str, Any]:
    """Run one experiment in this process, writing its files to ``exp_dir``; returns the summary."""
    from lem.plugins import get_plugin_manager

    config = exp.config
    warnings: list[str] = []
    metered = meter_devices(config)
    meter, meter_reason = open_meter(config, metered)
    if meter is None and config.measurement.energy_meters not in (("auto",), ("none",)):
        # A meter the user named explicitly must work: stop before the model loads, not after the run.
        raise MeterUnavailable(f"measurement.energy_meter: {meter_reason}")
    model: LoadedModel | None = None
    try:
        _write_environment(exp_dir, meter, meter_reason)

        progress.stage("load")
        # A backend may split off a metered phase of its load (an engine build): see lem.phases.
        load = LoadPhases(meter)
        load.open()
        try:
            model = get_plugin_manager().hook.load_model(backend=config.backend, config=config, phases=load)
            if model is None:
                raise BackendError(f"backend = {config.backend!r}: no installed plugin loads models for it")
            model.synchronize()
        finally:
            load.close()
        load_s, load_window = load.duration_s, load.window
        progress.end()
        load_metered, load_reason = metered, meter_reason
        if meter is not None and model.devices and set(model.devices) != set(metered):
            if config.measurement.devices is None:
                # Where a backend spreads a model (device_map = "auto") is known only now: meter
                # those devices from here on. The load window covered the devices guessed before.
                meter.close()
                meter = None  # closed: not closed again below should reopening fail
                metered = tuple(model.devices)
                meter, meter_reason = open_meter(config, metered)
                _write_environment(exp_dir, meter, meter_reason)
                after = "the idle baseline and every cycle cover all of them" if meter is not None else meter_reason
                warnings.append(
                    f"the model was placed on devices {list(metered)} when it loaded: the load energy covers"
                    f" devices {list(load_metered)} only; {after}"
                )
            else:
                warnings.append(
                    f"model occupies devices {list(model.devices)} but measurement.devices = {list(metered)}"
                    " are metered"
                )

        prompt_set = load_prompts(config, model)
        prompts = list(prompt_set.prompts)
        warnings += list(prompt_set.warnings)

        idle: dict[str, Any] = {"seconds": config.measurement.idle_seconds, "window": None, "reason": None}
        if meter is None:
            idle["reason"] = meter_reason
        elif config.measurement.idle_seconds <= 0:
            idle["reason"] = "idle baseline skipped (measurement.idle_seconds = 0)"
        else:
            progress.stage("idle")
            model.synchronize()
            with _Window(meter) as w:
                time.sleep(config.measurement.idle_seconds)
            idle["window"] = window_json(w.window)
            progress.end()

        warmup = warm_up(model, prompts, config, progress)
        if config.measurement.prefill_pass and prompts:
            # One unmeasured prefill-only pass: a backend that compiles per output length compiles here.
            progress.stage("prefill warm-up", total=len(prompts))
            serve_passes(model, prompts, prefill_config(config), progress, 0, time.monotonic_ns(), passes=1)
            progress.end()
            warmup["prefill_pass_requests"] = len(prompts)
        digest, digest_of = prompt_digest(prompts)
        setup: dict[str, Any] = {
            "experiment_id": exp.id,
            "run_id": run_id,
            "backend": config.backend,
            "model": config.model,
            "sweep_values": dict(exp.sweep_values),
            # The resolved config as experiment.toml holds it, flattened: a summary describes itself.
            "config": flat_config(unstructure(config)),
            "meter": getattr(meter, "name", None),
            "meter_reason": meter_reason,
            "metered_devices": list(metered) if meter is not None else [],
            "model_info": {
                "num_parameters": model.num_parameters,
                "devices": list(model.devices),
                "model_config": dict(model.model_config),
                "info": dict(model.info),
            },
            "prompts": {
                "description": prompt_set.description,
                "stats": dict(prompt_set.stats),
                "warnings": list(prompt_set.warnings),
                "count": len(prompts),
                "digest": digest,
                "digest_of": digest_of,
            },
            "load": {
                "duration_s": load_s,
                "energy_window": window_json(load_window),
                "energy_reason": load_reason,
                "metered_devices": list(load_metered) if load_window is not None else [],
                # Metered phases the backend reported (an engine build), each apart from load's own figures.
                "phases": {
                    name: {
                        "duration_s": (p.t1 - p.t0) / 1e9,
                        "energy_window": window_json(p.window),
                        "energy_reason": load_reason,
                    }
                    for name, p in load.phases.items()
                },
            },
            "idle": idle,
            "warmup": warmup,
            "warnings": warnings,
        }
        write_json(exp_dir / "setup.json", "setup", setup)

        m = config.measurement
        cycles: list[dict[str, Any]] = []
        timelines: dict[int, list[dict[str, Any]]] = {}
        for c in range(1, m.cycle_limit + 1):
            notes = _cool_down(meter, config, progress) if c > 1 else []
            raw, timeline = _cycle(c, model, meter, meter_reason, prompts, config, setup, exp_dir, progress, notes)
            cycles.append(raw)
            if timeline is not None:
                timelines[c] = timeline
            if m.target_rel_ci is not None and c >= max(2, m.cycles) and _precise(cycles, m.target_rel_ci, progress):
                break
        summary = summarize(setup, cycles, timelines)
        write_json(exp_dir / "summary.json", "summary", summary)
        return summary
    finally:
        if model is not None:
            model.close()
        if meter is not None:
            meter.close()


def _precise(cycles: Sequence[dict[str, Any]], target: float, progress: Progress) -> bool:
    """Whether the precision target holds over ``cycles``; shows the current relative CIs."""
    met, rels, applies = precision.check(cycles, target)
    shown = ", ".join(f"{name} ±{rels[name]:.2%}" if rels[name] is not None else f"{name} unknown" for name in applies)
    verdict = "met" if met else "not yet"
    progress.note(f"precision after {len(cycles)} cycles: 95% CI {shown} (target ±{target:.2%}: {verdict})")
    return met


def _cycle(
    c: int,
    model: LoadedModel,
    meter: EnergyMeter | None,
    meter_reason: str | None,
    prompts: Sequence[Any],
    config: ExperimentConfig,
    setup: dict[str, Any],
    exp_dir: Path,
    progress: Progress,
    notes: Sequence[str] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """One measured cycle: its raw record (written to ``cycle-NNN.json``) and its timeline as written."""
    m = config.measurement
    of = f"{m.cycles}" if m.target_rel_ci is None else f"{m.cycles}-{m.cycle_limit}"
    progress.stage(f"cycle {c}/{of}", total=len(prompts) if m.min_window_s <= 0 else None)
    model.synchronize()
    with _Window(meter) as w:
        t0 = time.monotonic_ns()
        traces, passes = serve_passes(model, prompts, config, progress, c, t0)
        model.synchronize()
    raw: dict[str, Any] = {
        "experiment_id": setup["experiment_id"],
        "cycle": c,
        # The timeline's t_s counts from the meter window's opening, timeline_offset_s before t0.
        "window": {"duration_s": (w.t1 - t0) / 1e9, "timeline_offset_s": (t0 - w.t0) / 1e9},
        "passes": passes,
        "requests": traces_to_json(traces, t0),
        "energy_window": window_json(w.window),
        "energy_reason": meter_reason,
        # What happened around the cycle that the raw data cannot show (a thermal floor not reached...).
        "notes": list(notes),
    }
    if m.prefill_pass:
        raw["prefill"] = _prefill_pass(c, model, meter, prompts, config, progress, passes)
    timeline = as_written(w.window.timeline) if w.window is not None and w.window.timeline else None
    metrics, energy, warnings = compute_cycle(raw, setup, timeline)
    raw.update({"metrics": metrics, "energy": energy, "warnings": warnings})
    if timeline is not None and w.window is not None:
        write_timeline(exp_dir / f"timeline-{c:03d}.csv", list(w.window.timeline))
    write_json(exp_dir / f"cycle-{c:03d}.json", "cycle", raw, compact=True)
    jpt = energy["j_per_output_token"]
    detail = f"{metrics['output_tokens_per_s']:.1f} tok/s" + (f", {jpt:.3g} J/tok" if jpt is not None else "")
    progress.end(detail + (f", {passes} passes" if passes > 1 else ""))
    return raw, timeline


def _prefill_pass(
    c: int,
    model: LoadedModel,
    meter: EnergyMeter | None,
    prompts: Sequence[Any],
    config: ExperimentConfig,
    progress: Progress,
    passes: int,
) -> dict[str, Any]:
    """The cycle's requests again (same prompts, same number of passes), one output token each, metered apart."""
    with progress.substage(f"  prefill pass of cycle {c}", total=len(prompts) * passes):
        model.synchronize()
        with _Window(meter) as w:
            t0 = time.monotonic_ns()
            traces, _ = serve_passes(model, prompts, prefill_config(config), progress, c, t0, passes=passes)
            model.synchronize()
    return {
        "window": {"duration_s": (w.t1 - t0) / 1e9, "timeline_offset_s": (t0 - w.t0) / 1e9},
        "passes": passes,
        "requests": traces_to_json(traces, t0),
        "energy_window": window_json(w.window),
    }
