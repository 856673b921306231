"""One experiment's lifecycle in this process, step by step as ARCHITECTURE.md's data flow draws it.

``environment capture ─▶ meter = measure_energy ─▶ model = load_model (load energy+time)
─▶ idle baseline (GPU idle, model resident) ─▶ warm-up (fixed N or CV convergence)
─▶ cycles ─▶ summary``

:func:`run_experiment` is that line: one function per step, each reading the
live experiment (:class:`lem.run.live.Live`). The load's time and energy are
recorded apart, and any phase the backend reports apart from them
(:mod:`lem.phases`); the cycles are :mod:`lem.run.cycles`. Files are written
as soon as they exist (see :mod:`lem.results.files`): ``environment.json``,
then ``setup.json`` once the warm-up is done, each cycle's files, and
``summary.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import attrs

from lem.configfile.loading import Experiment, unstructure
from lem.errors import BackendError, MeterUnavailable
from lem.figures.digests import prompt_digest
from lem.figures.requests import request_metrics
from lem.figures.summary import summarize
from lem.figures.uncertainty import power_spread
from lem.phases import LoadPhases
from lem.plugins import get_plugin_manager
from lem.prompts import PromptSet, load_prompts
from lem.results.files import flat_config, write_json
from lem.run import traffic
from lem.run.cycles import run_cycles
from lem.run.live import Live, metered, window_json, write_environment
from lem.run.meters import Metering, named_explicitly, open_metering
from lem.run.passes import prefill_config, serve, serve_passes
from lem.run.progress import Progress
from lem.types import LoadedModel


@attrs.frozen
class Load:
    """The model load: the handle, and its time and energy (``phases``) over the devices metered then."""

    model: LoadedModel
    phases: LoadPhases
    devices: tuple[int, ...]
    reason: str | None


def run_experiment(exp: Experiment, exp_dir: Path, run_id: str, progress: Progress) -> dict[str, Any]:
    """Run one experiment in this process, writing its files to ``exp_dir``; returns the summary."""
    config = exp.config
    metering = open_metering(config, config.metered_devices())
    if metering.meter is None and named_explicitly(config):
        # A meter the user named explicitly must work: stop before the model loads, not after the run.
        raise MeterUnavailable(f"measurement.energy_meter: {metering.reason}")
    model: LoadedModel | None = None
    try:
        write_environment(exp_dir, metering)
        loaded = load(exp, metering, progress)
        model = loaded.model
        placed = follow_placement(exp, metering, model, exp_dir)
        prompt_set = tokenized_prompts(exp, model)
        backend_warnings = [str(w) for w in model.info.get("warnings") or ()]  # types.LoadedModel.info
        for line in backend_warnings:
            progress.note(f"warning: {line}")
        warnings = [*placed, *backend_warnings, *prompt_set.warnings]
        live = Live(exp, exp_dir, run_id, progress, metering, model, prompt_set.prompts, warnings)
        idle = idle_baseline(live)
        warmup = warm_up(live)
        setup = write_setup(live, loaded, prompt_set, idle, warmup)
        cycles, timelines = run_cycles(live, setup)
        summary = summarize(setup, exp.config, cycles, timelines)
        write_json(exp_dir / "summary.json", "summary", summary)
        return summary
    finally:
        if model is not None:
            model.close()
        if metering.meter is not None:
            metering.meter.close()


def load(exp: Experiment, metering: Metering, progress: Progress) -> Load:
    """``model = load_model``: the backend's handle, its load time and energy; the model closes if the load fails."""
    config = exp.config
    progress.stage("load")
    # A backend may split off a metered phase of its load (an engine build): see lem.phases.
    phases = LoadPhases(metering.meter)
    phases.open()
    model: LoadedModel | None = None
    try:
        model = get_plugin_manager().hook.load_model(backend=config.backend, config=config, phases=phases)
        if model is None:
            raise BackendError(f"backend = {config.backend!r}: no installed plugin loads models for it")
        model.synchronize()
    except BaseException:
        try:
            phases.close()
        finally:
            if model is not None:  # after the load window, as a loaded model closes after the run
                model.close()
        raise
    phases.close()
    progress.end()
    return Load(model, phases, metering.devices, metering.reason)


def follow_placement(exp: Experiment, metering: Metering, model: LoadedModel, exp_dir: Path) -> list[str]:
    """Meter the devices the model landed on, if measurement.devices left that to the backend; the warnings.

    Where a backend spreads a model (``device_map = "auto"``) is known only once it has loaded: the
    meter is reopened on those devices and ``environment.json`` rewritten. The load window covered
    the devices guessed before.
    """
    if metering.meter is None or not model.devices or set(model.devices) == set(metering.devices):
        return []
    if exp.config.measurement.devices is not None:
        return [
            f"model occupies devices {list(model.devices)} but measurement.devices = {list(metering.devices)}"
            " are metered"
        ]
    guessed = metering.devices
    metering.meter.close()
    metering.meter = None  # closed: not closed again at the end should reopening fail
    reopened = open_metering(exp.config, model.devices)
    metering.devices, metering.meter, metering.reason = reopened.devices, reopened.meter, reopened.reason
    write_environment(exp_dir, metering)
    after = "the idle baseline and every cycle cover all of them" if metering.meter is not None else metering.reason
    return [
        f"the model was placed on devices {list(metering.devices)} when it loaded: the load energy covers"
        f" devices {list(guessed)} only; {after}"
    ]


