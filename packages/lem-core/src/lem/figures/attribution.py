"""Energy apart: prefill and decode (measured by a prefill-only pass), per engine step and per request (estimates).

- Measured split (``measurement.prefill_pass``): after its window, a cycle
  serves the same requests again with one output token each, in a meter
  window of its own. Prefill J is that window's energy; decode J is the
  cycle's total minus it, per token after each request's first (the first
  token is what the prefill pass also produced). The prefill pass serves its
  requests all at once, whatever ``[traffic]`` says (:func:`lem.run.passes.prefill_config`): it
  measures prefill, not time spent waiting for arrivals. A cycle whose prefill
  pass took more energy than the whole cycle (decode energy below zero: a busy
  host, a noisy meter) cannot be split: its decode figures are null with the
  reason, the raw differences are kept apart, and the block is flagged
  ``negative_decode_energy``; the same holds for the energy above idle alone.
- Steps (an estimate): token events that arrive within ``STEP_GAP_NS`` of
  each other are one engine step; the power timeline integrated from the
  previous step's end to this one's is the step's energy. A step that brings
  only first tokens is prefill, only later tokens is decode, both is mixed
  (chunked prefill, continuous batching). The time of each kind is kept too
  (``prefill_s``...): the share of a cycle that prefill takes.
- Per request (an estimate): the window's energy shared by token share:
  prefill energy by input tokens and decode energy by decode tokens when the
  split is measured, else the total by output tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lem.figures.requests import RequestTrace
from lem.figures.stats import distribution
from lem.figures.steady import integrate, power_series

NS = 1e9
#: Token events closer than this belong to one engine step (a batch's sequences are streamed one by one).
STEP_GAP_NS = 200_000
PREFILL_METHOD = (
    "measured: a prefill-only pass of the same requests (1 output token each, all arriving at once) in its "
    "own meter window; decode = cycle total - prefill pass, per output token after each request's first"
)
#: The flag of a cycle whose decode energy (total, or above idle) came out below zero.
NEGATIVE_DECODE = "negative_decode_energy"
STEPS_METHOD = (
    "estimate: token events within 0.2 ms of each other are one engine step; each step's energy is the power "
    "timeline integrated since the previous step; steps bringing only first tokens are prefill, only later "
    "tokens decode, both mixed"
)
PER_REQUEST_BY_SPLIT = (
    "estimate: measured prefill energy shared by input tokens plus decode energy shared by decode tokens"
)
PER_REQUEST_BY_OUTPUT = "estimate: the cycle's total energy shared by output tokens"


def decode_tokens(traces: Sequence[RequestTrace]) -> int:
    """Output tokens after each request's first one."""
    return sum(max(0, sum(n for _, n in t.events) - 1) for t in traces)


