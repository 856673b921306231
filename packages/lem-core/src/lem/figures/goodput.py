"""Goodput: the requests that met the experiment's ``[slo]``, per second and per joule, for every backend.

Computed from the same per-request figures as every latency (:func:`lem.figures.requests.request_metrics`)
and from the experiment's ``[slo]`` (:class:`lem.config.SloConfig`, restructured from the stored config when
``lem results aggregate`` recomputes it).

Rules (docs/configuration.md, ``[slo]``):

- A request meets the SLO when it did not fail, finished, and each configured latency is within
  its target (``<=``): TTFT <= ``ttft_ms``, TPOT <= ``tpot_ms``, E2E <= ``e2e_ms``.
- A request with one output token has no TPOT (no time between tokens); it meets ``tpot_ms``, as in
  vLLM's ``bench serve`` goodput (which takes its TPOT as 0). TTFT and E2E still apply to it.
- ``share``: good requests / all requests of the cycle (failed ones included).
- ``requests_per_s``: good requests / the cycle's window duration.
- ``j_per_good_request``: the window's total energy / good requests (and the same above idle);
  null with a reason without energy or without a good request, never 0 or infinite.
- The percentile check, per configured latency: ``observed_ms`` is the nearest-rank percentile
  (the smallest latency that at least ``percentile`` % of all the cycle's requests are within)
  with failed requests counted as slower than any target, so ``met`` (``observed_ms <= target``)
  holds exactly when at least ``percentile`` % of the requests are within the target. The
  ``ttft_s.p99``-style figures interpolate between samples over the requests that did not fail
  instead: they can differ from ``observed_ms`` by up to one sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lem.config import SloConfig
from lem.figures.energy import energy_per

#: ``[slo]`` target -> the per-request latency (seconds) it bounds.
TARGETS = {"ttft_ms": "ttft_s", "tpot_ms": "tpot_s", "e2e_ms": "e2e_s"}
#: Per-cycle figures that get a confidence interval across cycles (keys of the goodput block).
GOODPUT_FIGURES = ("share", "requests_per_s", "j_per_good_request", "dynamic_j_per_good_request")
NO_SLO = "no [slo] target is configured (set slo.ttft_ms, slo.tpot_ms or slo.e2e_ms)"
NO_GOOD = "no request met the SLO in this cycle"
FAILED_AT_PERCENTILE = "the percentile falls on a failed or unfinished request"
NO_TPOT_UNDER_BEAM = "slo.tpot_ms cannot be checked under beam search (tokens do not stream)"


def slo_from_config(slo: SloConfig) -> dict[str, Any] | None:
    """The ``[slo]`` as the results record it (``{"ttft_ms": 200.0, ..., "percentile": 99.0}``), or ``None``
    when no target is set."""
    targets = slo.targets_ms
    if not targets:
        return None
    return {**dict.fromkeys(TARGETS), **targets, "percentile": float(slo.percentile)}


def latency_ms(r: Mapping[str, Any], target: str) -> float | None:
    """The latency that ``target`` bounds for one request (``request_metrics`` form), in ms; ``None`` when
    the request failed, did not finish or has no such latency (it then meets no target)."""
    if r["error"] is not None or not r["finished"] or r["ttft_s"] is None:
        return None
    value = r[TARGETS[target]]
    if value is None and target == "tpot_ms" and r["output_tokens"] == 1:
        # TPOT is undefined with one output token: no time between tokens was spent (vLLM takes 0).
        return 0.0
    return None if value is None else float(value) * 1e3


def within(r: Mapping[str, Any], target: str, limit_ms: float) -> bool:
    """Whether one request (``request_metrics`` form) is within ``limit_ms`` for ``target``."""
    value = latency_ms(r, target)
    return value is not None and value <= limit_ms


def meets(r: Mapping[str, Any], slo: Mapping[str, Any]) -> bool:
    """Whether one request meets every configured target of ``slo``."""
    return all(within(r, t, slo[t]) for t in TARGETS if slo[t] is not None)


def nearest_rank(values: Sequence[float], n: int, q: float) -> float | None:
    """The nearest-rank ``q``-th percentile of ``n`` requests of which ``values`` (sorted) are known and the
    rest failed (slower than any target): ``None`` when it falls on a failed request."""
    rank = max(1, math.ceil(q * n / 100 - 1e-9))  # the tolerance keeps 99 % of 100 at rank 99
    return values[rank - 1] if rank <= len(values) else None


def checks(per_request: Sequence[Mapping[str, Any]], slo: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The percentile check of each configured latency over ``per_request`` (see the module docstring)."""
    q, n = float(slo["percentile"]), len(per_request)
    out = {}
    for target in TARGETS:
        if slo[target] is None:
            continue
        known = sorted(v for r in per_request if (v := latency_ms(r, target)) is not None)
        observed = nearest_rank(known, n, q) if n else None
        n_within = sum(1 for v in known if v <= slo[target])
        out[target] = {
            "target_ms": slo[target],
            "percentile": q,
            "within": n_within,
            "share_within": n_within / n if n else None,
            "observed_ms": observed,
            "observed_reason": None if observed is not None or not n else FAILED_AT_PERCENTILE,
            "met": None if not n else observed is not None and observed <= slo[target],
        }
    return out


