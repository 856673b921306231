"""End to end: `lem run examples/quickstart.toml` in a real subprocess, on this backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart.toml"


@pytest.mark.skipif(not QUICKSTART.exists(), reason="run from the lem repository")
def test_quickstart_runs_end_to_end(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LEM_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "lem-cache")}
    lem = [sys.executable, "-m", "lem", "run", str(QUICKSTART), "--in-process", "--quiet", "--out", str(tmp_path)]
    done = subprocess.run(lem, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (cycle,) = tmp_path.glob("*/exp/cycle-001.json")
    metrics = json.loads(cycle.read_text())["metrics"]
    # 8 prompts of 32 tokens, 16 fixed-length output tokens each (examples/quickstart.toml).
    assert (metrics["completed_requests"], metrics["input_tokens"], metrics["output_tokens"]) == (8, 256, 128)
    assert metrics["ttft_s"]["n"] == 8


@pytest.mark.skipif(not QUICKSTART.exists(), reason="run from the lem repository")
def test_transformers_logging_goes_to_engine_log_not_to_the_progress(tmp_path: Path) -> None:
    # transformers at info level logs its config loading: the engine's output, so engine.log's, not stderr's.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "info"}
    lem = [sys.executable, "-m", "lem", "run", str(QUICKSTART), "--in-process", "--no-report", "--out", str(tmp_path)]
    done = subprocess.run(lem, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (exp_dir,) = tmp_path.glob("*/exp")
    log = (exp_dir / "engine.log").read_text()
    assert "loading configuration file" in log, log[-2000:]
    assert "loading configuration file" not in done.stderr + done.stdout
    assert "load " in done.stderr and "cycle 3/3" in done.stderr  # lem's progress is still shown
