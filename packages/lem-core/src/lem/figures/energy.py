"""Energy of a window: per-device keys, idle power, total, idle and dynamic joules, peak power.

An energy window (``EnergyWindow`` in JSON form: its duration, one figure per
device, warnings, and optionally the peak total power found in its timeline)
and the idle baseline's power give every energy figure of a cycle. Each
figure says how it was obtained; a figure that cannot be known is ``None``
with a ``reason``, never 0.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lem.config import MeasurementConfig

#: Below this an energy window is too short for a counter that updates every ~100 ms.
MIN_WINDOW_S = 1.0


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
    "idle_j_per_output_token",
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
    cross_check_threshold: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Energy of one cycle from its window (``EnergyWindow`` in JSON form) and the idle power.

    Total J per device and summed, idle J = idle W × window s, dynamic J =
    total - idle, J per output token (total and dynamic), output tokens per J,
    mean and peak power, and the method of each; J per output token is also
    split into its idle share (idle J / output tokens: fixed energy) and its
    dynamic share. The ``cross_check`` block compares a counter figure with the
    power timeline integrated (:func:`cross_check`). Unknown figures are ``None``
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
    if cross_check_threshold is None:  # the default lives in lem.config only
        cross_check_threshold = MeasurementConfig().cross_check_threshold
    out["cross_check"] = cross_check(window, cross_check_threshold)
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
    warnings += cross_check_warnings(out["cross_check"])
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
            out["idle_j_per_output_token"] = out["idle_j"] / output_tokens
        out["dynamic_negative"] = out["dynamic_j"] < 0
        if out["dynamic_negative"]:
            warnings.append(negative_dynamic_warning(out["dynamic_j"], out["idle_power_w"], out["mean_power_w"]))
    elif out["idle_reason"] is None:
        out["idle_reason"] = "the idle baseline does not cover every metered device"
    return out, warnings


#: A window shorter than this many counter update periods is too short for the cross-check to mean much.
MIN_UPDATE_PERIODS = 3


def cross_check(window: Mapping[str, Any] | None, threshold: float) -> dict[str, Any]:
    """The energy counter against the power timeline integrated, over one window (JSON form).

    Per device that has both (a ``counter`` figure and ``integrated_j``): both energies and
    ``rel_diff`` = (integrated - counter) / counter; over them all the same, ``exceeds`` when
    ``|rel_diff|`` is above ``threshold`` (``measurement.cross_check_threshold``), and ``short_window``
    when the window lasts fewer than :data:`MIN_UPDATE_PERIODS` counter update periods. ``None`` figures
    with a ``reason`` where no device has both.
    """
    out: dict[str, Any] = {
        "devices": [],
        "counter_j": None,
        "integrated_j": None,
        "rel_diff": None,
        "threshold": threshold,
        "exceeds": None,
        "update_period_s": None,
        "update_periods": None,
        "short_window": None,
        "reason": None,
    }
    if window is None:
        out["reason"] = "no energy was measured"
        return out
    pairs = [
        d
        for d in window.get("devices", ())
        if d.get("method") == "counter" and d.get("energy_j") is not None and d.get("integrated_j") is not None
    ]
    if not pairs:
        out["reason"] = "the meter gives no second source to check its energy against (a counter and a power timeline)"
        return out
    for d in pairs:
        c, i = float(d["energy_j"]), float(d["integrated_j"])
        out["devices"].append(
            {
                "device": d["device"],
                "component": d.get("component") or "gpu",
                "counter_j": c,
                "integrated_j": i,
                "rel_diff": (i - c) / c if c > 0 else None,
                "update_period_s": d.get("update_period_s"),
            }
        )
    c = sum(float(d["energy_j"]) for d in pairs)
    i = sum(float(d["integrated_j"]) for d in pairs)
    out.update(counter_j=c, integrated_j=i, rel_diff=(i - c) / c if c > 0 else None)
    if out["rel_diff"] is not None:
        out["exceeds"] = abs(out["rel_diff"]) > threshold
    periods = [float(d["update_period_s"]) for d in pairs if d.get("update_period_s")]
    if periods:
        out["update_period_s"] = max(periods)
        out["update_periods"] = float(window["duration_s"]) / max(periods)
        out["short_window"] = out["update_periods"] < MIN_UPDATE_PERIODS
    return out


def cross_check_warnings(check: Mapping[str, Any]) -> list[str]:
    """One line for a cross-check that exceeds its threshold, one for a window too short to check."""
    out = []
    if check.get("short_window"):
        out.append(
            f"energy window spans {check['update_periods']:.1f} counter update periods "
            f"({check['update_period_s'] * 1000:.0f} ms each), fewer than {MIN_UPDATE_PERIODS}: "
            "the counter and the cross-check cannot resolve it"
        )
    if check.get("exceeds"):
        out.append(
            f"energy counter and integrated power disagree by {check['rel_diff']:+.1%} "
            f"(measurement.cross_check_threshold {check['threshold']:.0%}): one of them is off"
        )
    return out


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


def _method(methods: Sequence[str | None]) -> str | None:
    """The one method several figures share, or ``mixed: ...`` naming each; ``None`` when none is known."""
    known = sorted({m for m in methods if m is not None})
    if not known:
        return None
    return known[0] if len(known) == 1 else "mixed: " + ", ".join(known)


def energy_per(energy: Mapping[str, Any], count: int, unit: str, none_reason: str) -> dict[str, Any]:
    """``j_per_<unit>`` and ``dynamic_j_per_<unit>`` of a cycle's energy block shared over ``count`` things
    (good requests, correct answers), or ``energy_reason`` saying why one is missing (``none_reason`` when
    ``count`` is 0): never 0 for an unknown energy."""
    total, dynamic = energy.get("total_j"), energy.get("dynamic_j")
    if total is None:
        return {"energy_reason": energy.get("reason") or "no energy was measured"}
    if count == 0:
        return {"energy_reason": none_reason}
    out: dict[str, Any] = {f"j_per_{unit}": total / count}
    if dynamic is not None:
        out[f"dynamic_j_per_{unit}"] = dynamic / count
    else:
        out["energy_reason"] = energy.get("idle_reason") or "no idle baseline: the energy above idle is unknown"
    return out
