"""End-to-end proof of ``[quality]`` for any backend: score a run against references built from its own answers.

:func:`prove_accuracy` runs ``lem run`` twice on the same prompts: first to read the model's own greedy
answers (``output_text`` of each request row), then with a JSONL whose references are those answers for
the even prompts and a wrong answer for the odd ones, scored ``exact``. Accuracy must then be exactly 0.5,
each request's ``correct`` as constructed, and J per correct answer the cycle's energy over its correct
count. Energy comes from lem-energy-nvml's fake ``pynvml`` (hardware stands in; a thread advances a
counter), so the figure is a real division of what the meter read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

#: The fake board's counter advances by this many mJ every 10 ms while the run lasts.
FAKE_BOARDS = """
import threading, time
GPUS = [FakeGpu(uuid="GPU-quality-0")]
def burn():
    while True:
        time.sleep(0.01)
        GPUS[0].energy_mj += 10
threading.Thread(target=burn, daemon=True).start()
"""
PROMPTS = ("The energy of a token is", "Count the joules:", "A model answers", "Measure the power of", "Why is")
WRONG = "certainly not this answer"


def run_experiment(doc: Mapping[str, Any], where: Path, env: Mapping[str, str] | None = None) -> Path:
    """``lem run`` the experiment ``doc`` (a TOML document as a dict) under ``where``; returns its directory."""
    where.mkdir(parents=True, exist_ok=True)
    exp = where / "experiment.toml"
    exp.write_text(tomli_w.dumps(dict(doc)))
    out = where / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lem", "run", str(exp), "--quiet", "--out", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The run directory holds the experiment's directory beside others (plots/): the one with its TOML.
    (exp_dir,) = [d.parent for d in out.glob("*/*/experiment.toml")]
    return exp_dir


def prove_accuracy(base: Mapping[str, Any], where: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run the proof for the experiment ``base`` (TOML shape: model, backend, its table, precision); returns
    the second run's summary after asserting everything the module docstring says."""
    from lem_energy_nvml.testing import write_pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]  # deferred: only the callers need it

    environ = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    shim = write_pynvml(where / "fake-nvml", FAKE_BOARDS)
    environ["PYTHONPATH"] = os.pathsep.join([str(shim), environ.get("PYTHONPATH", "")])
    prompts = where / "prompts.jsonl"
    where.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    doc: dict[str, Any] = {
        **base,
        "dataset": {"source": "file", "path": str(prompts), "num_prompts": len(PROMPTS)},
        "generation": {"max_output_tokens": 6, "ignore_eos": True, "do_sample": False},
        "measurement": {
            "cycles": 2,
            "warmup_requests": 1,
            "idle_seconds": 0.2,
            "energy_meter": "nvml",
            "devices": [0],
        },
    }
    first = json.loads((run_experiment(doc, where / "answers", environ) / "cycle-001.json").read_text())
    answers = [r["output_text"] for r in sorted(first["requests"], key=lambda r: r["id"])]
    assert all(isinstance(a, str) and a.strip() and a.strip() != WRONG for a in answers), answers
    expected = [i % 2 == 0 for i in range(len(PROMPTS))]
    refs = [a if ok else WRONG for a, ok in zip(answers, expected, strict=True)]
    # Four of five would not make 0.5: the last prompt is left out by num_prompts = 4.
    n = 4
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "answer": r}) + "\n" for p, r in zip(PROMPTS, refs, strict=True))
    )
    doc["dataset"] = {**doc["dataset"], "num_prompts": n, "reference_field": "answer"}
    doc["quality"] = {"scorer": "exact"}
    exp_dir = run_experiment(doc, where / "scored", environ)
    summary: dict[str, Any] = json.loads((exp_dir / "summary.json").read_text())
    for c in (1, 2):
        cycle = json.loads((exp_dir / f"cycle-{c:03d}.json").read_text())
        rows = sorted(cycle["requests"], key=lambda r: r["id"])
        assert [r["correct"] for r in rows] == expected[:n]
        assert [r["reference"] for r in rows] == [r.strip() for r in refs[:n]]  # references are trimmed
        assert all(r["correct_reason"] is None for r in rows)
        q = cycle["metrics"]["quality"]
        assert (q["scored"], q["correct"], q["accuracy"]) == (n, n // 2, 0.5)
        total = cycle["energy"]["total_j"]
        assert total is not None and total > 0
        assert q["j_per_correct_answer"] == total / (n // 2)
    assert summary["figures"]["quality.accuracy"]["mean"] == 0.5
    assert summary["quality"]["per_prompt"] == expected[:n]
    assert summary["quality"]["accuracy"] == 0.5
    return summary
