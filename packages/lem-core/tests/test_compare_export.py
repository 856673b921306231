"""`lem results compare`, `lem results export` and `lem.results.load` over real runs.

The runs are real: the scripted backend in-process (exact, hand-computable
timings) and the PyTorch backend on a tiny random Llama through `lem run` in a
subprocess. The Welch test and the exported figures are recomputed here
independently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lem.testing.scripted as scripted
from lem.figures.stats import welch_test
from lem.plugins import backend_names
from lem.results import load
from lem.results.files import read_json
from lem.testing import registered, run_experiments

BASE: dict[str, Any] = {
    "dataset": {"num_prompts": 3, "input_length": 4},
    "generation": {"max_output_tokens": 3},
    "measurement": {"cycles": 3, "idle_seconds": 0.02, "energy_meter": "scripted", "warmup_requests": 0},
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _tables(**changes: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One run of three experiments: a (batch 1), b (batch 3), c (batch 1, longer prompts: not comparable)."""
    out = tmp_path_factory.mktemp("compare") / "results"
    with registered(scripted, "scripted"):
        exps = (
            scripted.experiment(_tables(), exp_id="a"),
            scripted.experiment(_tables(batching={"batch_size": 3}), exp_id="b"),
            scripted.experiment(_tables(dataset={"input_length": 6}), exp_id="c"),
        )
        run = run_experiments(out, exps)
    assert run.ok
    yield run.run_dir


def lem(*args: str, cwd: Path | None = None, code: str = "") -> subprocess.CompletedProcess[str]:
    """The `lem` command in a subprocess (``code`` runs first, e.g. to hide pandas)."""
    script = f"{code}\nfrom lem.cli.main import main\nmain()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


# --- Welch's t-test ----------------------------------------------------------------------------


def test_welch_by_hand() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]
    # Means 2.5 and 5; sample variances 5/3 and 20/3; per-mean variances /4.
    va, vb = (5 / 3) / 4, (20 / 3) / 4
    t = (5 - 2.5) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    got = welch_test(a, b)
    assert got["t"] == pytest.approx(t) and got["t"] == pytest.approx(1.7320508)
    assert got["df"] == pytest.approx(df) and got["df"] == pytest.approx(4.4118, abs=1e-4)
    assert got["t_crit"] == pytest.approx(2.7764, abs=5e-5) and got["resolved"] is False  # t_{0.975, floor(4.41) = 4}
    clear = welch_test([10.0, 10.1, 9.9], [12.0, 12.1, 11.9])
    assert clear["resolved"] is True and clear["t"] == pytest.approx(2.0 / math.sqrt(0.01 / 3 + 0.01 / 3))
    assert welch_test([1.0, 1.0], [1.0, 1.0])["resolved"] is False
    assert welch_test([1.0, 1.0], [2.0, 2.0])["resolved"] is True
    one = welch_test([1.0], [2.0, 3.0])
    assert one["resolved"] is None and "at least 2 cycles" in one["reason"]


# --- compare -------------------------------------------------------------------------------------


