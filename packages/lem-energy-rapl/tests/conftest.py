"""Fixtures: a fake powercap tree standing in for RAPL hardware (this machine and CI have none)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_powercap import FakePowercap

from lem_energy_rapl.sysfs import ROOT_ENV


@pytest.fixture
def powercap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePowercap:
    """An empty fake ``/sys/class/powercap``; ``$LEM_POWERCAP_ROOT`` points the meter at it."""
    root = tmp_path / "powercap"
    monkeypatch.setenv(ROOT_ENV, str(root))
    return FakePowercap(root)
