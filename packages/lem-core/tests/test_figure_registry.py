"""The figure registry: every summary figure has a row, every screen shows a row's one label, estimates are marked.

Real runs on the scripted backend (lem's test double: there is no GPU here) through the real campaign code
(reportrun.py). ``EstimatingMeter`` is the scripted timeline meter whose devices are labelled
``method = "estimate"`` with a basis, as CodeCarbon labels a TDP guess: a fake for hardware, whose only
difference from the measured one is that label. Everything else is lem's real code: summaries, the
end-of-run table, ``results list`` and ``show`` (the CLI), compare (table and JSON), the HTML report and the
matplotlib plots.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import reportrun
from click.testing import CliRunner

from lem import hookimpl
from lem.campaign.ending import status_table
from lem.cli.main import cli
from lem.figures import marginal, registry
from lem.figures.summary import headline_figures
from lem.results import plots
from lem.results.compare import compare, gather, render
from lem.results.report import write_report
from lem.results.rundata import read_run
from lem.testing import registered
from lem.types import EnergyWindow

BASIS = "scripted estimate: power = a constant 100 W whatever the load"


class EstimatingMeter(reportrun.TimelineMeter):
    """The timeline meter with every device labelled an estimate and its basis (a fake: no hardware here)."""

    def stop(self) -> EnergyWindow:
        window = super().stop()
        devices = tuple(attrs.evolve(d, method="estimate", reason=BASIS) for d in window.devices)
        return attrs.evolve(window, devices=devices)


class EstimatingMeterPlugin:
    @hookimpl
    def measure_energy(self, meter: str, devices: Sequence[int]) -> EstimatingMeter | None:
        return EstimatingMeter(devices, 100.0, 300.0) if meter == "estimating" else None


def _sweep(root: Path, meter: str) -> Path:
    exps = [reportrun.experiment(f"00{i}-batch_size={b}", b, meter=meter) for i, b in enumerate((1, 2))]
    with registered(EstimatingMeterPlugin(), "estimating-meter"):
        ok, run_dir = reportrun.run(root, exps)
    assert ok
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"measured": run dir, "estimate": run dir}``: the same sweep, metered by a counter and by an estimate."""
    return {
        "measured": _sweep(tmp_path_factory.mktemp("measured"), "timeline"),
        "estimate": _sweep(tmp_path_factory.mktemp("estimate"), "estimating"),
    }


