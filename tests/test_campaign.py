"""A sweep as a campaign: worker processes, a failing experiment that does not stop the rest, resume, results."""

from __future__ import annotations

import json
from pathlib import Path

CAMPAIGN = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"
preset = "quick-test"

[generation]
max_output_tokens = 4
ignore_eos = true

[sweep]
"batching.batch_size" = [1, 2]
# The second model's config is broken: that experiment fails at load, the others still run.
model = ["random:tiny-llama", "broken-model"]
"""


def test_sweep_with_a_failure_then_resume_and_results(tmp_path: Path, lem) -> None:
    (tmp_path / "campaign.toml").write_text(CAMPAIGN)
    (tmp_path / "broken-model").mkdir()
    (tmp_path / "broken-model" / "config.json").write_text('{"model_type": "no-such-architecture"}')
    expand = lem("config", "expand", "campaign.toml", "--json", cwd=tmp_path)
    ids = [row["id"] for row in json.loads(expand.stdout)]
    assert len(ids) == 4

    first = lem("run", "campaign.toml", "--out", "res", "--json", cwd=tmp_path)
    assert first.returncode == 1, first.stderr  # some experiment failed
    doc = json.loads(first.stdout)
    run_dir = Path(tmp_path / "res" / doc["run_id"])
    done = {e["experiment_id"] for e in doc["experiments"] if (run_dir / e["experiment_id"] / "summary.json").exists()}
    failed = {
        e["experiment_id"] for e in doc["experiments"] if (run_dir / e["experiment_id"] / "failure.json").exists()
    }
    assert len(done) == 2 and len(failed) == 2 and done | failed == set(ids)
    for exp_id in failed:
        failure = json.loads((run_dir / exp_id / "failure.json").read_text())
        assert failure["model"] == "broken-model" and failure["reason"]

    # Resume: finished experiments are skipped, failed ones are tried again.
    again = lem("run", "campaign.toml", "--out", "res", "--resume", doc["run_id"], cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.count("finished in an earlier attempt, skipped") == 2

    listing = lem("results", "list", "res", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert {r["id"] for r in rows} == {f"{doc['run_id']}/{i}" for i in ids}
    assert {r["status"] for r in rows if r["id"].split("/")[1] in done} == {"ok"}

    summary_path = run_dir / sorted(done)[0] / "summary.json"
    before = json.loads(summary_path.read_text())
    summary_path.unlink()  # raw cycles are the source of truth: the summary comes back from them
    agg = lem("results", "aggregate", str(run_dir), cwd=tmp_path)
    assert agg.returncode == 0, agg.stderr
    after = json.loads(summary_path.read_text())
    assert after["figures"]["output_tokens_per_s"] == before["figures"]["output_tokens_per_s"]


def test_bad_config_fails_before_anything_runs(tmp_path: Path, lem) -> None:
    (tmp_path / "bad.toml").write_text(
        'model = "random:tiny-llama"\n[batching]\nbatch_size = 0\n[pytorch]\nbogus = 1\n'
    )
    proc = lem("run", "bad.toml", "--out", "res", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "batching.batch_size = 0" in proc.stderr and "pytorch.bogus" in proc.stderr
    assert not (tmp_path / "res").exists()