def prefill_decode(
    cycle_total_j: float | None,
    cycle_idle_j: float | None,
    traces: Sequence[RequestTrace],
    prefill: Mapping[str, Any] | None,
    prefill_energy: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The measured prefill/decode block of a cycle (``None`` figures with a reason when not measured)."""
    out: dict[str, Any] = dict.fromkeys(
        (
            "prefill_j",
            "prefill_input_tokens",
            "prefill_j_per_input_token",
            "prefill_duration_s",
            "decode_j",
            "decode_tokens",
            "decode_j_per_output_token",
            "prefill_dynamic_j",
            "decode_dynamic_j",
            "decode_dynamic_j_per_output_token",
        )
    )
    out.update({"method": None, "reason": None, "estimate": False, "flags": [], "negative": None})
    if prefill is None:
        out["reason"] = "no prefill-only pass (measurement.prefill_pass = false)"
        return out
    in_tokens = sum(int(r["input_tokens"]) for r in prefill["requests"])
    out["prefill_input_tokens"] = in_tokens
    out["prefill_duration_s"] = prefill["window"]["duration_s"]
    pf = None if prefill_energy is None else prefill_energy.get("total_j")
    if pf is None or cycle_total_j is None:
        why = (prefill_energy or {}).get("reason") if pf is None else "the cycle's own energy is unknown"
        out["reason"] = why or "no energy was measured"
        return out
    dec_tokens = decode_tokens(traces)
    out.update(
        {
            "method": PREFILL_METHOD,
            "prefill_j": pf,
            "prefill_j_per_input_token": pf / in_tokens if in_tokens else None,
            "decode_j": cycle_total_j - pf,
            "decode_tokens": dec_tokens,
            "decode_j_per_output_token": (cycle_total_j - pf) / dec_tokens if dec_tokens else None,
        }
    )
    pf_idle = None if prefill_energy is None else prefill_energy.get("idle_j")
    if pf_idle is not None and cycle_idle_j is not None:
        out["prefill_dynamic_j"] = pf - pf_idle
        out["decode_dynamic_j"] = (cycle_total_j - cycle_idle_j) - (pf - pf_idle)
        if dec_tokens:
            out["decode_dynamic_j_per_output_token"] = out["decode_dynamic_j"] / dec_tokens
    _flag_negative_decode(out, cycle_total_j)
    return out


def _flag_negative_decode(out: dict[str, Any], cycle_total_j: float) -> None:
    """Null the decode figures of a split whose decode energy is below zero; keep the raw values apart, flagged.

    Decode J below zero: every decode figure. Only decode J above idle below zero: the figures above idle.
    """
    total_negative = out["decode_j"] < 0
    dynamic_negative = out["decode_dynamic_j"] is not None and out["decode_dynamic_j"] < 0
    if not (total_negative or dynamic_negative):
        return
    dropped = ["decode_dynamic_j", "decode_dynamic_j_per_output_token"]
    if total_negative:
        dropped += ["decode_j", "decode_j_per_output_token"]
    out["negative"] = {k: out[k] for k in sorted(dropped)}
    out.update(dict.fromkeys(dropped))
    out["flags"] = [NEGATIVE_DECODE]
    if total_negative:
        out["reason"] = (
            f"negative decode energy: the prefill-only pass took {out['prefill_j']:.4g} J, more than the whole "
            f"cycle's {cycle_total_j:.4g} J (a busy host or a noisy meter); decode figures null, raw values in "
            "'negative'"
        )
    else:
        out["reason"] = (
            f"negative decode energy above idle: the prefill-only pass took {out['prefill_dynamic_j']:.4g} J above "
            "idle, more than the whole cycle; decode figures above idle null, raw values in 'negative'"
        )


def step_energy(
    traces: Sequence[RequestTrace], timeline: Sequence[Mapping[str, Any]] | None, offset_s: float
) -> dict[str, Any]:
    """Energy per kind of engine step (prefill, mixed, decode) from the timeline: an estimate (see the module)."""
    out: dict[str, Any] = {"method": STEPS_METHOD, "estimate": True, "reason": None, "steps": None}
    out.update(dict.fromkeys(("prefill_j", "mixed_j", "decode_j", "after_last_token_j")))
    out.update(dict.fromkeys(("prefill_s", "mixed_s", "decode_s")))
    events = sorted((ts, i == 0) for t in traces for i, (ts, _) in enumerate(t.events))
    if not events:
        out["reason"] = "no token was produced"
        return out
    steps: list[tuple[int, set[bool]]] = []  # (end ns, kinds of its tokens: True = a first token)
    for ts, first in events:
        if steps and ts - steps[-1][0] <= STEP_GAP_NS:
            steps[-1] = (ts, steps[-1][1] | {first})
        else:
            steps.append((ts, {first}))
    series = power_series(timeline or ())
    sums = dict.fromkeys(("prefill_s", "mixed_s", "decode_s", "prefill_j", "mixed_j", "decode_j"), 0.0)
    prev = 0.0  # the first step runs from the window's opening (timeline seconds)
    for end_ns, kinds in steps:
        end = end_ns / NS + offset_s
        kind = "mixed" if len(kinds) == 2 else ("prefill" if True in kinds else "decode")
        sums[f"{kind}_j"] += sum(integrate(points, prev, end) for points in series.values())
        sums[f"{kind}_s"] += end - prev
        prev = end
    out["steps"] = len(steps)
    out.update({k: v for k, v in sums.items() if k.endswith("_s")})
    if not series:
        out["reason"] = "no power timeline for this cycle" if timeline is None else "the timeline has no power samples"
        return out
    last = max(t for points in series.values() for t, _ in points)
    out.update({k: v for k, v in sums.items() if k.endswith("_j")})
    out["after_last_token_j"] = sum(integrate(points, prev, max(prev, last)) for points in series.values())
    return out


def per_request(traces: Sequence[RequestTrace], total_j: float | None, split: Mapping[str, Any]) -> dict[str, Any]:
    """Energy per request by token share: an estimate, in request order (see the module)."""
    out: dict[str, Any] = {"estimate": True, "method": None, "reason": None, "j": None, "distribution": None}
    if total_j is None:
        out["reason"] = "the cycle's energy is unknown"
        return out
    outputs = [sum(n for _, n in t.events) for t in traces]
    if split.get("prefill_j") is not None and split.get("decode_j") is not None and split.get("decode_tokens"):
        inputs = sum(t.input_tokens for t in traces)
        dec = split["decode_tokens"]
        j = [
            split["prefill_j"] * t.input_tokens / inputs + split["decode_j"] * max(0, o - 1) / dec
            for t, o in zip(traces, outputs, strict=True)
        ]
        out["method"] = PER_REQUEST_BY_SPLIT
    elif sum(outputs):
        j = [total_j * o / sum(outputs) for o in outputs]
        out["method"] = PER_REQUEST_BY_OUTPUT
    else:
        out["reason"] = "no output token to share the energy by"
        return out
    out["j"] = j
    out["distribution"] = distribution(j)
    return out
