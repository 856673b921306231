"""When requests arrive: offline, Poisson, constant rate, or closed loop at a fixed concurrency.

Arrival offsets come from a generator seeded by the experiment's seed and the
cycle number, so every backend sees the same arrival pattern in the same
cycle. Latency is counted from a request's arrival (as vLLM's serving
benchmark and MLPerf's server scenario do), so time spent queueing shows up
in TTFT.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from lem.config import TrafficConfig
from lem.prompts.promptset import Prompt
from lem.types import Request


def arrival_offsets_ns(traffic: TrafficConfig, n: int, seed: int) -> list[int] | None:
    """Offsets (ns) from the start of a cycle at which each of ``n`` requests arrives.

    ``offline``: all at 0. ``poisson``: exponential gaps of mean ``1/rate``,
    the first request at 0. ``constant``: one every ``1/rate`` seconds, the
    first at 0. ``concurrency`` (closed loop): ``None``, a request arrives
    when the backend submits it.
    """
    if traffic.mode == "concurrency":
        return None
    if traffic.mode == "offline":
        return [0] * n
    if traffic.rate is None or traffic.rate <= 0:
        raise ValueError(f"traffic.mode = {traffic.mode!r} needs traffic.rate > 0")
    gap = 1e9 / traffic.rate
    if traffic.mode == "constant":
        return [round(i * gap) for i in range(n)]
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for i in range(n):
        if i:
            t += rng.expovariate(1.0) * gap
        offsets.append(round(t))
    return offsets


def cycle_seed(seed: int, cycle: int) -> int:
    """The arrival generator's seed for one cycle (0 for the warm-up)."""
    return seed * 1_000_003 + cycle


def make_requests(
    prompts: Sequence[Prompt],
    offsets_ns: Sequence[int] | None,
    t0_ns: int | None = None,
    first_id: int = 0,
) -> list[Request]:
    """Fresh :class:`Request` objects for ``prompts``, arriving at ``t0_ns + offset`` (now by default).

    With ``offsets_ns = None`` (closed loop) requests carry no arrival time.
    """
    if offsets_ns is not None and len(offsets_ns) != len(prompts):
        raise ValueError("one arrival offset per prompt is needed")
    t0 = time.monotonic_ns() if t0_ns is None else t0_ns
    out = []
    for i, p in enumerate(prompts):
        arrival = None if offsets_ns is None else t0 + offsets_ns[i]
        out.append(
            Request(
                id=first_id + i,
                prompt=p.text,
                input_tokens=p.n_tokens,
                prompt_token_ids=p.token_ids,
                arrival_ns=arrival,
            )
        )
    return out
