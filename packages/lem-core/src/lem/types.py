"""The data the hooks pass around.

Everything here is a frozen attrs class (or a Protocol for the one object with
behaviour, the energy meter). Plugins build these; the core reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import attrs

Severity = Literal["error", "warning"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: "No value" for :attr:`Problem.value` (``None`` is a value a config can hold).
MISSING: Any = _Missing()


@attrs.frozen
class Problem:
    """One thing wrong with a configuration, found by a ``validate_config`` hook.

    :param severity: ``"error"`` stops the run; ``"warning"`` is shown and the run goes on.
    :param path: dotted config key the problem is about (``"generation.top_p"``), or ``""``.
    :param message: what is wrong, e.g. ``"must be between 0 and 1"``.
    :param hint: what to do about it.
    :param value: the offending value, when there is one (shown with ``repr``).
    """

    severity: Severity
    path: str
    message: str
    hint: str = ""
    value: Any = attrs.field(default=MISSING, repr=False, eq=False)

    def format(self, source: str = "") -> str:
        """Render the problem as the one line the CLI prints."""
        where = f"{source}: " if source else ""
        shown = "" if self.value is MISSING else f" = {self.value!r}"
        key = f"{self.path}{shown}: " if self.path else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}{self.severity}: {key}{self.message}{hint}"


def error(path: str, message: str, hint: str = "", value: Any = MISSING) -> Problem:
    """Shorthand for an error :class:`Problem`."""
    return Problem("error", path, message, hint, value)


def warning(path: str, message: str, hint: str = "", value: Any = MISSING) -> Problem:
    """Shorthand for a warning :class:`Problem`."""
    return Problem("warning", path, message, hint, value)


@attrs.frozen
class Request:
    """One prompt to serve.

    :param id: unique within a cycle; TokenEvents refer to it.
    :param prompt: the prompt text (chat template already applied if asked for).
    :param prompt_token_ids: token ids, when the prompt source produced them
        (synthetic prompts of an exact length do); backends should prefer them
        over re-tokenizing ``prompt`` so input lengths are exact.
    :param input_tokens: number of input tokens by the model's tokenizer.
    :param arrival_ns: ``time.monotonic_ns()`` at which the request arrives.
        A backend must not start a request before it arrives; latencies count
        from it, so queueing shows in TTFT. ``None`` under closed-loop
        traffic (fixed concurrency): the request arrives when the backend
        submits it, and the backend reports that with a zero-token event.
    """

    id: int
    prompt: str
    input_tokens: int
    prompt_token_ids: tuple[int, ...] | None = None
    arrival_ns: int | None = None


@attrs.frozen
class TokenEvent:
    """Tokens produced for one request at one instant.

    :param request_id: the :class:`Request` this belongs to.
    :param t_ns: ``time.monotonic_ns()`` when the tokens became available.
    :param n_tokens: output tokens added by this event (pads excluded). Zero
        marks the moment the backend submitted the request (needed under
        closed-loop traffic, allowed always).
    :param finished: this is the request's last event.
    :param token_ids: the ids added, when the backend knows them (used for
        cross-backend consistency checks, never for metrics).
    :param error: set on a request's last event (``finished=True``) when the
        request failed (an HTTP error, a timeout, an engine abort): the
        request counts as failed with this reason; tokens it produced before
        failing are still counted.
    :param text: the output text added, when the backend streams text (an HTTP server does); ``None``
        when it does not, and then the core decodes the request's ``token_ids`` with the model's
        tokenizer. Either way the request row's ``output_text`` is what ``[quality]`` scores.
    """

    request_id: int
    t_ns: int
    n_tokens: int
    finished: bool = False
    token_ids: tuple[int, ...] = ()
    error: str | None = None
    text: str | None = None


@attrs.frozen
class LoadedModel:
    """A backend's handle on a loaded model.

    :param backend: name of the backend plugin that loaded it.
    :param handle: whatever the backend needs (a transformers model, an engine).
    :param tokenizer: a Hugging Face compatible tokenizer (``encode``,
        ``decode``, ``apply_chat_template``), used by prompt sources.
    :param devices: CUDA device ordinals (as this process sees them) the model
        occupies; energy is measured on exactly these. Empty on the CPU.
    :param model_config: the model's architecture (Hugging Face ``config.to_dict()``
        form), used for analytical FLOPs.
    :param num_parameters: parameter count, when known.
    :param info: backend facts worth recording (versions, resolved engine args); a list of strings under
        ``"warnings"`` is shown when the model has loaded and kept in the summary's warnings.
    :param synchronize: waits until all queued device work is done; called at
        both edges of every energy window.
    :param close: frees the model (and ends engine processes).
    """

    backend: str
    handle: Any
    tokenizer: Any = None
    devices: tuple[int, ...] = ()
    model_config: Mapping[str, Any] = attrs.field(factory=dict)
    num_parameters: int | None = None
    info: Mapping[str, Any] = attrs.field(factory=dict)
    synchronize: Callable[[], None] = attrs.field(default=lambda: None)
    close: Callable[[], None] = attrs.field(default=lambda: None)


EnergyMethod = Literal["counter", "power-integration", "estimate"]
#: ``DeviceEnergy.device`` of a figure that covers every device of its component.
ALL_DEVICES = -1


@attrs.frozen
class DeviceEnergy:
    """Energy of one device (a GPU, a CPU socket, its memory) over one window.

    :param device: the CUDA ordinal of a GPU, the socket of a CPU or DRAM
        domain, or :data:`ALL_DEVICES` when the figure covers every device of
        its component (a meter that reports only totals).
    :param energy_j: joules, or ``None`` when it could not be measured (then
        ``reason`` says why). Never 0 for "unknown".
    :param method: how ``energy_j`` was obtained.
    :param reason: why ``energy_j`` is ``None``; with ``method = "estimate"``,
        what the estimate rests on (a TDP, a constant per GB of RAM).
    :param component: what was metered: ``"gpu"`` (the default), ``"cpu"``
        (a CPU package) or ``"dram"`` (main memory).
    :param meter: the meter that produced the figure, when several are combined.
    :param co2eq_kg: CO2-equivalent of ``energy_j`` (kg) where the meter knows
        the grid's carbon intensity (CodeCarbon); ``None`` otherwise.
    :param integrated_j: the power timeline integrated over the window, beside a
        counter figure (the cross-check); ``None`` without a second source.
    :param update_period_s: how often the counter advances; ``resolution_j`` its step.
    :param edge_lag_s: how far in time the counter's readings at the window's two edges may be from the
        edges, together (s): one update period when read as they were, less where the meter aligned them
        to the counter's updates.
    """

    device: int
    uuid: str | None
    energy_j: float | None
    method: EnergyMethod | None
    reason: str | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    component: str = "gpu"
    meter: str | None = None
    co2eq_kg: float | None = None
    #: The same window's energy from the meter's power timeline integrated, beside a counter figure (the
    #: cross-check, see docs/energy.md); ``None`` when the meter has no second source.
    integrated_j: float | None = None
    #: How often the energy counter advances (s), and its resolution (J), where the meter knows them.
    update_period_s: float | None = None
    resolution_j: float | None = None
    edge_lag_s: float | None = None


@attrs.frozen
class EnergyWindow:
    """What an :class:`EnergyMeter` measured between ``start`` and ``stop``.

    :param duration_s: wall time of the window by the meter's clock.
    :param devices: one entry per measured device.
    :param timeline: sampled rows (``t_s`` since window start, ``device`` and
        whatever the meter samples: ``power_w``, ``temperature_c``, ...).
    :param warnings: anything that makes the figure less trustworthy (a window
        shorter than the counter's update period, a counter reset, ...).
    """

    duration_s: float
    devices: tuple[DeviceEnergy, ...]
    timeline: tuple[Mapping[str, Any], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def total_j(self) -> float | None:
        """Sum over devices, or ``None`` if any device's energy is unknown."""
        values = [d.energy_j for d in self.devices]
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))


class EnergyMeter(Protocol):
    """An open energy meter on a set of devices, returned by ``measure_energy``.

    The caller synchronizes the device before :meth:`start` and after the
    measured work, before :meth:`stop`.
    """

    name: str

    def start(self) -> None:
        """Open a window: read counters now and start sampling the timeline."""

    def stop(self) -> EnergyWindow:
        """Close the window opened by :meth:`start` and return what it measured."""

    def environment(self) -> list[dict[str, Any]]:
        """Per-device facts for ``environment.json`` (name, UUID, driver, power limit...)."""

    def close(self) -> None:
        """Release the meter (stop threads, shut the library down)."""