def cycle_goodput(
    per_request: Sequence[Mapping[str, Any]],
    duration_s: float,
    energy: Mapping[str, Any],
    config: SloConfig,
    num_beams: int = 1,
) -> dict[str, Any]:
    """The goodput block of one cycle: the SLO, good requests, share, req/s, J per good request, checks.

    :param per_request: ``request_metrics`` of every request of the cycle.
    :param energy: the cycle's energy block (:func:`lem.figures.energy.energy_figures`).
    :param config: the experiment's ``[slo]``.
    """
    slo = slo_from_config(config)
    out: dict[str, Any] = {
        "slo": slo,
        "reason": None,
        "energy_reason": None,
        "requests": len(per_request),
        "good_requests": None,
        **dict.fromkeys(GOODPUT_FIGURES),
        "checks": {},
        "met": None,
    }
    if slo is None:
        out["reason"] = NO_SLO
        return out
    if slo["tpot_ms"] is not None and num_beams > 1:
        out["reason"] = NO_TPOT_UNDER_BEAM
        return out
    good = sum(1 for r in per_request if meets(r, slo))
    out["good_requests"] = good
    out["share"] = good / len(per_request) if per_request else None
    out["requests_per_s"] = good / duration_s if duration_s > 0 else None
    out["checks"] = checks(per_request, slo)
    verdicts = [c["met"] for c in out["checks"].values()]
    out["met"] = None if None in verdicts else all(verdicts)
    out.update(energy_per(energy, good, "good_request", NO_GOOD))
    return out


def summary_block(
    config: SloConfig, blocks: Sequence[Mapping[str, Any]], per_request: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The summary's ``slo``: the SLO, cycles that met every check, and the checks over all requests pooled.

    :param blocks: the goodput block of every cycle; ``per_request``: every request of every cycle.
    """
    slo = slo_from_config(config)
    if slo is None:
        return {"slo": None, "reason": NO_SLO}
    reason = next((str(b["reason"]) for b in blocks if b.get("reason")), None)
    if reason is not None:
        return {"slo": slo, "reason": reason}
    verdicts = [b.get("met") for b in blocks]
    pooled = checks(per_request, slo)
    good = sum(1 for r in per_request if meets(r, slo))
    return {
        "slo": slo,
        "reason": None,
        "cycles": len(blocks),
        "cycles_met": sum(1 for v in verdicts if v is True),
        "pooled_good_requests": good,
        "pooled_requests": len(per_request),
        "pooled_share": good / len(per_request) if per_request else None,
        "pooled_checks": pooled,
        "pooled_met": all(c["met"] for c in pooled.values()) if per_request else None,
    }
