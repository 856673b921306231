"""Grouping requests into ``generate`` batches: the four ``[batching]`` strategies, honouring arrivals.

- ``static``: batches of ``batch_size`` in request order.
- ``sorted_static``: the same after sorting by input length (longest first), so a batch pads little.
- ``dynamic``: when the model is free, the requests that have arrived, in order, as many as fit
  ``batch_size`` and the token budget ``max_tokens_per_batch``.
- ``sorted_dynamic``: the same, longest arrived requests first.

The token budget counts what a left-padded batch costs: ``rows x (longest input + max_new_tokens)``.
A single request over the budget still runs, alone. A static batch starts once all of its
requests have arrived; a dynamic batch forms only from requests that have arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from lem.config import BatchingConfig, ExperimentConfig
from lem.types import Request


def input_length(request: Request) -> int:
    """Input tokens of a request: its token ids when given, else its recorded count."""
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return request.input_tokens


def arrived(request: Request, now_ns: int) -> bool:
    """True once the request has arrived (``arrival_ns`` of ``None`` means it is there)."""
    return request.arrival_ns is None or request.arrival_ns <= now_ns


def _longest_first(requests: Sequence[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: -input_length(r))


def _fits(batch: Sequence[Request], candidate: Request, batch_size: int, budget: int | None, max_new: int) -> bool:
    if len(batch) >= batch_size:
        return False
    if budget is None or not batch:
        return True
    longest = max(input_length(r) for r in (*batch, candidate))
    return (len(batch) + 1) * (longest + max_new) <= budget


def static_batches(requests: Sequence[Request], batch_size: int, sort: bool) -> list[list[Request]]:
    """Fixed batches of ``batch_size`` formed up front (the static strategies; no token budget)."""
    ordered = _longest_first(requests) if sort else list(requests)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _wait_until(t_ns: int, clock: Callable[[], int], sleep: Callable[[float], None]) -> None:
    while (left := t_ns - clock()) > 0:
        sleep(left / 1e9)


def batches(
    requests: Sequence[Request],
    batching: BatchingConfig,
    batch_size: int,
    max_new_tokens: int,
    clock: Callable[[], int] = time.monotonic_ns,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[Request]]:
    """Yield batches as they may start, sleeping until their requests have arrived.

    :param batch_size: rows per batch (``batching.batch_size``, or the concurrency under closed-loop traffic).
    """
    budget = batching.max_tokens_per_batch
    strategy = batching.strategy
    if strategy in ("static", "sorted_static"):
        for fixed in static_batches(requests, batch_size, strategy == "sorted_static"):
            arrivals = [r.arrival_ns for r in fixed if r.arrival_ns is not None]
            if arrivals:
                _wait_until(max(arrivals), clock, sleep)
            yield fixed
        return
    pending = sorted(requests, key=lambda r: r.arrival_ns or 0)
    while pending:
        now = clock()
        ready = [r for r in pending if arrived(r, now)]
        if not ready:
            _wait_until(min(r.arrival_ns or 0 for r in pending), clock, sleep)
            continue
        if strategy == "sorted_dynamic":
            ready = _longest_first(ready)
        batch: list[Request] = []
        for r in ready:
            if _fits(batch, r, batch_size, budget, max_new_tokens):
                batch.append(r)
        taken = {id(r) for r in batch}
        pending = [r for r in pending if id(r) not in taken]
        yield batch


def batch_size_for(config: ExperimentConfig) -> int:
    """Rows per batch: the concurrency under closed-loop traffic, else ``batching.batch_size``."""
    if config.traffic.mode == "concurrency" and config.traffic.concurrency:
        return config.traffic.concurrency
    return config.batching.batch_size
