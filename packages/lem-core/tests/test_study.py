"""A study over several runs: Pareto plots a reader can rely on, compare's numbers, list filters, BoAmps export.

The runs are real campaigns on the scripted backend and meter (lem's test doubles: no GPU here; see reportrun.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import reportrun

from lem.results.boamps import write
from lem.results.compare import letters, significant, slo_text
from lem.results.plots import draw_pareto, pareto_front, point_label
from lem.results.rundata import ci, mean, read_run


def lem(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `lem` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "lem", *args], capture_output=True, text=True, timeout=300)


# The published BoAmps schema (draft-04), copied unchanged; data/boamps/README.md names its source.
BOAMPS = Path(__file__).parent / "data" / "boamps"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    for _ in range(2):  # two runs of one sweep into one results directory
        ok, _ = reportrun.run(root, [reportrun.experiment(f"00{i}-batch_size={b}", b) for i, b in enumerate((1, 2, 4))])
        assert ok
    return root


def test_pareto_has_a_legend_entry_per_point_limits_in_range_and_the_right_front(study: Path) -> None:
    pytest.importorskip("matplotlib")
    run = read_run(study)
    assert len(run.experiments) == 6
    plots = [p for p in draw_pareto(run) if p.skipped is None]
    assert plots
    for plot in plots:
        ax = plot.figure.axes[0]
        texts = [t.get_text() for t in ax.get_legend().get_texts()]
        points = [t for t in texts if t != "Pareto front"]
        assert len(points) == 6 and "Pareto front" in texts
        assert {t.removesuffix("  (on the front)") for t in points} == {point_label(e) for e in run.experiments}
        # Neither throughput, a latency nor J/token can be negative: no axis reaches below 0.
        assert ax.get_xlim()[0] >= 0 and ax.get_ylim()[0] >= 0
        x_name = plot.name.removeprefix("pareto-").replace("-", ".", 1)
        x_name = next(f for f in (x_name, x_name.replace(".", "_", 0)) if mean(run.experiments[0], f) is not None)
        from lem.figures.registry import figure

        fig = figure(x_name)
        pts = [(mean(e, x_name) * fig.scale, mean(e, "energy.j_per_output_token")) for e in run.experiments]
        front = {point_label(run.experiments[i]) for i in pareto_front(pts, bool(fig.larger_is_better))}
        assert {t.removesuffix("  (on the front)") for t in points if t.endswith("(on the front)")} == front
        # Every interval drawn stays within the axes.
        for e in run.experiments:
            band = ci(e, x_name)
            if band is not None:
                assert ax.get_xlim()[1] >= band[1] * fig.scale


def test_pareto_front_by_hand() -> None:
    # (throughput, J/token): the 2nd is beaten by the 3rd on both axes.
    assert pareto_front([(10, 1.0), (20, 3.0), (30, 2.0), (40, 5.0)], x_larger_better=True) == [0, 2, 3]


def test_compare_numbers_and_labels() -> None:
    assert [significant(v) for v in (10660.0, 0.012345, 1.5, -9811.0, 123.456)] == [
        "10700",
        "0.0123",
        "1.50",
        "-9810",
        "123",
    ]
    assert letters(28)[:3] == ["A", "B", "C"] and letters(28)[26:] == ["AA", "AB"]
    assert slo_text({"ttft_ms": 200, "tpot_ms": 50}) == "TTFT <= 200 ms, TPOT <= 50 ms" and slo_text(None) == "none"
    # A target left unset is no objective (not "E2E <= None ms"); floats from the config print plainly.
    assert slo_text({"ttft_ms": 200.0, "tpot_ms": None, "e2e_ms": None, "percentile": 99.0}) == (
        "TTFT <= 200 ms, percentile = 99"
    )
    assert slo_text({"e2e_ms": None}) == "none"


def test_list_filters_and_sweep_columns(study: Path) -> None:
    runs = sorted(p.name for p in study.iterdir() if p.is_dir() and (p / "run.json").exists())
    assert len(runs) == 2
    done = lem("results", "list", str(study), "--run", runs[0], "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 3 and {r["id"].split("/")[0] for r in rows} == {runs[0]}
    assert [r["sweep_values"] for r in rows] == [{"batching.batch_size": b} for b in (1, 2, 4)]
    table = lem("results", "list", str(study), "--backend", "scripted", "--status", "ok")
    assert table.returncode == 0 and "batch_size" in table.stdout.splitlines()[0]
    none = lem("results", "list", str(study), "--backend", "vllm")
    assert none.returncode == 0 and "no results matching the filters" in none.stdout


def boamps_validator() -> Any:
    """A validator of ``report_schema.json``; its ``$ref``s resolve to the local copies by ``id``, never the network."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    from referencing.jsonschema import DRAFT4

    schemas = {p.name: json.loads(p.read_text()) for p in sorted(BOAMPS.glob("*.json"))}
    assert len(schemas) == 5
    registry = referencing.Registry().with_resources((s["id"], DRAFT4.create_resource(s)) for s in schemas.values())

    def offline(uri: str) -> Any:
        raise AssertionError(f"the BoAmps schema refers to {uri}, which is not in tests/data/boamps")

    registry = referencing.Registry(retrieve=offline).combine(registry)
    schema = schemas["report_schema.json"]
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, registry=registry)


