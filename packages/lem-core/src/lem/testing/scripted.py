"""A test-double backend and energy meter with known timings (testing helper, not a user-facing backend).

Register it with ``lem.testing.registered(lem.testing.scripted, "scripted")``
and run an experiment with ``backend = "scripted"``. Its ``[scripted]`` table:

========================  ========================================================  =========================
key                       meaning                                                   default
========================  ========================================================  =========================
``ttft_ms``               service start to first token                              2.0
``itl_ms``                gap between consecutive events of a request               1.0
``tokens_per_event``      tokens carried by each event                              1
``output_tokens``         tokens per request                                        generation.max_output_tokens
``slots``                 requests served at once (closed loop: traffic.concurrency) batching.batch_size
``sleep``                 wait until each event's time (false: only timestamps)     true
``load_ms``               time ``load_model`` takes                                 0
``tokenizer``             a tokenizer directory (default none: prompts are ids)      none
``architecture``          built-in architecture whose config is the model_config     "tiny-llama"
``num_parameters``        reported parameter count                                  none
``devices``               the devices the loaded model reports it occupies          [0]
``fail`` / ``fail_at``    ``raise``, ``exit`` (os._exit), ``hang`` at ``load`` or    none / "generate"
                          on ``generate`` call number ``fail_call`` (1-based)
``idle_w`` / ``busy_w``   the scripted meter's power when idle / while generating   100.0 / 300.0
``child_pid_file``        start a child process at load (an engine's process) and   none
                          write its pid to this file
========================  ========================================================  =========================

The server model is simple and exact: it opens at the first arrival (closed
loop: when called), a request starts at ``max(arrival, a slot frees)``, its first event comes ``ttft_ms`` later and the
others every ``itl_ms``; each event's timestamp is that scripted instant, so
every metric can be computed by hand. The meter ``"scripted"`` integrates
``idle_w`` outside and ``busy_w`` inside the backend's generate calls and
reports it as a counter reading.
"""

from __future__ import annotations

import heapq
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lem.architectures import config_dict
from lem.config import ExperimentConfig, GenerationConfig
from lem.configfile.loading import Experiment, structure
from lem.hookspecs import hookimpl
from lem.types import DeviceEnergy, EnergyWindow, LoadedModel, Request, TokenEvent

NAME = "scripted"
_busy: list[tuple[int, int]] = []  # (start_ns, end_ns) of every generate call, for the meter
_calls = [0]


def _tokenizer(path: str | None) -> Any:
    # No tokenizer by default: synthetic prompts then come straight from ids below vocab_size (fast).
    if path is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _opts(config: ExperimentConfig) -> dict[str, Any]:
    return dict(config.options_for(NAME))


def _maybe_fail(opts: dict[str, Any], where: str) -> None:
    if opts.get("fail") is None or opts.get("fail_at", "generate") != where:
        return
    if where == "generate" and _calls[0] != int(opts.get("fail_call", 1)):
        return
    kind = opts["fail"]
    if kind == "exit":
        os._exit(3)
    if kind == "hang":
        while True:
            time.sleep(1)
    raise RuntimeError(f"scripted failure at {where}")


