"""The powercap RAPL zones in sysfs: finding them, reading their counters, and why a read is refused.

Layout (``/sys/class/powercap``, one directory per zone)::

    intel-rapl:0/        name = package-0   energy_uj  max_energy_range_uj
    intel-rapl:0:0/      name = core        (inside package-0)
    intel-rapl:0:1/      name = uncore      (inside package-0)
    intel-rapl:0:2/      name = dram        (socket 0's memory)
    intel-rapl:1/        name = package-1   ...

``energy_uj`` is a µJ counter that wraps at ``max_energy_range_uj``. AMD
CPUs appear under the same ``intel-rapl`` control type on Linux; an
``amd-rapl`` control type is read the same way if a kernel offers one.
``intel-rapl-mmio`` is a second interface to the same package counter, so it
is never read (it would count the package twice).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from lem.errors import MeterUnavailable

DEFAULT_ROOT = "/sys/class/powercap"
#: Environment variable that moves the root of the powercap tree (tests build a fake one).
ROOT_ENV = "LEM_POWERCAP_ROOT"
#: Control types read; ``intel-rapl-mmio`` duplicates ``intel-rapl`` and is left out on purpose.
CONTROL_TYPES = ("intel-rapl", "amd-rapl")
_ZONE_RE = re.compile(r"^(?P<type>intel-rapl|amd-rapl):(?P<socket>\d+)(?::(?P<sub>\d+))?$")

#: Zone name -> component; only these are energy figures (core and uncore lie inside the package,
#: psys covers the whole platform and overlaps both, so adding them would count energy twice).
COMPONENTS = {"package": "cpu", "dram": "dram"}

#: What to do about a refused read, in the error (CVE-2020-8694 made energy_uj root-only in Nov 2020).
PERMISSION_HINT = (
    "energy_uj is readable by root only since the fix for CVE-2020-8694 (Linux 5.10 and the stable kernels of "
    "Nov 2020): run lem as root, or make the counters readable with "
    "'sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj' (until reboot; the lem-energy-rapl README has "
    "a udev rule that makes it permanent), or choose another energy meter"
)


@attrs.frozen
class Zone:
    """One RAPL zone: its directory, name (``package-0``, ``dram``, ``core``...), socket and counter range."""

    path: Path
    zone: str
    name: str
    socket: int
    max_energy_range_uj: int
    #: From ``constraint_*_max_power_uw`` where the zone has it: bounds how fast the counter can wrap.
    max_power_w: float | None = None

    @property
    def component(self) -> str | None:
        """``"cpu"`` for a package, ``"dram"``, or ``None`` for zones that are not counted."""
        return COMPONENTS.get(self.name.split("-", 1)[0])

    @property
    def counter(self) -> Path:
        """The ``energy_uj`` file."""
        return self.path / "energy_uj"


class RaplPermissionError(MeterUnavailable):
    """``energy_uj`` exists but this user may not read it."""


def powercap_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The powercap directory: ``root``, else ``$LEM_POWERCAP_ROOT``, else ``/sys/class/powercap``."""
    return Path(root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _max_power_w(path: Path) -> float | None:
    powers = []
    for f in sorted(path.glob("constraint_*_max_power_uw")):
        value = _read_int(f)
        if value:
            powers.append(value / 1e6)
    return max(powers, default=None)


def discover(root: Path) -> list[Zone]:
    """Every RAPL zone under ``root`` (sorted by socket, then zone), without reading a counter."""
    if not root.is_dir():
        return []
    zones = []
    for entry in root.iterdir():
        match = _ZONE_RE.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        name = (entry / "name").read_text().strip() if (entry / "name").is_file() else entry.name
        max_range = _read_int(entry / "max_energy_range_uj")
        if max_range is None or max_range <= 0:
            continue  # a zone without a counter range is not an energy counter lem can unwrap
        zones.append(Zone(entry, entry.name, name, int(match["socket"]), max_range, _max_power_w(entry)))
    return sorted(zones, key=lambda z: (z.socket, z.zone))


def read_uj(zone: Zone) -> int:
    """Read a zone's counter (µJ).

    :raises RaplPermissionError: the kernel refuses the read (not root).
    :raises OSError: any other failure of the read.
    """
    try:
        with open(zone.counter) as f:
            return int(f.read().strip())
    except PermissionError:
        raise RaplPermissionError(
            f"RAPL meter: cannot read {zone.counter} (permission denied): {PERMISSION_HINT}"
        ) from None


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's ``model name`` from ``/proc/cpuinfo``, or ``None``."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return None
