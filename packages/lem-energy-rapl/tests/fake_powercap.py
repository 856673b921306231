"""A fake ``/sys/class/powercap`` tree in a temporary directory.

This machine and CI have no RAPL (``/sys/class/powercap`` is absent), so the
meter is tested against files laid out as the kernel lays them out: one
directory per zone with ``name``, ``energy_uj`` and ``max_energy_range_uj``.
Writing ``energy_uj`` stands in for the CPU consuming energy.
"""

from __future__ import annotations

from pathlib import Path

#: The package range of recent Intel server CPUs (µJ), as sysfs reports it.
INTEL_PACKAGE_RANGE_UJ = 262143328850
INTEL_DRAM_RANGE_UJ = 65712999613


class FakePowercap:
    """Builds zones under ``root`` and moves their counters."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def zone(
        self,
        zone: str,
        name: str,
        energy_uj: int = 0,
        max_range_uj: int = INTEL_PACKAGE_RANGE_UJ,
        max_power_uw: int | None = None,
    ) -> Path:
        path = self.root / zone
        path.mkdir()
        (path / "name").write_text(f"{name}\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        if max_power_uw is not None:
            (path / "constraint_0_max_power_uw").write_text(f"{max_power_uw}\n")
        return path

    def set(self, zone: str, energy_uj: int) -> None:
        # Write a temporary file and rename it, so a concurrent reader never sees a half-written number.
        tmp = self.root / zone / ".energy_uj.tmp"
        tmp.write_text(f"{energy_uj}\n")
        tmp.replace(self.root / zone / "energy_uj")

    def two_socket_server(self) -> FakePowercap:
        """Two packages, each with core and dram subzones, plus the MMIO duplicate of package 0 and psys."""
        for s in (0, 1):
            self.zone(f"intel-rapl:{s}", f"package-{s}", 1_000_000 * (s + 1), max_power_uw=350_000_000)
            self.zone(f"intel-rapl:{s}:0", "core", 500_000)
            self.zone(f"intel-rapl:{s}:1", "dram", 200_000, INTEL_DRAM_RANGE_UJ)
        self.zone("intel-rapl-mmio:0", "package-0", 7)
        self.zone("intel-rapl:2", "psys", 9)
        (self.root / "intel-rapl").mkdir()  # the control type directory itself is not a zone
        return self
