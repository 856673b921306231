"""Plugin discovery through real entry points: installed dist-info directories on sys.path, in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lem.config import ExperimentConfig
from lem.hookspecs import hookimpl
from lem.plugins import get_plugin_manager
from lem.testing import registered


def make_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Write an installed distribution (module files + .dist-info with entry_points.txt) into ``site``."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[lem]\n{lines}\n")


GOOD = """
from lem import hookimpl
@hookimpl
def load_model(backend, config):
    return None

@hookimpl
def validate_config(config):
    return []
"""

METER = """
from lem import hookimpl
@hookimpl
def measure_energy(meter, devices, config):
    return None
"""

BROKEN = "raise ImportError('needs a library that is not installed')\n"

TYPO = """
from lem import hookimpl
@hookimpl
def load_modle(backend, config):
    return None
"""


def lem(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lem", *args], capture_output=True, text=True, env=environ, timeout=60)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    make_dist(site, "lem-backend-acme", {"acme": "acme_backend"}, {"acme_backend": GOOD})
    make_dist(site, "lem-energy-joulemeter", {"joulemeter": "joulemeter"}, {"joulemeter": METER})
    return site


def test_third_party_plugin_appears_in_lem_plugins(site):
    result = lem(site, "plugins")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["acme"] == {
        "name": "acme",
        "distribution": "lem-backend-acme",
        "version": "1.2.3",
        "hooks": ["load_model", "validate_config"],
    }
    assert rows["joulemeter"]["hooks"] == ["measure_energy"]


def test_third_party_backend_is_accepted_by_config(site, tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text('model = "m"\nbackend = "acme"\n[measurement]\nenergy_meter = "joulemeter"\n[acme]\nknob = 1\n')
    result = lem(site, "config", "validate", str(exp))
    assert result.returncode == 0, result.stderr


def test_broken_plugin_is_reported_and_others_still_load(site):
    make_dist(site, "lem-backend-broken", {"broken": "broken_backend"}, {"broken_backend": BROKEN})
    result = lem(site, "plugins")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["broken"]["distribution"] == "lem-backend-broken"
    assert "ImportError: needs a library that is not installed" in rows["broken"]["error"]
    assert "hooks" in rows["acme"]


def test_lem_plugins_env_restricts_loading(site):
    result = lem(site, "plugins", env={"LEM_PLUGINS": "joulemeter"})
    names = [row["name"] for row in json.loads(result.stdout)]
    assert names == ["joulemeter"]
    result = lem(site, "plugins", env={"LEM_PLUGINS": ""})
    assert json.loads(result.stdout) == []


def test_misspelled_hook_fails_loudly(site):
    make_dist(site, "lem-backend-typo", {"typo": "typo_backend"}, {"typo_backend": TYPO})
    result = lem(site, "plugins")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "plugin 'typo' (lem-backend-typo)" in result.stderr and "load_modle" in result.stderr


def test_registered_plugin_is_called_with_keyword_arguments():
    seen = {}

    class Plugin:
        @hookimpl
        def validate_config(self, config):
            seen["config"] = config
            return []

    config = ExperimentConfig(model="m")
    with registered(Plugin(), "throwaway"):
        get_plugin_manager().hook.validate_config(config=config)
    assert seen == {"config": config}
    assert get_plugin_manager().get_plugin("throwaway") is None