def test_boamps_validator_checks_the_referenced_schemas() -> None:
    # The $refs resolve: a measure without powerConsumption (measure_schema.json), a dataset with a source
    # outside its enum (dataset_schema.json) and a report without infraType (report_schema.json) all fail.
    validator = boamps_validator()
    good = {
        "task": {
            "taskStage": "inference",
            "taskFamily": "text generation",
            "algorithms": [{}],
            "dataset": [{"dataUsage": "input", "dataType": "token"}],
        },
        "measures": [{"measurementMethod": "lem", "powerConsumption": 1e-6}],
        "infrastructure": {"infraType": "other", "components": [{"componentType": "cpu", "nbComponent": 1}]},
    }
    assert not list(validator.iter_errors(good))
    bad = json.loads(json.dumps(good))
    del bad["measures"][0]["powerConsumption"]
    bad["task"]["dataset"][0]["source"] = "a prompt set"
    del bad["infrastructure"]["infraType"]
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert messages == [
        "'a prompt set' is not one of ['public', 'private', 'other']",
        "'infraType' is a required property",
        "'powerConsumption' is a required property",
    ]


def test_boamps_export_validates_against_the_schema(study: Path, tmp_path: Path) -> None:
    validator = boamps_validator()
    done = lem("results", "export", str(study), "--format", "boamps", "--out", str(tmp_path / "bo"))
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "bo").glob("*.boamps.json"))
    assert len(files) == 6
    for path in files:
        doc = json.loads(path.read_text())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name}: {errors}"
        assert "boundary" in doc["measures"][0]["measurementMethod"]
        assert all(m["powerConsumption"] > 0 for m in doc["measures"])
    # The energy in kWh is the cycles' total energy in J.
    exp = sorted(p for p in study.glob("*/*") if (p / "summary.json").exists())[0]
    totals = [json.loads(c.read_text())["energy"]["total_j"] for c in sorted(exp.glob("cycle-*.json"))]
    doc = json.loads((tmp_path / "bo" / f"{exp.parent.name}--{exp.name}.boamps.json").read_text())
    assert [m["powerConsumption"] * 3.6e6 for m in doc["measures"]] == pytest.approx(totals)
    # The tokens read and written are the cycles' sums; the prompt set is named in the description.
    work = json.loads((exp / "summary.json").read_text())["workload"]
    assert [(d["dataUsage"], d["dataQuantity"]) for d in doc["task"]["dataset"]] == [
        ("input", sum(work["input_tokens"])),
        ("output", sum(work["output_tokens"])),
    ]
    assert "prompts: synthetic" in doc["task"]["taskDescription"]
    assert doc["infrastructure"]["infraType"] == "other"  # lem cannot tell: the catch-all unless the user says
    assert write(study, tmp_path / "again", lambda line: None)


def test_boamps_infra_type_is_what_the_user_says(study: Path, tmp_path: Path) -> None:
    export = ("results", "export", str(study), "--format", "boamps", "--out", str(tmp_path / "bo"), "--infra-type")
    done = lem(*export, "onPremise")
    assert done.returncode == 0, done.stderr
    docs = [json.loads(p.read_text()) for p in (tmp_path / "bo").glob("*.boamps.json")]
    assert docs and {d["infrastructure"]["infraType"] for d in docs} == {"onPremise"}
    again = lem(*export, "privateCloud")  # into the same directory: the reports are rewritten
    assert again.returncode == 0, again.stderr
    docs = [json.loads(p.read_text()) for p in (tmp_path / "bo").glob("*.boamps.json")]
    assert {d["infrastructure"]["infraType"] for d in docs} == {"privateCloud"}
    bad = lem(*export, "cloud")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--infra-type" in bad.stderr


