"""The README's quickstart, exactly: `lem run examples/quickstart.toml`, then what it wrote."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from lem.configfile.loading import load_one

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_writes_complete_results(tmp_path: Path, lem) -> None:
    shutil.copy(REPO / "examples" / "quickstart.toml", tmp_path / "quickstart.toml")
    proc = lem("run", "quickstart.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The summary table ends with where the results are.
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: ")
    run_dir = tmp_path / last.removeprefix("results: ").strip()
    [exp_dir] = [p for p in run_dir.iterdir() if p.is_dir()]

    # experiment.toml is the resolved config, exactly as run: it loads back to the same config.
    original = load_one(tmp_path / "quickstart.toml")
    assert load_one(exp_dir / "experiment.toml") == original

    env = json.loads((exp_dir / "environment.json").read_text())
    assert env["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert "lem-core" in json.dumps(env["packages"])

    cycles = sorted(exp_dir.glob("cycle-*.json"))
    assert [c.name for c in cycles] == ["cycle-001.json", "cycle-002.json", "cycle-003.json"]
    for path in cycles:
        cycle = json.loads(path.read_text())
        metrics = cycle["metrics"]
        # 8 prompts x 16 fixed-length output tokens, every token accounted for.
        assert metrics["output_tokens"] == 8 * 16
        assert metrics["input_tokens"] == 8 * 32
        assert metrics["ttft_s"]["n"] == 8 and metrics["itl_s"]["n"] == 8 * 15

    summary = json.loads((exp_dir / "summary.json").read_text())
    tps = summary["figures"]["output_tokens_per_s"]
    assert tps["n"] == 3 and tps["ci95_low"] <= tps["mean"] <= tps["ci95_high"]
    if summary["methods"]["energy"] is None:  # CPU-only machine: null with a reason, never 0
        assert summary["figures"]["energy.total_j"]["mean"] is None
        # lem-energy-nvml is installed here, so the reason is what it said, not "install it".
        # (every installed meter's reason is listed: codecarbon and rapl too where they are installed)
        reason = summary["energy_reason"]
        assert reason.startswith("no energy meter works here (") and "nvml: " in reason, reason
    # No temporary files left behind.
    assert not list(run_dir.rglob("*.tmp*"))
