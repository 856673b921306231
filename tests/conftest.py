"""End-to-end tests: the installed `lem` command with real plugins, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run_lem(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `lem` as a user would (same interpreter as the tests), offline."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lem", *args], cwd=cwd, capture_output=True, text=True, env=environ, timeout=timeout
    )


@pytest.fixture
def lem():
    return run_lem
