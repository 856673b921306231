"""Per-request and per-cycle figures, from TokenEvents and energy windows: one code path for every backend.

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

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from lem.figures import flops as flops_mod
from lem.figures.stats import MIN_SAMPLES_FOR_PERCENTILES, distribution
from lem.types import Request, TokenEvent

NS = 1e9
#: Below this an energy window is too short for a counter that updates every ~100 ms.
MIN_WINDOW_S = 1.0


@attrs.frozen
class RequestTrace:
    """What happened to one request: its latency origin and its token-bearing events ``(t_ns, n_tokens)``.

    :param token_ids: the generated ids, or ``None`` when the backend did not report every one.
    :param error: why the request failed (the ``error`` of its last event), ``None`` if it did not.
    """

    id: int
    input_tokens: int
    origin_ns: int | None
    events: tuple[tuple[int, int], ...]
    finished: bool
    token_ids: tuple[int, ...] | None = None
    error: str | None = None


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
    finished: set[int] = set()
    for ev in stream:
        if ev.request_id not in by_id:
            raise RuntimeError(f"backend emitted an event for unknown request id {ev.request_id}")
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
        )
        for r in requests
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


def _method(methods: Sequence[str | None]) -> str | None:
    known = sorted({m for m in methods if m is not None})
    if not known:
        return None
    return known[0] if len(known) == 1 else "mixed: " + ", ".join(known)


#: Which figure of a window a value belongs to: a GPU's ordinal, or ``(component, device)`` for a CPU
#: socket or DRAM (so CPU 0 and GPU 0 never collide; files written before components existed hold GPUs).
DeviceKey = int | tuple[str, int]


def device_key(d: Mapping[str, Any]) -> DeviceKey:
    """The :data:`DeviceKey` of a device figure or a timeline row (JSON form)."""
    component = d.get("component") or "gpu"
    return int(d["device"]) if component == "gpu" else (str(component), int(d["device"]))


def idle_power(baseline: Mapping[str, Any] | None) -> dict[DeviceKey, float] | None:
    """Per-device idle power (W) from an idle-baseline window (JSON form), or ``None`` if unmeasured."""
    if not baseline or baseline.get("duration_s", 0) <= 0:
        return None
    out: dict[DeviceKey, float] = {}
    for d in baseline["devices"]:
        if d["energy_j"] is None:
            return None
        out[device_key(d)] = d["energy_j"] / baseline["duration_s"]
    return out


#: The per-cycle energy figures that get a confidence interval across cycles.
ENERGY_FIGURES = (
    "total_j",
    "idle_j",
    "dynamic_j",
    "j_per_output_token",
    "dynamic_j_per_output_token",
    "output_tokens_per_j",
    "mean_power_w",
    "peak_power_w",
)


#: How ``peak_power_w`` was obtained, in the energy block.
PEAK_FROM_TIMELINE = "highest sum over devices of the sampled power, each device interpolated to every sample instant"
PEAK_ONE_DEVICE = "highest power sample of the device"
PEAK_SUM_OF_PEAKS = "sum of per-device peaks: an upper bound, as the peaks need not coincide"


def peak_total_power(timeline: Iterable[Mapping[str, Any]], devices: Sequence[DeviceKey]) -> float | None:
    """The highest total power of ``devices`` together in a sampled timeline, or ``None``.

    Devices are read one after another, so their samples never share an
    instant: at every sample instant of any device, each device's power is
    interpolated linearly between its neighbouring samples (held flat beyond
    its first and last), and the highest sum wins. ``None`` when a device has
    no power sample.
    """
    series: dict[DeviceKey, list[tuple[float, float]]] = {d: [] for d in devices}
    for row in timeline:
        power = row.get("power_w")
        if power is not None and row.get("device") is not None and device_key(row) in series:
            series[device_key(row)].append((float(row["t_s"]), float(power)))
    if not series or any(not points for points in series.values()):
        return None
    for points in series.values():
        points.sort()
    instants = sorted({t for points in series.values() for t, _ in points})
    return max(sum(power_at(points, t) for points in series.values()) for t in instants)


def power_at(points: Sequence[tuple[float, float]], t: float) -> float:
    """Linear interpolation in sorted ``(t, power)`` points, flat outside them."""
    i = bisect.bisect_left(points, (t, float("-inf")))
    if i == 0:
        return points[0][1]
    if i == len(points):
        return points[-1][1]
    (t0, p0), (t1, p1) = points[i - 1], points[i]
    return p1 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)


def energy_figures(
    window: Mapping[str, Any] | None,
    reason: str | None,
    idle_w: Mapping[DeviceKey, float] | None,
    idle_reason: str | None,
    output_tokens: int,
) -> tuple[dict[str, Any], list[str]]:
    """Energy of one cycle from its window (``EnergyWindow`` in JSON form) and the idle power.

    Total J per device and summed, idle J = idle W × window s, dynamic J =
    total - idle, J per output token (total and dynamic), output tokens per J,
    mean and peak power, and the method of each. Unknown figures are ``None``
    with a ``reason``; never 0.
    """
    out: dict[str, Any] = dict.fromkeys((*ENERGY_FIGURES, "idle_power_w", "peak_power_method", "dynamic_negative"))
    out.update(
        {
            "reason": reason,
            "idle_reason": idle_reason,
            "method": None,
            "idle_method": None,
            "duration_s": None,
            "devices": [],
        }
    )
    if window is None:
        out["reason"] = reason or "no energy was measured"
        return out, []
    warnings = list(window.get("warnings", ()))
    dur = float(window["duration_s"])
    out["duration_s"] = dur
    # A meter that warns about the window's length itself knows its counter better: one warning, not two.
    if dur < MIN_WINDOW_S and not any("shorter than" in w for w in warnings):
        warnings.append(f"energy window of {dur:.3f} s is shorter than {MIN_WINDOW_S:g} s: the figure is coarse")
    devices = []
    for d in window["devices"]:
        dev = dict(d)
        w = None if idle_w is None else idle_w.get(device_key(d))
        dev["idle_power_w"] = w
        dev["idle_j"] = None if w is None else w * dur
        dev["dynamic_j"] = None if w is None or d["energy_j"] is None else d["energy_j"] - w * dur
        devices.append(dev)
    out["devices"] = devices
    # What the total adds up (one label per figure: component, device, meter), and the total per component.
    out["total_includes"] = [_label(d) for d in devices]
    out["components"] = _per_component(devices)
    energies = [d["energy_j"] for d in devices]
    out["method"] = _method([d["method"] for d in devices])
    if not devices or any(e is None for e in energies):
        out["reason"] = "; ".join(str(d.get("reason")) for d in devices if d["energy_j"] is None) or (
            reason or "the meter measured no device"
        )
        return out, warnings
    total = float(sum(energies))
    out["total_j"] = total
    out["mean_power_w"] = total / dur if dur > 0 else None
    out["peak_power_w"], out["peak_power_method"] = _peak(window, devices)
    if output_tokens > 0:
        out["j_per_output_token"] = total / output_tokens
        out["output_tokens_per_j"] = output_tokens / total if total > 0 else None
    if idle_w is not None and all(d["idle_j"] is not None for d in devices):
        out["idle_power_w"] = float(sum(d["idle_power_w"] for d in devices))
        out["idle_j"] = float(sum(d["idle_j"] for d in devices))
        out["dynamic_j"] = total - out["idle_j"]
        out["idle_method"] = "idle baseline power × window duration"
        if output_tokens > 0:
            out["dynamic_j_per_output_token"] = out["dynamic_j"] / output_tokens
        out["dynamic_negative"] = out["dynamic_j"] < 0
        if out["dynamic_negative"]:
            warnings.append(negative_dynamic_warning(out["dynamic_j"], out["idle_power_w"], out["mean_power_w"]))
    elif out["idle_reason"] is None:
        out["idle_reason"] = "the idle baseline does not cover every metered device"
    return out, warnings


def negative_dynamic_warning(dynamic_j: float, idle_w: float, mean_w: float | None) -> str:
    """What a negative dynamic energy means, in one line."""
    mean = "unknown" if mean_w is None else f"{mean_w:.1f} W"
    return (
        f"dynamic energy is negative ({dynamic_j:.4g} J): the idle baseline ({idle_w:.1f} W) is above the window's "
        f"mean power ({mean}), so the baseline does not represent this cycle's idle draw (measured warmer, or while "
        "other work ran) and its dynamic figures are meaningless; re-measure with a longer measurement.idle_seconds"
    )


def _label(d: Mapping[str, Any]) -> str:
    which = "all" if int(d["device"]) < 0 else str(d["device"])
    meter = f" ({d['meter']})" if d.get("meter") else ""
    return f"{d.get('component') or 'gpu'} {which}{meter}"


def _per_component(devices: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Energy and method per component (``gpu``, ``cpu``, ``dram``); ``None`` when one of its figures is unknown."""
    out: dict[str, dict[str, Any]] = {}
    for d in devices:
        c = out.setdefault(d.get("component") or "gpu", {"energy_j": 0.0, "methods": []})
        c["energy_j"] = None if c["energy_j"] is None or d["energy_j"] is None else c["energy_j"] + d["energy_j"]
        c["methods"].append(d.get("method"))
    return {k: {"energy_j": v["energy_j"], "method": _method(v["methods"])} for k, v in out.items()}


def _peak(window: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]) -> tuple[float | None, str | None]:
    """``peak_power_w`` of the window and how it was obtained (see the ``PEAK_*`` labels)."""
    if window.get("peak_power_w") is not None:  # from the timeline, by peak_total_power
        return float(window["peak_power_w"]), PEAK_FROM_TIMELINE
    peaks = [d.get("peak_power_w") for d in devices]
    if not peaks or any(p is None for p in peaks):
        return None, None
    return float(sum(p for p in peaks if p is not None)), PEAK_ONE_DEVICE if len(peaks) == 1 else PEAK_SUM_OF_PEAKS