def tokenized_prompts(exp: Experiment, model: LoadedModel) -> PromptSet:
    """The experiment's prompts (``lem.prompts``), tokenized by the model's tokenizer."""
    config = exp.config
    vocab = model.model_config.get("vocab_size")
    return load_prompts(config.dataset, tokenizer=model.tokenizer, seed=config.seed, vocab_size=vocab)


def idle_baseline(live: Live) -> dict[str, Any]:
    """The idle baseline: the GPU idle with the model resident for ``measurement.idle_seconds``, or why not."""
    m, metering = live.config.measurement, live.metering
    idle: dict[str, Any] = {"seconds": m.idle_seconds, "window": None, "reason": None}
    if metering.meter is None:
        idle["reason"] = metering.reason
    elif m.idle_seconds <= 0:
        idle["reason"] = "idle baseline skipped (measurement.idle_seconds = 0)"
    else:
        live.progress.stage("idle")
        live.model.synchronize()
        with metered(metering.meter) as w:
            time.sleep(m.idle_seconds)
        idle["window"] = window_json(w.window)
        # The baseline's power spread: a term of every idle and dynamic figure's uncertainty budget.
        idle["power_spread"] = power_spread(w.window.timeline if w.window is not None else ())
        live.progress.end()
    return idle


def warm_up(live: Live) -> dict[str, Any]:
    """The warm-up: requests until latency is warm (:func:`warm_up_requests`), then the prefill-only pass if asked.

    Under ``measurement.prefill_pass`` one unmeasured prefill-only pass follows: a backend that
    compiles per output length compiles here, not in the first measured prefill window.
    """
    record = warm_up_requests(live)
    prompts, progress = live.prompts, live.progress
    if live.config.measurement.prefill_pass and prompts:
        progress.stage("prefill warm-up", total=len(prompts))
        serve_passes(live.model, prompts, prefill_config(live.config), progress, 0, time.monotonic_ns(), passes=1)
        progress.end()
        record["prefill_pass_requests"] = len(prompts)
    return record


def warm_up_requests(live: Live) -> dict[str, Any]:
    """Serve warm-up requests from the prompt set: a fixed number, or until latency settles (CV).

    Requests go in rounds of one full batch (or one concurrency's worth)
    arriving together, so per-request latency measures service, not queueing,
    and its coefficient of variation over the last ``warmup_window`` requests
    can settle. The count is rounded up to whole rounds: a warm-up smaller than
    a batch would leave the measured batch shape cold (first-cycle slowdowns of
    2-3x were seen on a GPU at batch 8 after a 2-request warm-up).
    """
    config, prompts, progress = live.config, live.prompts, live.progress
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
        for tr in serve(live.model, requests, config, progress):
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


def write_setup(
    live: Live, load: Load, prompt_set: PromptSet, idle: dict[str, Any], warmup: dict[str, Any]
) -> dict[str, Any]:
    """``setup.json``: what every cycle of the experiment shares, from its config to its warm-up."""
    exp, model, metering = live.exp, live.model, live.metering
    digest, digest_of = prompt_digest(live.prompts)
    load_window = load.phases.window
    setup: dict[str, Any] = {
        "experiment_id": exp.id,
        "run_id": live.run_id,
        "backend": exp.config.backend,
        "model": exp.config.model,
        "sweep_values": dict(exp.sweep_values),
        # The resolved config as experiment.toml holds it, flattened: a summary describes itself.
        "config": flat_config(unstructure(exp.config)),
        "meter": getattr(metering.meter, "name", None),
        "meter_reason": metering.reason,
        "metered_devices": list(metering.devices) if metering.meter is not None else [],
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
            "count": len(live.prompts),
            "digest": digest,
            "digest_of": digest_of,
        },
        "load": {
            "duration_s": load.phases.duration_s,
            "energy_window": window_json(load_window),
            "energy_reason": load.reason,
            "metered_devices": list(load.devices) if load_window is not None else [],
            # Metered phases the backend reported (an engine build), each apart from load's own figures.
            "phases": {
                name: {
                    "duration_s": (p.t1 - p.t0) / 1e9,
                    "energy_window": window_json(p.window),
                    "energy_reason": load.reason,
                }
                for name, p in load.phases.phases.items()
            },
        },
        "idle": idle,
        "warmup": warmup,
        "warnings": live.warnings,
    }
    write_json(live.directory / "setup.json", "setup", setup)
    return setup