def _between(page: str, start: str, end: str) -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def test_report_over_the_results_directory(study: Path, tmp_path: Path) -> None:
    """`lem report DIR` over two runs: the runs with their source and lem, run/experiment names, unique anchors,
    a "what differs" table, and per experiment the workload and figure-group tables (energy with method and
    boundary)."""
    from lem import __version__

    out = tmp_path / "study.html"
    done = lem("report", str(study), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    page = out.read_text()
    runs = sorted(p.name for p in study.iterdir() if (p / "run.json").exists())
    assert f"lem report: {study.name} (2 runs)" in page
    table = _between(page, '<table id="runs"', "</table>")
    for run_id in runs:
        row = _between(table, f'<tr id="run-{run_id}">', "</tr>")
        assert f"<td>{run_id}</td><td>sweep.toml</td><td>{__version__}</td>" in row
        assert row.count("<a href=") == 3
    ids = re.findall(r' id="([^"]+)"', page)
    assert sorted(i for i in set(ids) if ids.count(i) > 1) == []
    sections = dict(re.findall(r'<section class="exp" id="([^"]+)" data-key="([^"]+)"', page))
    assert sorted(sections.values()) == sorted(
        f"{r}/00{i}-batch_size={b}" for r in runs for i, b in enumerate((1, 2, 4))
    )
    # Each summary row names its run and links to its own experiment's section.
    rows = re.findall(r'<tr class="experiment" data-id="([^"]+)" data-run="([^"]+)" data-anchor="([^"]+)">', page)
    assert len(rows) == 6 and all(sections[anchor] == f"{run}/{exp}" for exp, run, anchor in rows)
    assert _between(page, '<table id="summary"', "</thead>").count("<th>run</th>") == 1
    # Numbers in plain notation, as compare prints them (issue 25: "1.065e+04 [-9811, 3.111e+04]").
    assert not re.search(r"\de[+-]\d", _between(page, '<table id="summary"', "</table>"))
    # What differs: the sweep's key, with each experiment's value.
    differs = _between(page, '<table id="differs"', "</table>")
    assert re.findall(r"<th>([^<]+)</th>", differs) == ["experiment", "batching.batch_size"]
    assert [int(v) for v in re.findall(r"</a></td><td>(\d+)</td></tr>", differs)] == [1, 2, 4, 1, 2, 4]
    # The drill-down: workload, figure groups as small tables, energy with its method and boundary.
    for anchor in sections:
        section = _between(page, f'<section class="exp" id="{anchor}"', "</section>")
        heads = re.findall(r"<h4>([^<]+)</h4>", section)
        assert heads[:4] == ["workload", "throughput", "latency", "energy"], heads
        assert "precision" in heads and "thermal state" in heads
        energy = _between(section, "<h4>energy</h4>", "</div>")
        assert "<dt>method</dt><dd>counter</dd>" in energy and "<dt>boundary</dt><dd>gpu 0, gpu 1</dd>" in energy
        assert "J/out tok" in energy
        assert section.index("<h4>energy</h4>") < section.index("<summary>raw details</summary>")


def test_compare_puts_the_banner_first_and_reads_at_a_glance(study: Path, tmp_path: Path) -> None:
    """compare: the fairness banner before the table, lettered columns with a legend, plain significant digits,
    a "config differs" row and the SLO as text (issue 25's screen); --json keeps its keys and adds two."""
    runs = sorted(p.name for p in study.iterdir() if (p / "run.json").exists())
    slo = {"slo": {"ttft_ms": 200, "tpot_ms": 50}}
    ok, other = reportrun.run(tmp_path, [reportrun.experiment("000-batch_size=1", 1, max_output_tokens=8, more=slo)])
    assert ok
    targets = [str(study / runs[0] / "000-batch_size=1"), str(study / runs[0] / "002-batch_size=4")]
    targets.append(str(other / "000-batch_size=1"))
    done = lem("results", "compare", *targets)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "lem: warning: output tokens per pass differs" in done.stderr
    banner = out.index("not a fair comparison: the workloads differ")
    assert banner < out.index("output tokens per pass differs") < out.index("lem results compare")
    assert out.index("lem results compare") < out.index("config differs") < out.index("output tok/s")
    head = out[out.index("lem results compare") : out.index("config differs")]
    assert re.search(r"┃ A\s+┃ B\s+┃ C\s+┃", head) and "batch_size=" not in head
    legend = " ".join(out[out.index("columns: ") :].split())
    for mark, target in zip("ABC", targets, strict=True):
        key = f"{Path(target).parent.name}/{Path(target).name}"
        assert f"{mark}: {key} (scripted, random:tiny-llama)" in legend
    row = " ".join(_between(out, "config differs", "SLO").split())
    assert "batch_size=1" in row and "batch_size=4" in row and "max_output_tokens=8" in row
    slo_row = " ".join(_between(out, "│ SLO", "output tok/s").replace("│", " ").split())
    assert slo_row.startswith("none none TTFT <= 200 ms, TPOT <= 50 ms") and "None" not in slo_row
    assert "{" not in slo_row and not re.search(r"\de[+-]\d", out)
    as_json = json.loads(lem("results", "compare", *targets, "--json").stdout)
    assert as_json["experiments"][2]["slo"]["ttft_ms"] == 200 and "config" in as_json["experiments"][0]
    assert {"experiments", "figures", "warnings", "test"} <= set(as_json)


def test_list_shows_a_failure_in_one_line(tmp_path: Path) -> None:
    ok, _ = reportrun.run(
        tmp_path,
        [reportrun.experiment("000-batch_size=1", 1), reportrun.experiment("001-batch_size=2", 2, fail="raise")],
    )
    assert not ok
    done = lem("results", "list", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line for line in lines if "001-batch_size=2" in line and "failed" in line]
    assert [line for line in lines if "scripted failure at generate" in line] == [
        next(line for line in lines if line.endswith("RuntimeError: scripted failure at generate"))
    ]
    assert "Traceback" not in done.stdout
    failed = lem("results", "list", str(tmp_path), "--status", "failed", "--json")
    (row,) = json.loads(failed.stdout)
    assert row["id"].endswith("/001-batch_size=2") and row["status"] == "failed"


def test_a_long_failure_reason_is_cut_to_its_first_line() -> None:
    from lem.cli.results import _one_line

    reason = "worker exited with code 1; its last lines:\nTraceback (most recent call last):\n  File x\nValueError"
    assert _one_line(reason, "r/e") == "worker exited with code 1; its last lines: (full reason: lem results show r/e)"
    assert _one_line("x" * 200, "r/e").startswith("x" * 119 + "…")
    assert _one_line("one line", "r/e") == "one line"


def test_report_numbers_are_plain_to_four_significant_digits() -> None:
    from lem.results.report import _plain

    assert [_plain(v) for v in (11070.4, 0.024424, 19.55, -32.66, 1.0, 0.0)] == [
        "11070",
        "0.02442",
        "19.55",
        "-32.66",
        "1",
        "0",
    ]
    # Only what plain notation cannot show in a cell keeps the exponent (FLOPs, tiny fractions).
    assert _plain(2.5e12) == "2.500e+12" and _plain(1.2e-6) == "1.200e-06"


def test_pareto_leaves_out_experiments_without_energy_and_names_them(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    exps = [reportrun.experiment(f"00{i}-batch_size={b}", b) for i, b in enumerate((1, 2))]
    exps.append(reportrun.experiment("002-batch_size=4", 4, meter="none"))
    ok, run_dir = reportrun.run(tmp_path, exps)
    assert ok
    run = read_run(run_dir)
    (unmetered,) = [e for e in run.experiments if mean(e, "energy.j_per_output_token") is None]
    plot = next(p for p in draw_pareto(run) if p.name == "pareto-output_tokens_per_s")
    assert plot.skipped is None
    points = [t.get_text() for t in plot.figure.axes[0].get_legend().get_texts() if t.get_text() != "Pareto front"]
    assert len(points) == 2 and not any(point_label(unmetered, 1) in t for t in points)
    assert f"left out (not measured): {point_label(unmetered, 1)}" in plot.figure.get_supxlabel()


def test_environment_names_metered_components_by_what_they_are() -> None:
    # CodeCarbon records the CPU package and the RAM it metered among the environment's devices: the issue
    # found them shown as "gpu 0" / "gpu 1".
    from lem.results.report import _device_name

    assert _device_name({"device": -1, "component": "cpu"}, 0) == "metered cpu"
    assert _device_name({"device": -1, "component": "dram"}, 1) == "metered dram"
    assert _device_name({"index": 1, "name": "NVIDIA H100"}, 0) == "gpu 1"
