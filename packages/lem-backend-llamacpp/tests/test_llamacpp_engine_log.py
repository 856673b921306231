"""llama.cpp's own output (its quantizer and loader) goes to the experiment's engine.log, not among lem's lines.

Real `lem run`s in subprocesses, each quantizing the tiny model with llama.cpp's quantizer into a cache of
its own (a cached GGUF would print nothing to catch).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomli_w

#: Lines llama.cpp prints while it quantizes (llama_model_quantize) and reads the f32 file.
QUANTIZER = "llama_model_quantize_impl"
LOADER = "llama_model_loader"


def _run(where: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    where.mkdir()
    doc = {
        "model": "random:tiny-llama",
        "backend": "llamacpp",
        "precision": "float32",
        "dataset": {"source": "builtin", "num_prompts": 2},
        "generation": {"max_output_tokens": 4, "ignore_eos": True, "do_sample": False},
        "measurement": {"cycles": 1, "warmup_requests": 1, "idle_seconds": 0, "energy_meter": "none"},
        "llamacpp": {"quantization": "q4_0", "cache_dir": str(where / "cache")},
    }
    (where / "exp.toml").write_text(tomli_w.dumps(doc))
    proc = subprocess.run(
        [sys.executable, "-m", "lem", "run", "exp.toml", "--out", "res", "--no-report", *flags],
        cwd=where,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (exp_dir,) = where.glob("res/*/exp")
    return proc, exp_dir


def test_quantizer_output_goes_to_engine_log_and_with_v_to_the_terminal_too(tmp_path: Path) -> None:
    proc, exp_dir = _run(tmp_path / "plain")
    log = (exp_dir / "engine.log").read_text(errors="replace")
    assert QUANTIZER in log and LOADER in log, log[-2000:]
    # Not on lem's streams: stderr has lem's progress and nothing of llama.cpp's; stdout has the table.
    assert QUANTIZER not in proc.stderr and LOADER not in proc.stderr, proc.stderr[-2000:]
    assert QUANTIZER not in proc.stdout and LOADER not in proc.stdout
    assert "load " in proc.stderr and "cycle 1/1" in proc.stderr and "done in" in proc.stderr
    assert "random:tiny-llama" in proc.stdout and "results:" in proc.stdout

    verbose, exp_dir = _run(tmp_path / "verbose", "-v")
    log = (exp_dir / "engine.log").read_text(errors="replace")
    assert QUANTIZER in log and QUANTIZER in verbose.stderr, verbose.stderr[-2000:]
    assert "cycle 1/1" in verbose.stderr
    assert QUANTIZER not in verbose.stdout  # stdout stays lem's own, -v or not
    # The same lines on the terminal as in the log, in order (one tee, not two writers).
    quantizer_lines = [line for line in log.splitlines() if line.startswith(QUANTIZER)]
    assert len(quantizer_lines) >= 2
    shown = [line for line in verbose.stderr.splitlines() if line.startswith(QUANTIZER)]
    assert shown == quantizer_lines
