"""The hooks a ``lem`` plugin can implement.

These docstrings are the plugin reference. Every hook is called with keyword
arguments; an implementation may accept fewer arguments than the spec.
A plugin is a module (or object) with ``@hookimpl`` functions, published by a
distribution with an entry point in group ``lem``; the entry point's name is
the backend's or meter's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from lem.config import ExperimentConfig, GenerationConfig, QualityConfig
    from lem.phases import LoadPhases
    from lem.types import EnergyMeter, LoadedModel, Problem, Request, TokenEvent

hookspec = pluggy.HookspecMarker("lem")
hookimpl = pluggy.HookimplMarker("lem")


@hookspec(firstresult=True)
def load_model(backend: str, config: ExperimentConfig, phases: LoadPhases) -> LoadedModel | None:
    """Load the experiment's model if ``backend`` is yours.

    Called once per experiment, before the idle baseline. Loading time and
    energy are measured around this call.

    :param backend: the backend name the experiment asks for (``config.backend``).
    :param config: the resolved experiment; your own table is ``config.options_for(backend)``.
    :param phases: optional to accept. ``with phases("build"): ...`` meters the block as
        its own phase of the load (``load.phases.build``: time and energy apart from
        the rest of the load); finish the block's device work before it ends. Phases
        do not nest and each name is used once (see :mod:`lem.phases`).
    :returns: a :class:`~lem.types.LoadedModel`, or ``None`` if ``backend`` is not yours.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def generate_stream(
    model: LoadedModel,
    requests: Sequence[Request],
    params: GenerationConfig,
    config: ExperimentConfig,
) -> Iterator[TokenEvent] | None:
    """Serve ``requests`` on ``model`` if it is yours, streaming token events.

    Yield one :class:`~lem.types.TokenEvent` per request per decode step (also
    in batches), the last one with ``finished=True``. Each event's ``t_ns`` is
    the instant its tokens became available; events may reach the caller later
    than that (a backend may hand over a batch's events when the batch ends),
    since metrics come from the timestamps, not from when events arrive.
    Honour each request's ``arrival_ns``: never start a request before it arrives. Under closed-loop traffic
    (``config.traffic.mode == "concurrency"``) keep ``config.traffic.concurrency``
    requests in flight and emit a zero-token event when you submit each one.

    This must be a plain function that returns an iterator (or ``None``): a
    generator function always returns a generator, never ``None``, so it would
    claim every model.

    :param model: a handle returned by some backend's ``load_model``; check ``model.backend``.
    :param requests: the requests of one cycle (or of the warm-up).
    :param params: the ``[generation]`` table.
    :param config: the whole experiment (batching, traffic, your own table).
    :returns: an iterator of token events, or ``None`` if ``model`` is not yours.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def measure_energy(meter: str, devices: Sequence[int], config: ExperimentConfig) -> EnergyMeter | None:
    """Open an energy meter on ``devices`` if ``meter`` is yours.

    With ``meter == "auto"`` return a meter if yours works on this machine,
    else ``None`` so the next plugin is tried. If ``meter`` names you but
    cannot work here (no driver, no library), raise
    :class:`~lem.errors.MeterUnavailable` with the reason: the core then
    records energy as ``null`` with that reason.

    :param meter: ``config.measurement.energy_meter``, or one name of its list
        (several meters are opened one by one and combined by :mod:`lem.run.meters`).
    :param devices: CUDA device ordinals as this process sees them
        (``CUDA_VISIBLE_DEVICES`` applies); map them to hardware by UUID.
    :param config: the experiment (``config.measurement.sampling_interval_ms``...).
    :returns: an :class:`~lem.types.EnergyMeter`, or ``None``.

    Stops at first non-None result.
    """


@hookspec
def validate_config(config: ExperimentConfig) -> list[Problem]:  # type: ignore[empty-body]
    """Check the parts of ``config`` you own.

    Called for every experiment before anything runs; errors stop the run,
    warnings are shown. A backend checks its own table
    (``config.options_for(name)``) and combinations it cannot serve, but only
    when ``config.backend`` is itself; a meter checks ``[measurement]`` when it
    is the chosen meter.

    :param config: the resolved experiment.
    :returns: a list of :class:`~lem.types.Problem` (empty when all is well).
    """


@hookspec
def register_presets() -> Mapping[str, Mapping[str, Any]]:  # type: ignore[empty-body]
    """Contribute named presets.

    A preset is a partial experiment in TOML shape (nested tables), applied
    under the file: ``{"vllm-throughput": {"vllm": {"max_num_seqs": 256}}}``.
    A preset may set ``backend``.

    :returns: preset name to partial config.
    """


@hookspec
def register_scorers() -> Mapping[str, Callable[[str, str, QualityConfig], bool]]:  # type: ignore[empty-body]
    """Contribute scorers for ``[quality] scorer = "<name>"``.

    A scorer takes ``(output, reference, quality)``: the request's generated text, the prompt's
    reference (``dataset.reference_field``) and the ``[quality]`` table; it returns whether the
    output is correct, or raises ``ValueError`` with the reason when the pair cannot be scored
    (that request's ``correct`` is then null with the reason). lem's own scorers (``exact``,
    ``contains``, ``number``, ``choice``, ``regex``) are registered through this hook and keep
    their names.

    :returns: scorer name to scorer.
    """
