"""Per-request and per-cycle figures from TokenEvents: one code path for every backend.

Raw traces (when each request arrived, when each of its tokens appeared)
are what a cycle file stores; every figure here is a pure function of them,
so ``lem results aggregate`` can recompute all of it later.

Conventions (the same as vLLM's serving benchmark):

- latency origin: the request's ``arrival_ns``; under closed-loop traffic the
  backend's zero-token submission event.
- TTFT: first token-bearing event - origin. E2E: last event - origin.
- ITL: gap between consecutive token-bearing events, split evenly over the
  tokens of an event that carries several; the extra tokens of the first
  event arrived with the first token (ITL 0). So a request with ``k`` output
  tokens has exactly ``k - 1`` ITLs.
- TPOT: ``(E2E - TTFT) / (output tokens - 1)``, only for requests with 2+ tokens.
- A failed request (its last event carries ``error``) is left out of every
  latency distribution, but its tokens count in the throughput: the engine
  did produce them.
- Beam search (``num_beams > 1``) cannot stream: every token of a request
  arrives at once, so ITL and TPOT are null with a reason, and TTFT equals E2E.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from lem.figures import flops as flops_mod
from lem.figures.stats import MIN_SAMPLES_FOR_PERCENTILES, distribution
from lem.types import Request, TokenEvent

NS = 1e9


@attrs.frozen
class RequestTrace:
    """What happened to one request: its latency origin and its token-bearing events ``(t_ns, n_tokens)``.

    :param token_ids: the generated ids, or ``None`` when the backend did not report every one.
    :param error: why the request failed (the ``error`` of its last event), ``None`` if it did not.
    :param output_text: the generated text: the events' ``text`` joined where the backend streams text,
        else decoded from ``token_ids`` by the model's tokenizer after the cycle's window
        (:func:`with_text`); ``None`` when neither is known.
    """

    id: int
    input_tokens: int
    origin_ns: int | None
    events: tuple[tuple[int, int], ...]
    finished: bool
    token_ids: tuple[int, ...] | None = None
    error: str | None = None
    output_text: str | None = None


def collect(
    requests: Sequence[Request],
    stream: Iterable[TokenEvent],
    on_finished: Callable[[int], None] | None = None,
) -> list[RequestTrace]:
    """Consume a backend's event stream into one trace per request (in request order).

    :param on_finished: called with the number of finished requests so far (progress).
    """
    by_id = {r.id: r for r in requests}
    origin: dict[int, int | None] = {r.id: r.arrival_ns for r in requests}
    events: dict[int, list[tuple[int, int]]] = {r.id: [] for r in requests}
    ids: dict[int, list[int] | None] = {r.id: [] for r in requests}
    errors: dict[int, str | None] = dict.fromkeys(by_id)
    texts: dict[int, list[str]] = {}
    finished: set[int] = set()
    for ev in stream:
        if ev.request_id not in by_id:
            raise RuntimeError(f"backend emitted an event for unknown request id {ev.request_id}")
        if ev.text is not None:
            texts.setdefault(ev.request_id, []).append(ev.text)
        if ev.n_tokens == 0:
            if origin[ev.request_id] is None:
                origin[ev.request_id] = ev.t_ns
        else:
            events[ev.request_id].append((ev.t_ns, ev.n_tokens))
            known = ids[ev.request_id]
            if known is not None:
                if len(ev.token_ids) == ev.n_tokens:
                    known.extend(ev.token_ids)
                else:  # one event without its ids makes the output unknown (never a partial digest)
                    ids[ev.request_id] = None
        if ev.error is not None:
            errors[ev.request_id] = ev.error
        if ev.finished and ev.request_id not in finished:
            finished.add(ev.request_id)
            if on_finished is not None:
                on_finished(len(finished))
    return [
        RequestTrace(
            r.id,
            r.input_tokens,
            origin[r.id],
            tuple(events[r.id]),
            r.id in finished,
            _ids(ids[r.id], events[r.id]),
            errors[r.id],
            "".join(texts[r.id]) if r.id in texts else None,
        )
        for r in requests
    ]


def with_text(traces: Sequence[RequestTrace], tokenizer: Any) -> list[RequestTrace]:
    """``traces`` with ``output_text`` decoded from ``token_ids`` by ``tokenizer`` where the backend streamed
    no text (special tokens skipped, as an answer is read); unchanged without a tokenizer."""
    if tokenizer is None:
        return list(traces)
    return [
        attrs.evolve(t, output_text=str(tokenizer.decode(list(t.token_ids), skip_special_tokens=True)))
        if t.output_text is None and t.token_ids is not None
        else t
        for t in traces
    ]


def _ids(ids: list[int] | None, events: Sequence[tuple[int, int]]) -> tuple[int, ...] | None:
    # No token at all: a backend that reports no ids looks the same as an empty output, so unknown.
    return None if ids is None or not events else tuple(ids)


def request_metrics(trace: RequestTrace) -> dict[str, Any]:
    """TTFT, E2E, TPOT (seconds), ITLs and token counts of one request; ``None`` where undefined."""
    out_tokens = sum(n for _, n in trace.events)
    itls: list[float] = []
    ttft = e2e = tpot = None
    if trace.events:
        first_t, first_n = trace.events[0]
        itls.extend([0.0] * (first_n - 1))
        prev = first_t
        for t, n in trace.events[1:]:
            itls.extend([(t - prev) / NS / n] * n)
            prev = t
        if trace.origin_ns is not None:
            ttft = (first_t - trace.origin_ns) / NS
            e2e = (trace.events[-1][0] - trace.origin_ns) / NS
            if out_tokens > 1:
                tpot = (e2e - ttft) / (out_tokens - 1)
    return {
        "id": trace.id,
        "input_tokens": trace.input_tokens,
        "output_tokens": out_tokens,
        "ttft_s": ttft,
        "e2e_s": e2e,
        "tpot_s": tpot,
        "itl_s": itls,
        "finished": trace.finished,
        "error": trace.error,
    }


#: Why ITL and TPOT are null under beam search, and what TTFT means then.
BEAM_REASON = "beam search (generation.num_beams > 1) cannot stream: every token of a request arrives at once"
BEAM_TTFT_NOTE = "beam search: the first token arrives with the last, so TTFT equals E2E"


def failure_reasons(per_request: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``{reason: number of requests}`` of the failed requests, most frequent first."""
    counts: dict[str, int] = {}
    for r in per_request:
        if r["error"] is not None:
            counts[r["error"]] = counts.get(r["error"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def latency_distributions(per_request: Sequence[Mapping[str, Any]], num_beams: int = 1) -> dict[str, dict[str, Any]]:
    """``ttft_s``, ``tpot_s``, ``e2e_s`` and ``itl_s`` over the requests that did not fail.

    Under beam search ITL and TPOT are empty with a ``reason`` and TTFT carries a ``note``.
    """
    ok = [r for r in per_request if r["error"] is None]
    beam = num_beams > 1
    dists: dict[str, dict[str, Any]] = {}
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        dists[key] = distribution([] if beam and key == "tpot_s" else [r[key] for r in ok if r[key] is not None])
    dists["itl_s"] = distribution([] if beam else [x for r in ok for x in r["itl_s"]])
    if beam:
        dists["itl_s"]["reason"] = dists["tpot_s"]["reason"] = BEAM_REASON
        dists["ttft_s"]["note"] = BEAM_TTFT_NOTE
    return dists


def cycle_metrics(
    traces: Sequence[RequestTrace],
    duration_s: float,
    model_config: Mapping[str, Any] | None = None,
    num_parameters: int | None = None,
    num_beams: int = 1,
) -> tuple[dict[str, Any], list[str]]:
    """Throughput, latency distributions and FLOPs of one cycle, and the warnings they deserve.

    Failed requests are counted (``failed_requests``, ``failure_reasons``) and
    left out of the latency distributions; their tokens count in throughput.
    """
    per = [request_metrics(t) for t in traces]
    warnings: list[str] = []
    out_tokens = sum(r["output_tokens"] for r in per)
    in_tokens = sum(r["input_tokens"] for r in per)
    reasons = failure_reasons(per)
    failed = sum(reasons.values())
    completed = sum(1 for r in per if r["finished"] and r["error"] is None)
    unfinished = sum(1 for r in per if not r["finished"])
    if unfinished:
        warnings.append(f"{unfinished} of {len(per)} requests did not finish")
    if failed:  # the reasons are in failure_reasons (and, counted over cycles, in the summary's warnings)
        warnings.append(
            f"{failed} of {len(per)} requests failed: left out of the latency figures, their tokens still count "
            "in throughput"
        )
    if any(t.origin_ns is None for t in traces):
        warnings.append("some requests had no arrival time nor submission event: their latencies are unknown")
    dists = latency_distributions(per, num_beams)
    few = [f"{key} ({d['n']})" for key, d in dists.items() if 0 < d["n"] < MIN_SAMPLES_FOR_PERCENTILES]
    if few:
        warnings.append(
            f"percentiles rest on fewer than {MIN_SAMPLES_FOR_PERCENTILES} samples: {', '.join(few)}; "
            "p90-p99 are unreliable (serve more prompts per cycle)"
        )
    rate = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: None)
    sizes = [(r["input_tokens"], r["output_tokens"]) for r in per]
    fl = flops_mod.cycle_flops(model_config or {}, num_parameters, sizes)
    fl["achieved_flops_per_s"] = rate(fl["total"]) if fl["total"] is not None else None
    metrics = {
        "requests": len(per),
        "completed_requests": completed,
        "failed_requests": failed,
        "failure_reasons": reasons,
        "duration_s": duration_s,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "output_tokens_per_s": rate(out_tokens),
        "total_tokens_per_s": rate(in_tokens + out_tokens),
        "requests_per_s": rate(completed),
        **dists,
        "output_tokens_per_request": distribution([r["output_tokens"] for r in per]),
        "flops": fl,
    }
    return metrics, warnings
