"""``lem results show``: the human summary of a real scripted run, each part read back against summary.json.

The run is lem's scripted backend (no GPU here) with its scripted meter, an ``[slo]`` and a precision
target, through the real campaign code and the real CLI; every number the test looks for is formatted from
the run's own ``summary.json`` by the registry, never written down here.
"""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from lem.cli.main import cli
from lem.figures.registry import figure, format_value
from lem.testing import ScriptedRunner

TABLES: dict[str, Any] = {
    "dataset": {"num_prompts": 4, "input_length": 8},
    "generation": {"max_output_tokens": 3},
    "measurement": {
        "cycles": 2,
        "target_rel_ci": 0.5,
        "max_cycles": 3,
        "idle_seconds": 0.05,
        "energy_meter": "scripted",
        "warmup_requests": 1,
    },
    "slo": {"ttft_ms": 15, "percentile": 50},
    "scripted": {"ttft_ms": 4.0, "itl_ms": 2.0, "sleep": False},
}


def _section(text: str, heading: str) -> str:
    """The lines under the rule ``heading`` up to the next rule."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.strip("-= ") == heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("---")), len(lines))
    return "\n".join(lines[start + 1 : end])


def test_show_prints_what_ran_and_every_figure_with_its_interval(run_scripted: ScriptedRunner) -> None:
    exp = run_scripted(TABLES).experiment_dir()
    summary = json.loads((exp / "summary.json").read_text())
    shown = CliRunner().invoke(cli, ["results", "show", str(exp)], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert len(text.splitlines()) < 100  # a summary, not the file (--json prints that)
    facts = text.split("--- Throughput")[0]
    for key, want in (
        ("model", summary["model"]),
        ("backend", "scripted"),
        ("engine settings", "batching.batch_size=1"),
        ("workload", "dataset.num_prompts=4"),
        ("requests", f"{sum(summary['workload']['requests'])} ok, 0 failed"),
        ("measured duration", " s over all cycles"),
        ("energy method", summary["methods"]["energy"]),
    ):
        line = next(x for x in facts.splitlines() if x.startswith(key))
        assert want in line, (key, line)
    for heading, names in (
        ("Throughput", ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s")),
        ("Latency", tuple(f"{lat}.{s}" for lat in ("ttft_s", "tpot_s", "itl_s") for s in ("mean", "p50", "p99"))),
        ("Energy", ("energy.total_j", "energy.idle_j", "energy.dynamic_j", "energy.j_per_output_token")),
        ("Goodput", ("goodput.share", "goodput.requests_per_s", "goodput.j_per_good_request")),
    ):
        section = _section(text, heading)
        for name in names:
            fig, entry = figure(name), summary["figures"][name]
            line = next(x for x in section.splitlines() if x.startswith(fig.title + " "))
            # Its mean and its 95% interval, as the registry formats them.
            assert entry["mean"] is not None and entry["ci95_low"] is not None, name
            assert format_value(fig, entry["mean"]) in line.split("[")[0], (name, line)
            band = f"[{format_value(fig, entry['ci95_low'])}, {format_value(fig, entry['ci95_high'])}]"
            assert band in line, (name, line)
    # Precision: the target, the verdict, the cycles it took and the limit the run had.
    precision = summary["precision"]
    assert precision["max_cycles"] == 3
    line = " ".join(_section(text, "Precision").split())  # one line, wrapped at the screen's width
    verdict = "met" if precision["met"] else "not met"
    assert line.startswith(f"target ±50.0% (95% CI half-width over the mean): {verdict} after ")
    assert f"after {precision['cycles']} cycle(s) of at most 3" in line
    assert all(f"{figure(k).title} ±" in line for k in precision["rel_ci95"])
    # Every warning, one item each (a long one wraps onto the next lines).
    warnings = [x for x in _section(text, f"Warnings ({len(summary['warnings'])})").splitlines() if x[:2] == "- "]
    assert len(warnings) == len(summary["warnings"])
    for line, w in zip(warnings, summary["warnings"], strict=True):
        assert w.startswith(line[2:].rstrip()), (line, w)
    # --json keeps the file as it is.
    raw = CliRunner().invoke(cli, ["results", "show", str(exp), "--json"])
    assert raw.exit_code == 0 and json.loads(raw.output) == summary
