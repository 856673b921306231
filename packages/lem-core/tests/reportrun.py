"""Real runs for the plot and report tests: a sweep on the scripted backend, run by the real campaign code.

The scripted backend and meter are lem's own test doubles (there is no GPU
here). ``TimelineMeter`` is the scripted meter with a fuller timeline: 25
samples per window of power (the scripted busy/idle power), temperature and
SM clock for each of two devices, so the timeline plot has what an NVML
meter records. Everything else (the campaign, the result files, the
summaries) is lem's real code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.configfile.loading import Experiment
from lem.testing import registered, run_experiments
from lem.types import EnergyWindow, Problem


class TimelineMeter(scripted.ScriptedMeter):
    """The scripted meter, sampling power, temperature and SM clock 25 times per window (a fake: no GPU here)."""

    def stop(self) -> EnergyWindow:
        window = super().stop()
        rows = []
        for k in range(25):
            t = window.duration_s * k / 24
            at = self._t0 + t * 1e9
            busy = any(s <= at <= e for s, e in scripted._busy)
            for d in self.devices:
                rows.append(
                    {
                        "t_s": t,
                        "device": d,
                        "power_w": (self.busy_w if busy else self.idle_w) + 5 * d,
                        "temperature_c": 40 + 10 * k / 24 + d,
                        "sm_clock_mhz": 1980 if busy else 345,
                    }
                )
        return attrs.evolve(window, timeline=tuple(rows))


class TimelineMeterPlugin:
    @hookimpl
    def measure_energy(self, meter: str, devices: Sequence[int]) -> TimelineMeter | None:
        return TimelineMeter(devices, 100.0, 300.0) if meter == "timeline" else None


def experiment(
    exp_id: str,
    batch_size: int,
    meter: str = "timeline",
    cycles: int = 3,
    max_output_tokens: int = 6,
    more: dict[str, Any] | None = None,
    **extra: Any,
) -> Experiment:
    """One experiment of the sweep (``batching.batch_size`` is its sweep value); ``more``: further top tables
    (``[hardware]``, ``[quality]``)."""
    tables: dict[str, Any] = {
        **(more or {}),
        "dataset": {"num_prompts": 4, "input_length": 8},
        "generation": {"max_output_tokens": max_output_tokens},
        "batching": {"batch_size": batch_size},
        "measurement": {
            "cycles": cycles,
            "idle_seconds": 0.05 if meter != "none" else 0.0,
            "energy_meter": meter,
            "warmup_requests": 1,
            "devices": [0, 1],
        },
        "scripted": {"ttft_ms": 8.0, "itl_ms": 3.0, "sleep": True, "devices": [0, 1], **extra},
    }
    return attrs.evolve(scripted.experiment(tables, exp_id=exp_id), sweep_values={"batching.batch_size": batch_size})


def run(
    root: Path, experiments: Sequence[Experiment], warnings: Sequence[Problem] = (), **kwargs: Any
) -> tuple[bool, Path]:
    """Run ``experiments`` in-process as one campaign under ``root``; ``(all ok, run directory)``."""
    with registered(scripted, "scripted"), registered(TimelineMeterPlugin(), "timeline-meter"):
        run = run_experiments(root, experiments, warnings=warnings, source="sweep.toml", **kwargs)
    return run.ok, run.run_dir


def sweep(root: Path, **kwargs: Any) -> Path:
    """A two-experiment sweep (batch size 1 and 2) with energy and timelines; returns the run directory."""
    return run(root, [experiment("000-batch_size=1", 1), experiment("001-batch_size=2", 2)], **kwargs)[1]
