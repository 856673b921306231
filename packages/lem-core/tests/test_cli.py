"""The `lem` command as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "vllm", "tensorrt_llm", "pynvml", "datasets", "pyarrow", "ray")


def lem(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lem", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "LEM_PLUGINS": os.environ.get("LEM_PLUGINS", "pytorch")},
    )


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from lem.cli.main import cli\n"
        "try:\n    cli(['--help'], prog_name='lem')\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Usage: lem" in out.stdout
    assert "LOADED []" in out.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["config", "--help"], ["plugins", "--help"], ["models", "--help"]]
)
def test_commands_exist(args):
    result = lem(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_version():
    result = lem("--version")
    assert result.returncode == 0 and result.stdout.startswith("lem, version ")


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(
        'model = "random:tiny-llama"\nbackend = "pytorch"\n[measurement]\nenergy_meter = "none"\n'
        '[sweep]\n"batching.batch_size" = [1, 4]\n'
    )
    return path


def backend_installed() -> bool:
    from lem.plugins import backend_names

    return "pytorch" in backend_names()


needs_backend = pytest.mark.skipif(not backend_installed(), reason="lem-backend-pytorch is not installed")


@needs_backend
def test_config_validate_ok(good):
    result = lem("config", "validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "OK (2 experiments" in result.stdout


@needs_backend
def test_config_expand_lists_ids(good):
    result = lem("config", "expand", str(good), "--json")
    rows = json.loads(result.stdout)
    assert [r["values"] for r in rows] == [{"batching.batch_size": 1}, {"batching.batch_size": 4}]
    assert all(r["id"].startswith(f"00{i}-batch_size=") for i, r in enumerate(rows))


@needs_backend
def test_config_show_round_trips_through_the_cli(good, tmp_path):
    result = lem("config", "show", str(good), "--set", "generation.max_output_tokens=9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("# experiment ") == 2
    # Experiments are separated by a blank line, then their "# experiment <id>" heading.
    first = result.stdout.split("# experiment ")[1].split("\n", 1)[1].rstrip("\n") + "\n"
    shown = tmp_path / "shown.toml"
    shown.write_text(first)
    again = lem("config", "show", str(shown))
    assert again.stdout == first
    assert "max_output_tokens = 9" in first


def test_bad_file_is_one_line_per_problem_and_exit_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('model = "m"\n[generation]\ntop_p = 2.0\ntemperatur = 1\n')
    result = lem("config", "validate", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any("generation.top_p = 2.0: must be in (0, 1]" in line for line in lines)
    assert any("generation.temperatur: unknown key (hint: did you mean 'temperature'?)" in line for line in lines)
    assert all(line.startswith(f"lem: {path}: error:") for line in lines)


def test_missing_file_exit_2(tmp_path):
    result = lem("run", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    hint = "(hint: check the path, or start from examples/quickstart.toml)"
    assert result.stderr.strip() == f"lem: {tmp_path / 'nope.toml'}: error: file not found {hint}"


def test_bad_set_option(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('model = "m"\n')
    result = lem("config", "validate", str(path), "--set", "novalue")
    assert result.returncode == 2 and "expected KEY=VALUE" in result.stderr and "Traceback" not in result.stderr


def test_models_lists_builtin_architectures():
    result = lem("models", "--json")
    names = [row["model"] for row in json.loads(result.stdout)]
    assert {"random:tiny-llama", "random:llama-3.1-8b", "random:llama-3.1-70b"} <= set(names)