def test_compare_json_ratios_verdicts_and_fairness(run_dir: Path) -> None:
    proc = lem("results", "compare", run_dir.name, "--dir", str(run_dir.parent), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "Welch" in result["test"]
    assert [e["key"] for e in result["experiments"]] == [f"{run_dir.name}/{x}" for x in "abc"]
    by_name = {f["figure"]: f for f in result["figures"]}
    assert set(by_name) >= {"output_tokens_per_s", "ttft_s.p99", "tpot_s.p50", "energy.dynamic_j_per_output_token"}
    sa, sb = (read_json(run_dir / x / "summary.json")["figures"] for x in "ab")
    for name in ("output_tokens_per_s", "energy.j_per_output_token", "ttft_s.p50"):
        first, second = by_name[name]["experiments"][:2]
        assert first["mean"] == sa[name]["mean"] and first["ci95_low"] == sa[name]["ci95_low"]
        assert second["ratio"] == pytest.approx(sb[name]["mean"] / sa[name]["mean"])
        assert second["welch"] == welch_test(sa[name]["values"], sb[name]["values"])
    # Batch 3 serves the three requests at once: TTFT p50 4 ms against 12 ms at batch 1 (exact, no spread).
    ttft = by_name["ttft_s.p50"]["experiments"]
    assert ttft[0]["mean"] == pytest.approx(0.012) and ttft[1]["mean"] == pytest.approx(0.004)
    assert ttft[1]["welch"]["resolved"] is True
    # c's prompts are longer: the prompt digest and the input tokens differ from a's.
    warnings = result["warnings"]
    assert any(w.startswith("prompt-set digest differs") and "/c has" in w for w in warnings)
    assert any(w.startswith("input tokens per pass differs") and "has 12," in w and "has 18" in w for w in warnings)
    assert not any("/b has" in w for w in warnings)


def test_fairness_compares_the_work_of_one_pass_not_of_a_cycle(tmp_path: Path) -> None:
    # min_window_s makes a faster engine serve the prompt set more often per cycle: the same workload.
    from lem.results.compare import Entry, fairness

    def entry(key: str, outs: tuple[int, ...], passes: tuple[int, ...]) -> Entry:
        summary = {"model": "m", "prompts": {"digest": "d"}}
        return Entry(key, tmp_path, summary, {"precision": "float32"}, tuple(128 * p for p in passes), outs, passes)

    slow = entry("slow", (256, 256), (1, 1))
    assert fairness([slow, entry("fast", (768, 1024), (3, 4))]) == []
    (line,) = fairness([slow, entry("other", (512, 512), (1, 1))])
    assert line.startswith("output tokens per pass differs: slow has 256, other has 512")


def test_compare_table_and_strict(run_dir: Path) -> None:
    root = str(run_dir.parent)
    table = lem("results", "compare", f"{run_dir.name}/a", f"{run_dir.name}/b", "--dir", root)
    assert table.returncode == 0, table.stderr
    assert "output tok/s" in table.stdout and "TTFT p99 (ms)" in table.stdout and "Welch" in table.stdout
    assert "×" in table.stdout and "resolved" in table.stdout and table.stderr == ""
    fair = lem("results", "compare", str(run_dir / "a"), str(run_dir / "b"), "--strict")
    assert fair.returncode == 0, fair.stderr
    unfair = lem("results", "compare", str(run_dir / "a"), str(run_dir / "c"), "--strict")
    assert unfair.returncode == 1 and unfair.stdout == "" and "Traceback" not in unfair.stderr
    lines = unfair.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("lem: error: ") for line in lines)
    loose = lem("results", "compare", str(run_dir / "a"), str(run_dir / "c"))
    assert loose.returncode == 0 and "lem: warning: prompt-set digest differs" in loose.stderr


