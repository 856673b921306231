"""Schema 2 results on the scripted backend: digests, failed requests, honest labels, and schema 1 still read.

Every figure checked here is recomputed independently in the test (hashlib over
the ids, the scripted server's timings by hand), not read back from lem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

import lem.testing.scripted as scripted
from lem import hookimpl
from lem.cli.main import cli
from lem.figures.energy import energy_figures
from lem.figures.registry import figure
from lem.figures.summary import compute_cycle, group_warnings
from lem.results.files import SCHEMA_VERSION, aggregate_experiment, read_json, read_setup, setup_config, write_json
from lem.testing import ScriptedRunner, registered

V1_RUN = Path(__file__).parent / "data" / "results-v1" / "20261122-120000-0001"
FAIL_REASON = "HTTP 500: engine overloaded"


class IdsAndFailures:
    """A backend plugin over the scripted one: its events get token ids, and the requests listed in
    ``[scripted] fail_requests`` fail on their last event (as lem.serving reports a failed request)."""

    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def generate_stream(self, model: Any, requests: Any, params: Any, config: Any) -> Any:
        if model.backend != "scripted":
            return None
        stream = scripted.generate_stream(model=model, requests=requests, params=params, config=config)
        opts = config.options_for("scripted")
        fail = set(opts.get("fail_requests", ()))
        self.calls += 1
        salt = self.calls if opts.get("vary_ids") else 0

        def events() -> Iterator[Any]:
            done: dict[int, int] = {}
            for ev in stream:
                if ev.n_tokens == 0:
                    yield ev
                    continue
                k = done.get(ev.request_id, 0)
                done[ev.request_id] = k + ev.n_tokens
                ids = tuple(ev.request_id * 100 + salt + k + i for i in range(ev.n_tokens))
                error = FAIL_REASON if ev.finished and ev.request_id in fail else None
                yield attrs.evolve(ev, token_ids=ids, error=error)

        return events()


TABLES: dict[str, Any] = {
    "dataset": {"num_prompts": 4, "input_length": 5},
    "generation": {"max_output_tokens": 3},
    "measurement": {"cycles": 3, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _tables(**changes: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(TABLES))
    for key, value in changes.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


def _run(run_scripted: ScriptedRunner, tables: dict[str, Any], wrap: bool = True) -> Path:
    """Run one experiment in-process, its events given token ids (``wrap``); returns its directory."""
    with registered(IdsAndFailures(), "ids-and-failures") if wrap else contextlib.nullcontext():
        return run_scripted(tables).experiment_dir()


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def _rewrite(path: Path, doc: dict[str, Any]) -> None:
    write_json(path, doc["kind"], {k: v for k, v in doc.items() if k not in ("schema_version", "kind")})


def test_summary_describes_itself_with_key_config_and_digests(run_scripted: ScriptedRunner) -> None:
    exp = _run(run_scripted, _tables(batching={"batch_size": 2}))
    summary = read_json(exp / "summary.json")
    assert summary["schema_version"] == SCHEMA_VERSION == 2
    assert summary["key"] == f"{exp.parent.name}/exp"
    assert summary["config"]["batching.batch_size"] == 2 and summary["config"]["dataset.num_prompts"] == 4
    assert summary["config"]["scripted.ttft_ms"] == 4.0
    # The prompt digest is over the synthetic prompts' ids in order, recomputed here from the prompt source.
    from lem.configfile.loading import structure
    from lem.prompts import load_prompts

    config, _ = structure({"model": "random:tiny-llama", **_tables(batching={"batch_size": 2})})
    assert config is not None
    prompts = load_prompts(config.dataset, None, seed=config.seed, vocab_size=setup_vocab(exp))
    expected = _sha([list(p.token_ids) for p in prompts.prompts])
    assert summary["prompts"]["digest"] == expected and summary["prompts"]["digest_of"] == "token_ids"
    assert read_json(exp / "setup.json")["prompts"]["digest"] == expected
    # Per request: the ids and their digest; per cycle and summary: the digest over all requests in id order.
    cycle = read_json(exp / "cycle-001.json")
    rows = cycle["requests"]
    assert rows[1]["token_ids"] == [100, 101, 102] and rows[1]["error"] is None
    assert rows[1]["output_digest"] == _sha([100, 101, 102])
    assert summary["output_digest"] == _sha([r["token_ids"] for r in sorted(rows, key=lambda r: r["id"])])
    assert summary["outputs_identical_across_cycles"] is True
    shown = CliRunner().invoke(cli, ["results", "show", str(exp), "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["prompts"]["digest"] == expected
    assert json.loads(shown.output)["output_digest"] == summary["output_digest"]


def setup_vocab(exp: Path) -> int:
    return int(read_json(exp / "setup.json")["model_info"]["model_config"]["vocab_size"])


def test_outputs_that_change_between_cycles_are_reported(run_scripted: ScriptedRunner) -> None:
    summary = read_json(_run(run_scripted, _tables(scripted={"vary_ids": True})) / "summary.json")
    assert summary["output_digest"] is not None and summary["outputs_identical_across_cycles"] is False


def test_a_backend_without_ids_gives_null_digests_with_a_reason(run_scripted: ScriptedRunner) -> None:
    exp = _run(run_scripted, TABLES, wrap=False)
    summary = read_json(exp / "summary.json")
    assert summary["output_digest"] is None and "did not report" in summary["output_digest_reason"]
    row = read_json(exp / "cycle-001.json")["requests"][0]
    assert row["token_ids"] is None and row["output_digest"] is None


def test_failed_requests_are_counted_and_left_out_of_latencies(run_scripted: ScriptedRunner) -> None:
    # A quarter of the requests fail: within measurement.max_failed_share = 0.5 the run is ok.
    exp = _run(run_scripted, _tables(scripted={"fail_requests": [2]}, measurement={"max_failed_share": 0.5}))
    cycle = read_json(exp / "cycle-001.json")
    assert [r["error"] for r in cycle["requests"]] == [None, None, FAIL_REASON, None]
    m = cycle["metrics"]
    assert m["failed_requests"] == 1 and m["failure_reasons"] == {FAIL_REASON: 1}
    assert m["completed_requests"] == 3 and m["requests"] == 4
    # Batch 1: request i starts when i-1's last token came, at 8·i ms (4 + 2·2): TTFT 4, 12, (20 failed), 28 ms.
    assert m["ttft_s"]["n"] == 3 and m["ttft_s"]["mean"] == pytest.approx((0.004 + 0.012 + 0.028) / 3)
    assert m["itl_s"]["n"] == 3 * 2
    # Its tokens still count in throughput.
    assert m["output_tokens"] == 12 and m["output_tokens_per_s"] * m["duration_s"] == pytest.approx(12)
    summary = read_json(exp / "summary.json")
    assert summary["failed_requests"] == 3 and summary["failure_reasons"] == {FAIL_REASON: 3}
    assert summary["workload"]["failed_requests"] == [1, 1, 1]
    assert summary["latency_pooled"]["ttft_s"]["n"] == 9
    assert f"3 of 12 requests failed over 3 cycle(s): {FAIL_REASON} (3)" in summary["warnings"]
    assert summary["status"] == "ok" and summary["status_reason"] is None


def test_failed_requests_above_the_allowed_share_degrade_the_run(run_scripted: ScriptedRunner) -> None:
    with registered(IdsAndFailures(), "ids-and-failures"):
        run = run_scripted(_tables(scripted={"fail_requests": [2]}), check=False)
    assert not run.ok
    summary = read_json(run.experiment_dir() / "summary.json")
    assert summary["status"] == "degraded"
    assert summary["status_reason"] == (
        f"3 of 12 requests failed (25.0%, above measurement.max_failed_share = 0): {FAIL_REASON} (3)"
    )


def test_beam_search_has_null_itl_and_tpot_with_a_reason(run_scripted: ScriptedRunner) -> None:
    summary = read_json(_run(run_scripted, _tables(generation={"num_beams": 2})) / "summary.json")
    for name in ("itl_s.p50", "tpot_s.p99"):
        fig = summary["figures"][name]
        assert fig["mean"] is None and fig["n"] == 0 and "beam search" in fig["reason"]
    assert "TTFT equals E2E" in summary["figures"]["ttft_s.p50"]["note"]
    assert (
        summary["latency_pooled"]["itl_s"]["n"] == 0 and "beam search" in summary["latency_pooled"]["itl_s"]["reason"]
    )
    assert any("ITL and TPOT are null" in w for w in summary["warnings"])


def test_energy_labels_mixed_methods_negative_dynamic_and_impossible_intervals(run_scripted: ScriptedRunner) -> None:
    exp = _run(run_scripted, _tables(measurement={"energy_meter": "scripted", "idle_seconds": 0.05}), wrap=False)
    # Cycle 2 as if the counter had reset and the meter integrated power instead.
    c2 = read_json(exp / "cycle-002.json")
    c2["energy_window"]["devices"][0]["method"] = "power-integration"
    _rewrite(exp / "cycle-002.json", c2)
    summary = aggregate_experiment(exp)
    assert summary["methods"]["energy"] == "mixed: counter, power-integration"
    assert summary["methods"]["energy_cycles"] == {"counter": 2, "power-integration": 1}
    assert any("power-integration in 1 cycle(s)" in w for w in summary["warnings"])
    assert summary["flags"]["negative_dynamic_energy_cycles"] == []
    # An idle baseline far above the cycles' power: dynamic energy < 0, flagged in the result, raw numbers kept.
    setup = read_json(exp / "setup.json")
    setup["idle"]["window"]["devices"][0]["energy_j"] *= 100
    _rewrite(exp / "setup.json", setup)
    summary = aggregate_experiment(exp)
    assert summary["flags"]["negative_dynamic_energy_cycles"] == [1, 2, 3]
    assert summary["figures"]["energy.dynamic_j"]["mean"] < 0
    assert any("dynamic energy is negative" in w and "idle baseline" in w for w in summary["warnings"])
    setup = read_setup(exp)
    energy = compute_cycle(read_json(exp / "cycle-001.json"), setup, setup_config(setup)[0])[1]
    assert energy["dynamic_negative"] is True and energy["dynamic_j"] == pytest.approx(
        energy["total_j"] - energy["idle_j"]
    )


def test_an_interval_below_zero_of_a_non_negative_figure_is_flagged(run_scripted: ScriptedRunner) -> None:
    exp = _run(run_scripted, TABLES)
    cycle = read_json(exp / "cycle-003.json")
    for row in cycle["requests"]:  # every token of cycle 3 two seconds late
        row["events"] = [[t + 2_000_000_000, n] for t, n in row["events"]]
    _rewrite(exp / "cycle-003.json", cycle)
    fig = aggregate_experiment(exp)["figures"]["ttft_s.mean"]
    values = fig["values"]
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    t = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # t 0.975 with df 2, in closed form: (2p - 1) / sqrt(2p(1 - p))
    assert fig["ci95_low"] == pytest.approx(mean - t * sd / 3**0.5)  # raw bound kept
    assert fig["ci95_low"] < 0 and fig["ci95_low_impossible"] is True
    summary = read_json(exp / "summary.json")
    assert "ttft_s.mean" in summary["flags"]["ci95_low_impossible"]
    assert any("below zero" in w and "more cycles" in w for w in summary["warnings"])
    # The flag is each figure's own: set exactly where that figure's bound is below zero and its values are not
    # (the untouched figures' spread is the run's timing, which a busy machine may widen: not assumed narrow),
    # and never on energy above idle, which may honestly be negative (its registry row says so).
    for name, f in summary["figures"].items():
        if f.get("ci95_low") is not None:
            own = not figure(name).may_be_negative and f["ci95_low"] < 0 <= min(v for v in f["values"] if v is not None)
            assert f["ci95_low_impossible"] is own, name
            assert (name in summary["flags"]["ci95_low_impossible"]) is own, name


def test_the_short_window_warning_appears_once(run_scripted: ScriptedRunner) -> None:
    exp = _run(run_scripted, _tables(measurement={"energy_meter": "scripted"}), wrap=False)
    summary = read_json(exp / "summary.json")
    short = [w for w in summary["warnings"] if "shorter than" in w]
    assert len(short) == 1 and short[0].startswith("cycles 1, 2, 3: ")
    # A meter that warned about the window's length itself: lem does not add its own.
    window = {"duration_s": 0.2, "devices": [{"device": 0, "energy_j": 20.0, "method": "counter"}],
              "warnings": ["window of 0.20 s is shorter than ~1 s: the counter advances in steps"]}  # fmt: skip
    _, warnings = energy_figures(window, None, None, "no idle", 10)
    assert [w for w in warnings if "shorter than" in w] == window["warnings"]


def test_warnings_differing_only_in_numbers_are_one_line() -> None:
    lines = group_warnings([(1, "window of 0.41 s"), (2, "window of 0.47 s"), (3, "window of 0.45 s"), (2, "other")])
    assert lines == ["cycles 1, 2, 3: window of 0.41–0.47 s", "cycle 2: other"]


# --- schema 1 ------------------------------------------------------------------------------------


def test_schema_1_results_still_list_show_and_aggregate(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["results", "list", str(V1_RUN.parent), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["status"] for r in rows] == ["ok", "ok"] and rows[0]["output_tokens_per_s"] > 0
    shown = runner.invoke(cli, ["results", "show", str(V1_RUN / "000-batch_size=1-v1aaaa"), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["schema_version"] == 1
    # The human summary reads a schema-1 summary too.
    human = runner.invoke(cli, ["results", "show", str(V1_RUN / "000-batch_size=1-v1aaaa")])
    assert human.exit_code == 0, human.output
    mean = json.loads(shown.output)["figures"]["output_tokens_per_s"]["mean"]
    assert "output tok/s" in human.output and format(mean, ".1f") in human.output
    copy = tmp_path / V1_RUN.name
    shutil.copytree(V1_RUN, copy)
    before = read_json(copy / "000-batch_size=1-v1aaaa" / "summary.json")
    after = aggregate_experiment(copy / "000-batch_size=1-v1aaaa")
    assert after["figures"]["output_tokens_per_s"]["values"] == before["figures"]["output_tokens_per_s"]["values"]
    assert after["figures"]["energy.j_per_output_token"]["mean"] == pytest.approx(
        before["figures"]["energy.j_per_output_token"]["mean"]
    )
    # The config comes from experiment.toml; what schema 1 never recorded is null with a reason.
    assert after["config"]["batching.batch_size"] == 1 and after["key"].endswith("/000-batch_size=1-v1aaaa")
    assert after["prompts"]["digest"] is None and "schema 1" in after["prompts"]["digest_reason"]
    assert after["output_digest"] is None and "schema 1" in after["output_digest_reason"]
    assert read_json(copy / "000-batch_size=1-v1aaaa" / "summary.json")["schema_version"] == 2