def _summaries(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/summary.json"))]


# --- the registry itself -----------------------------------------------------------------------------


def test_every_figure_of_a_real_summary_has_exactly_one_row(runs: dict[str, Path]) -> None:
    names = [f.name for f in registry.FIGURES]
    assert len(names) == len(set(names))
    for summary in _summaries(runs["measured"]):
        figures = summary["figures"]
        assert isinstance(figures, dict)
        assert [n for n in figures if registry.find(n) is None] == []
        assert list(figures) == names  # the summary lists every row, in registry order


def test_rows_are_consistent() -> None:
    for fig in registry.FIGURES:
        assert fig.views <= set(registry.VIEWS), fig.name
        assert "export" in fig.views and "show" in fig.views, fig.name
        assert fig.path[0] in ("metrics", "energy"), fig.name
        if fig.unit == "ms":
            assert fig.scale == 1e3, fig.name
    assert {f.name for f in registry.FIGURES if f.precision_target} == {
        "output_tokens_per_s",
        "energy.j_per_output_token",
    }
    with pytest.raises(KeyError, match=r"no\.such: no such figure"):
        registry.figure("no.such")
    with pytest.raises(ValueError, match="unknown view"):
        registry.in_view("nowhere")


def test_method_of_reads_summaries_and_cycles(runs: dict[str, Path]) -> None:
    for variant, kind in (("measured", "measured"), ("estimate", "estimate")):
        exp = next(runs[variant].glob("000-*"))
        summary = json.loads((exp / "summary.json").read_text())
        cycle = json.loads((exp / "cycle-001.json").read_text())
        for doc in (summary, cycle):
            method = registry.method_of(doc, "energy.j_per_output_token")
            assert method.kind == kind
            assert (method.basis is not None and BASIS in method.basis) is (kind == "estimate")
            # Throughput and latency rest on timestamps, never on the meter.
            assert registry.method_of(doc, "output_tokens_per_s") == registry.MEASURED
            assert registry.method_of(doc, "ttft_s.p50") == registry.MEASURED
        assert summary["methods"]["energy_basis"] == (None if kind == "measured" else f"gpu: {BASIS}")


def test_flags_of_names_the_flagged_figures() -> None:
    summary = {
        "figures": {"energy.j_per_output_token": {"mean": 1.0, "ci95_low_impossible": True}},
        "flags": {"negative_dynamic_energy_cycles": [2], "ci95_low_impossible": ["energy.j_per_output_token"]},
    }
    assert registry.flags_of(summary, "output_tokens_per_s") == []
    assert len(registry.flags_of(summary, "energy.j_per_output_token")) == 1
    assert registry.flags_of(summary, "energy.dynamic_j") == ["negative dynamic energy in cycle(s) 2"]
    # The flags as tables: only the figures each names, only when it hit a cycle.
    decode = {"cycles": [1, 3], "count": 2, "figures": ["energy.decode_j_per_output_token"], "handling": "null"}
    summary["flags"] = {
        "negative_decode_energy": decode,
        "negative_dynamic_energy": {"cycles": [], "count": 0, "figures": [], "handling": "kept"},
    }
    assert registry.flags_of(summary, "energy.decode_j_per_output_token") == [
        "negative decode energy in cycle(s) 1, 3 (null)"
    ]
    assert registry.flags_of(summary, "energy.decode_dynamic_j_per_output_token") == []
    assert registry.flags_of(summary, "energy.dynamic_j") == []
    # A summary writes both the table and the older list of cycles: the flag is said once, with its handling.
    dynamic = {"cycles": [1], "count": 1, "figures": ["energy.dynamic_j"], "handling": "kept"}
    summary["flags"] = {"negative_dynamic_energy_cycles": [1], "negative_dynamic_energy": dynamic}
    assert registry.flags_of(summary, "energy.dynamic_j") == ["negative dynamic energy in cycle(s) 1 (kept)"]


def test_an_interval_below_zero_is_impossible_only_for_a_figure_that_cannot_be_negative() -> None:
    # Two cycles far apart: the 95% interval of each energy figure reaches below zero, its values do not.
    blocks = [{"metrics": {}, "energy": {"total_j": v, "dynamic_j": v}} for v in (0.1, 5.0)]
    figures = headline_figures(blocks)
    for name in ("energy.total_j", "energy.dynamic_j"):
        assert figures[name]["ci95_low"] < 0 < min(figures[name]["values"])
    assert figures["energy.total_j"]["ci95_low_impossible"] is True
    # Energy above idle may honestly come out below zero: its wide interval is no impossible bound.
    assert registry.figure("energy.dynamic_j").may_be_negative
    assert figures["energy.dynamic_j"]["ci95_low_impossible"] is False
    flagged = {"figures": figures, "flags": {}}
    assert registry.flags_of(flagged, "energy.dynamic_j") == [] and registry.flags_of(flagged, "energy.total_j")


# --- one label per figure -----------------------------------------------------------------------------


def _screens(run_dir: Path) -> dict[str, str]:
    """Every screen's text: run table, compare table and JSON, report HTML, plot labels."""
    exps = sorted(p.name for p in run_dir.iterdir() if (p / "summary.json").exists())
    run = read_run(run_dir)
    compared = compare(gather([str(run_dir)], run_dir.parent, lambda line: None))
    from rich.console import Console

    console = Console(width=400, record=True, color_system=None)
    console.print(render(compared))
    labels = []
    for kind in ("cycles", "pareto"):
        for plot in plots.draw(kind, run):
            assert plot.skipped is None, plot.skipped
            for ax in plot.figure.axes:
                labels += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
            labels.append(plot.figure.get_supxlabel())
    return {
        "run_table": status_table(run_dir, exps),
        "compare": console.export_text(),
        "compare_json": json.dumps(compared),
        "report": write_report(run_dir).path.read_text(encoding="utf-8"),
        "plots": "\n".join(labels),
        "compared": compared,  # type: ignore[dict-item]
    }


def test_one_label_per_figure_on_every_screen(runs: dict[str, Path]) -> None:
    screens = _screens(runs["measured"])
    header = screens["run_table"].splitlines()[0]
    for fig in registry.in_view("run_table"):
        assert fig.title in header
    compared = screens["compared"]
    assert isinstance(compared, dict)
    shown = {f["figure"]: f["title"] for f in compared["figures"]}
    assert shown == {
        f.name: f.title
        for f in registry.in_view("compare")
        if not f.name.startswith("goodput.") and f.path[:2] != ("metrics", "quality")
    }
    for title in shown.values():
        assert f"│ {title} " in screens["compare"]
    headings = dict(re.findall(r'<th(?: class="[^"]*")? data-figure="([^"]+)">([^<]+)</th>', screens["report"]))
    assert headings == {f.name: f.title for f in registry.in_view("report")}
    titles = set(screens["plots"].splitlines())
    for fig in registry.in_view("cycles_plot"):
        assert fig.title in titles
    for fig in registry.in_view("pareto"):
        assert any(t.startswith(fig.title + "  (") for t in titles), fig.title
    # The same figure never appears under another label: none of the old spellings survive.
    for old in ("J / out tok", "J / output token", "J/output token", "TTFT p50 ms", "output throughput (tok/s)"):
        for name, text in screens.items():
            assert old not in str(text), (old, name)


# --- estimate markers ---------------------------------------------------------------------------------


def test_estimates_are_marked_on_every_screen_and_measured_figures_are_not(runs: dict[str, Path]) -> None:
    est, meas = _screens(runs["estimate"]), _screens(runs["measured"])
    # The run table (and `results list`, which prints the same table): the J/out tok cell, the basis below.
    row = est["run_table"].splitlines()[2]
    # Only the last column (J/out tok) is marked: tok/s and TTFT are measured.
    assert row.count(registry.ESTIMATE) == 1 and registry.ESTIMATE in row.split("±")[-1]
    assert f"J/out tok rests on an estimate, not a measurement: gpu: {BASIS}" in est["run_table"]
    listed = CliRunner().invoke(cli, ["results", "list", str(runs["estimate"])])
    assert listed.exit_code == 0 and listed.output.count(registry.ESTIMATE) == 4  # 2 cells + 2 basis lines
    # compare --json: each cell carries its method and basis.
    compared = est["compared"]
    assert isinstance(compared, dict)
    for fig in compared["figures"]:
        row_ = registry.figure(fig["figure"])
        for cell in fig["experiments"]:
            want = "estimate" if row_.method == "energy" else "measured"
            assert cell["method"] == want, fig["figure"]
            assert (cell["basis"] == f"gpu: {BASIS}") is (want == "estimate")
    assert "J/out tok" in est["compare"] and f"{registry.ESTIMATE} " in est["compare"] and BASIS in est["compare"]
    # The notes under compare's table read as text, from the left edge (not centred under the table).
    assert any(x.startswith(f"{registry.ESTIMATE} ") and BASIS in x for x in est["compare"].splitlines())
    # The report: a marker in each energy cell, linked to a footnote with the basis.
    report = est["report"]
    # Every energy cell of the report's summary table that holds a value (a null one shows n/a, unmarked).
    summaries = [json.loads(p.read_text()) for p in sorted(runs["estimate"].rglob("summary.json"))]
    valued = [
        (s["experiment_id"], f.name)
        for s in summaries
        for f in registry.in_view("report")
        if f.method == "energy" and (s["figures"].get(f.name) or {}).get("mean") is not None
    ]
    assert len(summaries) == 2 and len(valued) >= 2 * 3
    assert report.count(f"{registry.ESTIMATE}<sup>1</sup>") == len(valued)
    assert f'<li id="est-1">{registry.ESTIMATE} rests on an estimate, not a measurement: gpu: {BASIS}' in report
    # Plots: the energy axes say "(estimate)", the note says on what.
    assert f"J/out tok {registry.ESTIMATE}" in est["plots"] and BASIS in est["plots"]
    assert f"output tok/s {registry.ESTIMATE}" not in est["plots"]
    # `lem results show`: the estimate marked beside each energy figure, the basis in the notes.
    exp = next(runs["estimate"].glob("000-*"))
    shown = CliRunner().invoke(cli, ["results", "show", str(exp)])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("J/out tok "))
    assert registry.ESTIMATE in line
    assert BASIS in shown.output
    # The sweep's fixed and marginal energy (compare --json and the report) is fitted on estimated power.
    fit = compared["marginal_energy"]
    assert fit["method_kind"] == "estimate" and fit["basis"] == f"gpu: {BASIS}"
    assert fit["marginal_j_per_output_token"] is not None, fit["reason"]  # 2 experiments x 3 cycles
    line = marginal.text(fit)
    assert line.count(registry.ESTIMATE) == 2 and BASIS in line  # the slope and the fixed power
    assert html.escape(line) in report
    assert meas["compared"]["marginal_energy"]["method_kind"] == "measured"  # type: ignore[index]
    assert registry.ESTIMATE not in marginal.text(meas["compared"]["marginal_energy"])  # type: ignore[index]
    # Measured: no marker anywhere.
    for name in ("run_table", "compare", "compare_json", "plots"):
        assert registry.ESTIMATE not in meas[name], name
    assert 'class="est"' not in meas["report"] and 'id="est-' not in meas["report"]  # its legend names the marker
    assert all(c["method"] == "measured" for f in meas["compared"]["figures"] for c in f["experiments"])  # type: ignore[index]
    shown = CliRunner().invoke(cli, ["results", "show", str(next(runs["measured"].glob("000-*")))])
    assert shown.exit_code == 0 and registry.ESTIMATE not in shown.output and "J/out tok" in shown.output
