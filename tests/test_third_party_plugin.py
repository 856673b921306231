"""A third-party backend, written the way docs/plugins.md says, built and installed by pip, then run by `lem run`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "lem-backend-echo"
version = "0.0.1"
dependencies = ["lem-core>=0.3,<0.4"]

[project.entry-points.lem]
echo = "lem_backend_echo"
"""

# A backend with no model at all: it "generates" one token per millisecond. Enough to show that
# a distribution outside this repository plugs into config validation, the runner and results.
PLUGIN = """
import time

from lem import hookimpl
from lem.types import LoadedModel, TokenEvent, error


@hookimpl
def load_model(backend, config):
    if backend != "echo":
        return None
    return LoadedModel(backend="echo", handle=None, model_config={"vocab_size": 50})


def _stream(requests, params):
    for r in requests:
        if r.arrival_ns is not None:
            while time.monotonic_ns() < r.arrival_ns:
                time.sleep(0.0002)
        for i in range(params.max_output_tokens):
            time.sleep(0.001)
            last = i == params.max_output_tokens - 1
            yield TokenEvent(r.id, time.monotonic_ns(), 1, finished=last)


@hookimpl
def generate_stream(model, requests, params):
    return _stream(requests, params) if model.backend == "echo" else None


@hookimpl
def validate_config(config):
    if config.backend != "echo":
        return []
    unknown = sorted(set(config.options_for("echo")) - {"volume"})
    return [error(f"echo.{k}", "unknown key", "the echo backend knows only 'volume'") for k in unknown]
"""


def install_echo(tmp_path: Path) -> Path:
    """Build and install lem-backend-echo into its own directory; return that directory."""
    src = tmp_path / "lem-backend-echo"
    (src / "lem_backend_echo").mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "lem_backend_echo" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(site), str(src)], check=True, timeout=300)
    return site


def test_third_party_backend_installs_and_runs(tmp_path: Path, lem) -> None:
    site = install_echo(tmp_path)
    env = {"PYTHONPATH": str(site)}

    plugins = json.loads(lem("plugins", cwd=tmp_path, env=env).stdout)
    [echo] = [p for p in plugins if p["name"] == "echo"]
    assert echo["distribution"] == "lem-backend-echo" and echo["version"] == "0.0.1"

    (tmp_path / "bad.toml").write_text('model = "none"\nbackend = "echo"\n[echo]\nloudness = 3\n')
    bad = lem("config", "validate", "bad.toml", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "echo.loudness: unknown key" in bad.stderr

    (tmp_path / "exp.toml").write_text(
        'model = "none"\nbackend = "echo"\npreset = "quick-test"\n[measurement]\nenergy_meter = "none"\n'
    )
    run = lem("run", "exp.toml", "--out", "res", "--json", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    [summary] = json.loads(run.stdout)["experiments"]
    assert summary["backend"] == "echo"
    # quick-test: 4 prompts x 16 tokens, one event per token.
    cycle = json.loads(next((tmp_path / "res").rglob("cycle-001.json")).read_text())
    assert cycle["metrics"]["output_tokens"] == 4 * 16


def test_backend_from_another_environment(tmp_path: Path, lem) -> None:
    """`lem run --python echo=...`: the backend lives only in the other interpreter's environment."""
    site = install_echo(tmp_path)
    other = tmp_path / "other-python"
    other.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    other.chmod(0o755)
    (tmp_path / "exp.toml").write_text(
        'model = "none"\nbackend = "echo"\npreset = "quick-test"\n[measurement]\nenergy_meter = "none"\n'
    )
    here = lem("run", "exp.toml", "--out", "res", cwd=tmp_path)
    assert here.returncode == 2 and "backend = 'echo': is not an installed backend" in here.stderr

    run = lem("run", "exp.toml", "--out", "res", "--json", "--python", f"echo={other}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [summary] = json.loads(run.stdout)["experiments"]
    assert summary["backend"] == "echo" and summary["status"] == "ok"

    # The backend's own checks still run, in its environment, before anything is measured.
    (tmp_path / "bad.toml").write_text('model = "none"\nbackend = "echo"\n[echo]\nloudness = 3\n')
    bad = lem("run", "bad.toml", "--out", "res", "--json", "--python", f"echo={other}", cwd=tmp_path)
    assert bad.returncode == 1
    [failure] = json.loads(bad.stdout)["experiments"]
    assert "echo.loudness: unknown key" in failure["reason"]

    missing = lem("run", "exp.toml", "--python", "echo=/no/such/python", cwd=tmp_path)
    assert missing.returncode == 2 and "is not an executable" in missing.stderr
