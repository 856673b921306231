"""The experiment while it runs, and the energy windows its steps open.

:class:`Live` is what every step after the model load reads (ARCHITECTURE.md,
"Data flow of ``lem run``"): the experiment and where its files go, the
loaded model, the meter and its reason, the prompts and the warnings found on
the way. An energy window (:func:`metered`) opens the meter on entry and
closes it on exit; :func:`window_json` is the window as the result files hold
it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from lem.config import ExperimentConfig
from lem.configfile.loading import Experiment
from lem.figures.energy import device_key, peak_total_power
from lem.phases import Segment
from lem.prompts.promptset import Prompt
from lem.results.files import write_json
from lem.run import environment
from lem.run.meters import Metering
from lem.run.progress import Progress
from lem.types import EnergyMeter, EnergyWindow, LoadedModel


@attrs.define
class Live:
    """One experiment running in this process, its model loaded.

    :param directory: where its files go (``results/<run-id>/<experiment-id>/``).
    :param metering: the meter over the devices it covers, or the reason there is none.
    :param warnings: what the setup record will say went differently than asked (devices, prompts).
    """

    exp: Experiment
    directory: Path
    run_id: str
    progress: Progress
    metering: Metering
    model: LoadedModel
    prompts: tuple[Prompt, ...]
    warnings: list[str] = attrs.field(factory=list)

    @property
    def config(self) -> ExperimentConfig:
        """The experiment's resolved configuration."""
        return self.exp.config


@contextlib.contextmanager
def metered(meter: EnergyMeter | None) -> Iterator[Segment]:
    """An energy window as a ``with`` block: the meter opens on entry and closes on exit, error or not.

    The segment's ``t0``/``t1`` are this process's clock just inside the meter's edges and its
    ``window`` is the meter's (``None`` without a meter); the caller synchronizes the device before
    entering and before leaving.
    """
    if meter is not None:
        meter.start()
    segment = Segment(time.monotonic_ns())
    try:
        yield segment
    finally:
        segment.t1 = time.monotonic_ns()
        if meter is not None:
            segment.window = meter.stop()


def window_json(window: EnergyWindow | None) -> dict[str, Any] | None:
    """An energy window in JSON form: its timeline goes to CSV, the timeline's peak total power stays here."""
    if window is None:
        return None
    out: dict[str, Any] = {
        "duration_s": window.duration_s,
        "devices": [attrs.asdict(d) for d in window.devices],
        "warnings": list(window.warnings),
    }
    if len(window.devices) > 1:  # one device: its own peak is already exact
        keys = [device_key(attrs.asdict(d)) for d in window.devices]
        out["peak_power_w"] = peak_total_power(window.timeline, keys)
    return out


def write_environment(directory: Path, metering: Metering) -> None:
    """``environment.json``: the machine, and the GPUs as the meter sees them (or why there is no meter)."""
    gpus = metering.meter.environment() if metering.meter is not None else None
    write_json(directory / "environment.json", "environment", environment.capture(gpus, metering.reason))
