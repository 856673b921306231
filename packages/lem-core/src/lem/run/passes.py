"""Serving the prompt set to the backend: one request set, passes of the prompt set, the prefill-only pass.

A cycle serves the prompt set once, or again and again (new request ids, the
same prompts) until its window lasts ``measurement.min_window_s``, unless the
last requests all failed (:func:`failing`: no pass after a run of failures); the
prefill-only pass (``measurement.prefill_pass``) serves the same requests
with one output token each, all arriving at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.errors import BackendError
from lem.figures.requests import RequestTrace, collect
from lem.plugins import get_plugin_manager
from lem.prompts.promptset import Prompt
from lem.run import traffic
from lem.run.progress import Progress
from lem.types import LoadedModel, Request, TokenEvent


def serve(
    model: LoadedModel,
    requests: Sequence[Request],
    config: ExperimentConfig,
    progress: Progress,
    done_before: int = 0,
) -> list[RequestTrace]:
    """Send ``requests`` to the model's backend and collect the traces.

    :param done_before: requests of the current stage finished before these (progress counts on).
    """
    stream = get_plugin_manager().hook.generate_stream(
        model=model, requests=requests, params=config.generation, config=config
    )
    if stream is None:
        raise BackendError(f"no installed backend serves models loaded by '{model.backend}'")
    return collect(requests, _checked(stream), on_finished=lambda n: progress.advance(done_before + n))


def prefill_config(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment with one output token per request: the prefill-only pass (``measurement.prefill_pass``).

    Under arrival-scheduled traffic (``poisson``, ``constant``) its requests all arrive at once
    (``offline``): the pass measures prefill, and waiting for the schedule's arrivals would make most of
    its window idle power. Closed-loop traffic keeps its concurrency (no request waits for an arrival).
    """
    gen = attrs.evolve(
        config.generation, max_output_tokens=1, min_output_tokens=min(1, config.generation.min_output_tokens)
    )
    traffic = config.traffic
    if traffic.mode in ("poisson", "constant"):
        traffic = attrs.evolve(traffic, mode="offline")
    return attrs.evolve(config, generation=gen, traffic=traffic)


def serve_passes(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    config: ExperimentConfig,
    progress: Progress,
    c: int,
    t0: int,
    passes: int | None = None,
) -> tuple[list[RequestTrace], int]:
    """Serve the prompt set ``passes`` times, or until ``measurement.min_window_s`` has passed since ``t0``.

    Each pass has new request ids (pass p's are ``p·len(prompts) ...``), the same prompts, and arrivals
    drawn for that pass (pass 1's are the cycle's, as without a minimum window). ``(traces, passes)``.
    """
    traces: list[RequestTrace] = []
    done = 0
    min_ns = config.measurement.min_window_s * 1e9
    while True:
        done += 1
        seed = traffic.cycle_seed(config.seed, c)
        offsets = traffic.arrival_offsets_ns(
            config.traffic, len(prompts), seed if done == 1 else traffic.cycle_seed(seed, done)
        )
        start = t0 if done == 1 else time.monotonic_ns()
        requests = traffic.make_requests(prompts, offsets, t0_ns=start, first_id=(done - 1) * len(prompts))
        traces += serve(model, requests, config, progress, done_before=len(traces))
        if failing(traces, len(prompts)):
            progress.note(f"stopped after pass {done}: the last requests all failed ({traces[-1].error})")
            return traces, done
        if passes is not None and done >= passes:
            return traces, done
        if passes is None and time.monotonic_ns() - t0 >= min_ns:
            return traces, done


#: A cycle serves no further pass once this many requests in a row have failed (or a whole pass has).
CONSECUTIVE_FAILURES_STOP = 32


def failing(traces: Sequence[RequestTrace], pass_size: int) -> bool:
    """Whether the last ``min(CONSECUTIVE_FAILURES_STOP, pass_size)`` requests all failed: serving the prompt
    set again would only send a failing server the same requests (the failures stay recorded)."""
    run = min(CONSECUTIVE_FAILURES_STOP, pass_size)
    return run > 0 and len(traces) >= run and all(t.error is not None for t in traces[-run:])


def _checked(stream: Iterable[Any]) -> Iterator[TokenEvent]:
    for ev in stream:
        if not isinstance(ev, TokenEvent):
            raise BackendError(f"backend yielded {type(ev).__name__}, expected lem.types.TokenEvent")
        yield ev