def _start_child(pid_file: str) -> None:
    """A long-lived child, as an engine's own process would be; nothing here ever ends it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))


@hookimpl
def load_model(backend: str, config: ExperimentConfig) -> LoadedModel | None:
    """Load nothing; sleep ``load_ms``; report the configured architecture."""
    if backend != NAME:
        return None
    opts = _opts(config)
    _calls[0] = 0
    if opts.get("child_pid_file"):
        _start_child(str(opts["child_pid_file"]))
    _maybe_fail(opts, "load")
    time.sleep(float(opts.get("load_ms", 0.0)) / 1000)
    return LoadedModel(
        backend=NAME,
        handle=opts,
        tokenizer=_tokenizer(opts.get("tokenizer")),
        devices=tuple(int(d) for d in opts.get("devices", (0,))),
        model_config=config_dict(str(opts.get("architecture", "tiny-llama"))),
        num_parameters=opts.get("num_parameters"),
        info={"scripted": True},
    )


def schedule(requests: Sequence[Request], config: ExperimentConfig, now_ns: int) -> list[TokenEvent]:
    """Every event the scripted server emits for ``requests`` submitted at ``now_ns``, in time order."""
    opts = _opts(config)
    ttft = round(float(opts.get("ttft_ms", 2.0)) * 1e6)
    itl = round(float(opts.get("itl_ms", 1.0)) * 1e6)
    per_event = int(opts.get("tokens_per_event", 1))
    n_out = int(opts.get("output_tokens", config.generation.max_output_tokens))
    closed = config.traffic.mode == "concurrency"
    slots = int(config.traffic.concurrency or 1) if closed else int(opts.get("slots", config.batching.batch_size))
    # The server opens at the first arrival (or now, closed loop): timings are then exact offsets from it.
    arrivals = [r.arrival_ns for r in requests if r.arrival_ns is not None]
    free = [min(arrivals) if arrivals else now_ns] * slots
    events: list[TokenEvent] = []
    for r in requests:
        start = max(heapq.heappop(free), r.arrival_ns if r.arrival_ns is not None else now_ns)
        if closed:
            events.append(TokenEvent(r.id, start, 0))
        t, left = start + ttft, n_out
        while left > 0:
            k = min(per_event, left)
            left -= k
            events.append(TokenEvent(r.id, t, k, finished=left == 0))
            t += itl
        heapq.heappush(free, t - itl)
    events.sort(key=lambda e: (e.t_ns, e.request_id, e.n_tokens))
    return events


@hookimpl
def generate_stream(
    model: LoadedModel, requests: Sequence[Request], params: GenerationConfig, config: ExperimentConfig
) -> Iterator[TokenEvent] | None:
    """Stream the scheduled events, waiting for each one's instant unless ``sleep = false``."""
    if model.backend != NAME:
        return None
    _calls[0] += 1
    _maybe_fail(_opts(config), "generate")
    return _stream(requests, config)


def _stream(requests: Sequence[Request], config: ExperimentConfig) -> Iterator[TokenEvent]:
    begin = time.monotonic_ns()
    sleep = bool(_opts(config).get("sleep", True))
    try:
        for ev in schedule(requests, config, begin):
            if sleep:
                wait = ev.t_ns - time.monotonic_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
            yield ev
    finally:
        _busy.append((begin, time.monotonic_ns()))


class ScriptedMeter:
    """An :class:`~lem.types.EnergyMeter` whose power is ``idle_w``, or ``busy_w`` while generating."""

    name = NAME

    def __init__(self, devices: Sequence[int], idle_w: float, busy_w: float) -> None:
        self.devices = tuple(devices)
        self.idle_w, self.busy_w = idle_w, busy_w
        self._t0 = 0

    def start(self) -> None:
        """Open a window now."""
        self._t0 = time.monotonic_ns()

    def stop(self) -> EnergyWindow:
        """Energy since :meth:`start`: idle power plus the extra power of the busy time inside the window."""
        t1 = time.monotonic_ns()
        busy = sum(max(0, min(e, t1) - max(s, self._t0)) for s, e in _busy) / 1e9
        dur = (t1 - self._t0) / 1e9
        energy = self.idle_w * dur + (self.busy_w - self.idle_w) * busy
        peak = self.busy_w if busy > 0 else self.idle_w
        devices = tuple(
            DeviceEnergy(d, f"SCRIPTED-{d}", energy, "counter", None, energy / dur if dur else None, peak)
            for d in self.devices
        )
        timeline = tuple({"t_s": 0.0, "device": d, "power_w": self.idle_w, "temperature_c": 40.0} for d in self.devices)
        return EnergyWindow(dur, devices, timeline)

    def environment(self) -> list[dict[str, Any]]:
        """Facts per device."""
        return [{"index": d, "name": "Scripted GPU", "uuid": f"SCRIPTED-{d}"} for d in self.devices]

    def close(self) -> None:
        """Nothing to release."""


@hookimpl
def measure_energy(meter: str, devices: Sequence[int], config: ExperimentConfig) -> ScriptedMeter | None:
    """The scripted meter, only when asked for by name."""
    if meter != NAME:
        return None
    opts = _opts(config)
    return ScriptedMeter(devices, float(opts.get("idle_w", 100.0)), float(opts.get("busy_w", 300.0)))


def experiment(tables: dict[str, Any] | None = None, exp_id: str = "exp", **top: Any) -> Experiment:
    """An :class:`~lem.configfile.loading.Experiment` on the scripted backend from TOML-shaped tables (not validated:
    ``scripted`` is not an installed entry point, so the core's name checks would refuse it)."""
    doc: dict[str, Any] = {"model": "random:tiny-llama", "backend": NAME, **top}
    doc.update(tables or {})
    config, problems = structure(doc)
    if config is None:
        raise ValueError("; ".join(p.format() for p in problems))
    return Experiment(exp_id, config)
