"""Whether a cycle's measurement is spoilt, and which cycles count and which the summary includes.

A cycle is spoilt (judged in the order the cycles ran, from what each
cycle's files hold, so ``lem results aggregate`` judges the same):

- *throttled*: more than ``measurement.max_throttle_share`` of a GPU's
  timeline samples show a power or thermal throttle reason
  (:data:`lem.figures.thermal.THROTTLING`);
- *unsettled*: a GPU's temperature at the cycle's start is more than
  ``max_temperature_step_c`` from its temperature at the previous cycle's start;
- *busy host*: other processes used more than ``max_host_cpu_share`` of all
  CPUs, the 1-minute load per CPU was above ``max_load_per_cpu``, or steal time
  was above ``max_steal_share`` (the cycle's ``host`` block, :mod:`lem.run.hostload`);
- *throughput outlier*: output tok/s more than ``max_throughput_deviation``
  from the median of the earlier cycles that were not spoilt (from the third
  such cycle on).

``measurement.validity`` says what a spoilt cycle does: ``warn`` keeps it
(with a warning), ``invalidate`` keeps it in its file, marked, and leaves it
out of the summary, ``retry`` does that and runs a replacement for the first
``validity_retries`` spoilt cycles (a replaced cycle does not count towards
``measurement.cycles``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from lem.config import MeasurementConfig
from lem.figures.registry import dig


def _start_temperatures(block: Mapping[str, Any]) -> dict[int, float]:
    devices = dig(block, ("energy", "thermal", "devices")) or ()
    out = {}
    for d in devices:
        t = (d.get("start") or {}).get("temperature_c")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            out[int(d["device"])] = float(t)
    return out


def _conditions(m: MeasurementConfig, block: Mapping[str, Any], previous: Mapping[int, float]) -> list[str]:
    """What spoilt one cycle apart from its throughput (one short line each)."""
    reasons = []
    for d in dig(block, ("energy", "thermal", "devices")) or ():
        share = d.get("throttled_share")
        if isinstance(share, (int, float)) and share > m.max_throttle_share:
            listed = ", ".join(sorted(d.get("throttle_samples") or {}))
            reasons.append(
                f"GPU {d['device']} throttled ({listed}) in {share:.0%} of its samples "
                f"(measurement.max_throttle_share {m.max_throttle_share:.0%})"
            )
    for device, temp in _start_temperatures(block).items():
        before = previous.get(device)
        if before is not None and abs(temp - before) > m.max_temperature_step_c:
            reasons.append(
                f"GPU {device} not settled: {temp:.0f} °C at the cycle's start, {before:.0f} °C at the previous "
                f"cycle's (measurement.max_temperature_step_c {m.max_temperature_step_c:g})"
            )
    host = block.get("host") or {}
    checks = (
        ("others_share", m.max_host_cpu_share, "other processes used {v:.0%} of all CPUs", "max_host_cpu_share"),
        ("load_per_cpu", m.max_load_per_cpu, "load average {v:.2f} per CPU", "max_load_per_cpu"),
        ("steal_share", m.max_steal_share, "the hypervisor stole {v:.1%} of CPU time", "max_steal_share"),
    )
    for key, limit, text, setting in checks:
        v = host.get(key)
        if isinstance(v, (int, float)) and v > limit:
            reasons.append(f"busy host: {text.format(v=v)} (measurement.{setting} {limit:g})")
    return reasons


def judge(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per cycle (in run order): ``{"valid": bool, "reasons": [...]}`` (see the module)."""
    verdicts = []
    previous: dict[int, float] = {}
    clean: list[float] = []
    for block in blocks:
        reasons = _conditions(m, block, previous)
        previous.update(_start_temperatures(block))
        tps = dig(block, ("metrics", "output_tokens_per_s"))
        if isinstance(tps, (int, float)) and len(clean) >= 2:
            median = statistics.median(clean)
            if median > 0 and abs(tps - median) / median > m.max_throughput_deviation:
                reasons.append(
                    f"throughput outlier: {tps:.4g} tok/s against a median of {median:.4g} over the earlier cycles "
                    f"(measurement.max_throughput_deviation {m.max_throughput_deviation:.0%})"
                )
        if not reasons and isinstance(tps, (int, float)):
            clean.append(float(tps))
        verdicts.append({"valid": not reasons, "reasons": reasons})
    return verdicts


def partition(m: MeasurementConfig, blocks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which cycles (0-based positions in ``blocks``) count, are included in the summary, and were replaced.

    ``{"verdicts", "counted", "included", "replaced", "invalid"}``: ``counted`` towards
    ``measurement.cycles`` and the cycle limit, ``included`` in the summary's figures, ``replaced`` by a
    retry, ``invalid`` every spoilt cycle.
    """
    verdicts = judge(m, blocks)
    invalid = [i for i, v in enumerate(verdicts) if not v["valid"]]
    everything = list(range(len(blocks)))
    if m.validity == "warn":
        return {"verdicts": verdicts, "counted": everything, "included": everything, "replaced": [], "invalid": invalid}
    replaced = invalid[: m.validity_retries] if m.validity == "retry" else []
    return {
        "verdicts": verdicts,
        "counted": [i for i in everything if i not in replaced],
        "included": [i for i in everything if i not in invalid],
        "replaced": replaced,
        "invalid": invalid,
    }


def summary_block(m: MeasurementConfig, cycles: Sequence[int], parts: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's ``validity`` block: the mode, and each spoilt cycle (by number) with its reasons."""
    return {
        "mode": m.validity,
        "spoilt_cycles": [cycles[i] for i in parts["invalid"]],
        "excluded_cycles": [cycles[i] for i in range(len(cycles)) if i not in parts["included"]],
        "replaced_cycles": [cycles[i] for i in parts["replaced"]],
        "included": len(parts["included"]),
        "reasons": {str(cycles[i]): parts["verdicts"][i]["reasons"] for i in parts["invalid"]},
    }


def left_out_line(block: Mapping[str, Any], cycles: int) -> str | None:
    """The line every screen shows when spoilt cycles were left out of the figures (``None`` when none was).

    :param block: the summary's ``validity`` block (:func:`summary_block`); ``cycles``: the cycles run.
    """
    out = block.get("excluded_cycles") or []
    if not out:
        return None
    replaced = block.get("replaced_cycles") or []
    line = (
        f"{len(out)} of {cycles} cycle(s) spoilt and left out of the figures "
        f"(measurement.validity = {block.get('mode')!r}): cycles {', '.join(map(str, out))}"
    )
    if replaced:
        line += f"; {len(replaced)} replaced by a retry (cycles {', '.join(map(str, replaced))})"
    return line


def cycles_text(doc: Mapping[str, Any]) -> str:
    """A summary's cycle count as screens show it: ``4``, or ``4 (2 included; 2 spoilt, left out)``."""
    cycles = doc.get("cycles")
    out = (doc.get("validity") or {}).get("excluded_cycles") or []
    if not out or not isinstance(cycles, int):
        return str(cycles)
    return f"{cycles} ({doc.get('cycles_included')} included; {len(out)} spoilt, left out)"