def test_compare_names_a_damaged_summary_and_needs_two(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "b" / "summary.json").write_text('{"schema_version": 2, "kind": "summ')
    proc = lem("results", "compare", str(copy / "a"), str(copy / "b"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"lem: warning: {copy / 'b' / 'summary.json'}: not valid JSON" in proc.stderr
    assert "compare needs at least 2 experiments" in proc.stderr


# --- export ---------------------------------------------------------------------------------------


def test_export_experiment_level_csv_matches_the_summaries(run_dir: Path) -> None:
    proc = lem("results", "export", str(run_dir), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = {r["experiment_id"]: r for r in csv.DictReader(io.StringIO(proc.stdout))}
    assert set(rows) == {"a", "b", "c"}
    summary = read_json(run_dir / "b" / "summary.json")
    row = rows["b"]
    assert row["key"] == summary["key"] and row["status"] == "ok" and row["backend"] == "scripted"
    for name in ("output_tokens_per_s", "energy.j_per_output_token", "ttft_s.p99"):
        for stat in ("mean", "std", "ci95_low", "ci95_high"):
            assert float(row[f"{name}.{stat}"]) == pytest.approx(summary["figures"][name][stat], rel=1e-12)
    assert row["config.batching.batch_size"] == "3" and row["config.dataset.input_length"] == "4"
    assert row["prompts.digest"] == summary["prompts"]["digest"]
    env = read_json(run_dir / "b" / "environment.json")
    assert row["env.cpu_model"] == env["cpu"]["model"] and row["env.gpu_names"] == "Scripted GPU"
    assert row["version.lem-core"] == env["packages"]["lem"]["lem-core"]
    # A null is an empty cell, never 0.
    assert row["failure_reason"] == "" and row["energy_reason"] == "" and row["outputs_identical_across_cycles"] == ""


def test_export_cycle_and_request_levels(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cycles.jsonl"
    proc = lem("results", "export", str(run_dir), "--format", "jsonl", "--level", "cycle", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    cycles = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(c["experiment_id"], c["cycle"]) for c in cycles] == [(x, i) for x in "abc" for i in (1, 2, 3)]
    summary = read_json(run_dir / "a" / "summary.json")
    for c in cycles[:3]:
        for name in ("output_tokens_per_s", "energy.j_per_output_token", "ttft_s.mean"):
            assert c[name] == pytest.approx(summary["figures"][name]["values"][c["cycle"] - 1])
    proc = lem("results", "export", str(run_dir / "a"), "--level", "request")
    requests = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(requests) == 3 * 3
    # Batch 1, TTFT 4 ms, ITL 2 ms, 3 tokens: request i's first token at 4 + 8·i ms, its last at 8 + 8·i.
    first = [r for r in requests if r["cycle"] == "1"]
    assert [float(r["ttft_s"]) for r in first] == pytest.approx([0.004, 0.012, 0.020])
    assert [float(r["e2e_s"]) for r in first] == pytest.approx([0.008, 0.016, 0.024])
    assert all(r["tpot_s"] and float(r["tpot_s"]) == pytest.approx(0.002) for r in first)
    assert {r["output_tokens"] for r in requests} == {"3"} and {r["error"] for r in requests} == {""}


def test_parquet_and_load_give_the_same_table(run_dir: Path, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "exp.parquet"
    proc = lem("results", "export", str(run_dir), "--format", "parquet", "--out", str(out))
    assert proc.returncode == 0 and "3 rows" in proc.stderr
    frame = load(run_dir)
    back = pd.read_parquet(out)
    assert list(back.columns) == list(frame.columns) and len(back) == len(frame) == 3
    assert back["output_tokens_per_s.mean"].tolist() == pytest.approx(frame["output_tokens_per_s.mean"].tolist())
    assert frame.set_index("experiment_id").loc["b", "config.batching.batch_size"] == 3
    assert len(load(run_dir, level="request")) == 3 * 3 * 3
    assert lem("results", "export", str(run_dir), "--format", "parquet").returncode == 2  # needs --out


def test_without_pandas_csv_works_and_load_says_what_to_install(run_dir: Path) -> None:
    hide = "import sys\nsys.modules['pandas'] = None\nsys.modules['pyarrow'] = None"
    proc = lem("results", "export", str(run_dir), "--level", "cycle", code=hide)
    assert proc.returncode == 0 and len(list(csv.DictReader(io.StringIO(proc.stdout)))) == 9
    proc = lem("results", "export", str(run_dir), "--format", "parquet", "--out", "x.parquet", code=hide)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "lem: pyarrow is not installed: pip install 'lem-core[export]'"
    code = (
        f"{hide}\nfrom lem.results import load\ntry:\n    load({str(run_dir)!r})\nexcept Exception as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "lem.results.load needs pandas: pip install 'lem-core[export]'"


def test_export_names_a_damaged_cycle_file_and_goes_on(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    (copy / "a" / "cycle-002.json").write_text("{broken")
    proc = lem("results", "export", str(copy), "--level", "cycle")
    assert proc.returncode == 0
    assert proc.stderr.count("\n") == 1 and f"{copy / 'a' / 'cycle-002.json'}: not valid JSON" in proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [(r["experiment_id"], r["cycle"]) for r in rows][:2] == [("a", "1"), ("a", "3")] and len(rows) == 8


# --- a real backend -----------------------------------------------------------------------------

PYTORCH_SWEEP = """
model = "random:tiny-llama"
backend = "pytorch"
precision = "float32"

[dataset]
num_prompts = 3
input_length = 8

[generation]
max_output_tokens = 5
ignore_eos = true

[measurement]
cycles = 2
idle_seconds = 0
warmup_requests = 0
energy_meter = "none"

[sweep]
"batching.batch_size" = [1, 3]
"""


@pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")
def test_pytorch_run_records_output_digests_that_compare_and_export_use(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(PYTORCH_SWEEP)
    proc = lem("run", "sweep.toml", "--out", "res", "--quiet", "--no-report", cwd=tmp_path)
    if proc.returncode != 0 and "--no-report" in proc.stderr:  # a lem without the HTML report
        proc = lem("run", "sweep.toml", "--out", "res", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in (tmp_path / "res").iterdir() if p.is_dir()]
    exps = sorted(p for p in run.iterdir() if (p / "summary.json").exists())
    assert len(exps) == 2
    digests = []
    for exp in exps:
        summary = read_json(exp / "summary.json")
        rows = sorted(read_json(exp / "cycle-001.json")["requests"], key=lambda r: r["id"])
        assert all(len(r["token_ids"]) == 5 for r in rows)
        for r in rows:
            assert (
                r["output_digest"] == hashlib.sha256(json.dumps(r["token_ids"]).replace(" ", "").encode()).hexdigest()
            )
        ids = json.dumps([r["token_ids"] for r in rows], separators=(",", ":"))
        assert summary["output_digest"] == hashlib.sha256(ids.encode()).hexdigest()
        assert summary["outputs_identical_across_cycles"] is True  # greedy decoding of the same prompts
        assert summary["prompts"]["digest"] is not None
        digests.append(summary["output_digest"])
    compared = json.loads(lem("results", "compare", str(run), "--json").stdout)
    differs = any(w.startswith("generated-output digest differs") for w in compared["warnings"])
    assert differs == (digests[0] != digests[1])
    assert not any(w.startswith(("prompt-set", "input tokens", "model", "precision")) for w in compared["warnings"])
    exported = lem("results", "export", str(run), "--level", "request", "--format", "jsonl")
    requests = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(requests) == 2 * 2 * 3 and all(r["output_tokens"] == 5 and r["error"] is None for r in requests)
