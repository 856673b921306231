"""Thermal context of a window from its meter timeline: temperature, SM clock and throttle reasons at both edges.

Read from the timeline rows (``temperature_c``, ``sm_clock_mhz`` and
``throttle_reasons``, as lem-energy-nvml samples them). Throttle reasons are
NVML's names joined by ``|``; an empty cell means none (or not read: a CSV
cell cannot tell the two apart, so neither can this). Reasons that mean the
GPU held back because of power or heat count as throttling; ``gpu_idle``,
``applications_clocks``, ``sync_boost`` and ``display_clock`` do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Throttle reasons that slow a busy GPU down (power or thermal limits).
THROTTLING = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")
COLUMNS = ("temperature_c", "sm_clock_mhz", "throttle_reasons")


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reasons(value: Any) -> list[str]:
    return [r for r in str(value).split("|") if r] if value not in (None, "") else []


def _edge(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "t_s": row.get("t_s"),
        "temperature_c": row.get("temperature_c"),
        "sm_clock_mhz": row.get("sm_clock_mhz"),
        "throttle_reasons": _reasons(row.get("throttle_reasons")),
    }


#: The thermal context's reason where the window has no timeline.
NO_TIMELINE = "no timeline for this window"


def thermal_context(timeline: Sequence[Mapping[str, Any]] | None) -> tuple[dict[str, Any], list[str]]:
    """``({"devices": [...], "reason"}, warnings)``: per GPU its first and last sample, and throttling inside."""
    if timeline is None:
        return {"devices": [], "reason": NO_TIMELINE}, []
    by_device: dict[int, list[Mapping[str, Any]]] = {}
    for row in timeline:
        if (row.get("component") or "gpu") == "gpu" and isinstance(row.get("device"), int) and _num(row.get("t_s")):
            if any(row.get(c) not in (None, "") for c in COLUMNS) or "throttle_reasons" in row:
                by_device.setdefault(int(row["device"]), []).append(row)
    if not by_device:
        return {"devices": [], "reason": "the meter's timeline has no temperature, clock or throttle columns"}, []
    devices, warnings = [], []
    for device, rows in sorted(by_device.items()):
        rows = sorted(rows, key=lambda r: float(r["t_s"]))
        seen: dict[str, int] = {}
        throttled = 0
        for r in rows:
            held = [name for name in _reasons(r.get("throttle_reasons")) if name in THROTTLING]
            throttled += bool(held)
            for name in held:
                seen[name] = seen.get(name, 0) + 1
        temps = [float(r["temperature_c"]) for r in rows if _num(r.get("temperature_c"))]
        devices.append(
            {
                "device": device,
                "start": _edge(rows[0]),
                "end": _edge(rows[-1]),
                "max_temperature_c": max(temps) if temps else None,
                "samples": len(rows),
                "throttled": bool(seen),
                "throttle_samples": seen,
                # Samples with any power or thermal throttle reason, and their share of the window's samples.
                "throttled_samples": throttled,
                "throttled_share": throttled / len(rows),
            }
        )
        if seen:
            listed = ", ".join(f"{name} in {n} of {len(rows)} samples" for name, n in sorted(seen.items()))
            warnings.append(f"GPU {device} throttled inside the window ({listed}): its clocks were held back")
    return {"devices": devices, "reason": None}, warnings
