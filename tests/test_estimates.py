"""Estimated energy is marked on every screen after a real ``lem run``; measured energy is not.

Two real sweeps of the pytorch backend on the built-in tiny Llama (CPU), each a ``lem run`` subprocess:
one metered by CodeCarbon, which on this machine (no RAPL, no GPU) estimates CPU power from a TDP and RAM
power from a constant, and labels both ``estimate``; one metered by NVML through the fake ``pynvml`` that
lem-energy-nvml ships for tests (it stands in for GPU hardware; its counter is a measurement). The run
table, ``lem results list``, ``show``, ``compare`` (table and ``--json``), the report (opened in headless
Chromium, screenshot under pytest's tmp directory) and the plots are checked for the marker and its basis.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_recompute import FAKE_PYNVML

from lem.figures.registry import ESTIMATE, in_view
from lem.results import plots
from lem.results.rundata import read_run

SWEEP = """
model = "random:tiny-llama"
backend = "pytorch"
[dataset]
num_prompts = 4
input_length = 8
[generation]
max_output_tokens = 4
ignore_eos = true
[measurement]
cycles = 2
warmup_requests = 1
idle_seconds = 0.3
energy_meter = "{meter}"
{devices}
[pytorch]
device = "cpu"
[sweep]
"batching.batch_size" = [1, 2]
"""

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None for m in ("lem_energy_codecarbon", "lem_energy_nvml", "lem_backend_pytorch")
    ),
    reason="needs lem-energy-codecarbon, lem-energy-nvml and lem-backend-pytorch",
)


def _lem(*args: str, cwd: Path, shim: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "LEM_CACHE_DIR": str(cwd / "cache")}
    if shim is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "lem", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"lem {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


#: Each run's stderr (the live progress lines), by run name.
LIVE: dict[str, str] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """``{"estimate" | "measured": (run directory, the run's stdout)}``."""
    root = tmp_path_factory.mktemp("estimates")
    shim = root / "shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    out = {}
    for name, meter, devices, path in (
        ("estimate", "codecarbon", "", None),
        ("measured", "nvml", "devices = [0, 1]", shim),
    ):
        (root / f"{name}.toml").write_text(SWEEP.format(meter=meter, devices=devices))
        done = _lem("run", f"{name}.toml", "--out", name, "--yes", cwd=root, shim=path)
        [run_dir] = (root / name).iterdir()
        out[name] = (run_dir, done.stdout)
        LIVE[name] = done.stderr
    return out


def _energy_methods(run_dir: Path) -> set[str]:
    return {json.loads(p.read_text())["methods"]["energy"] for p in run_dir.glob("*/summary.json")}


def test_the_run_table_list_show_and_compare_mark_estimates(runs: dict[str, tuple[Path, str]]) -> None:
    run_dir, stdout = runs["estimate"]
    assert _energy_methods(run_dir) == {"estimate"}  # CodeCarbon on this machine: every energy is an estimate
    rows = [line for line in stdout.splitlines() if line.startswith(run_dir.name)]
    # Only the last column (J/out tok) is marked; on a busy machine a wide interval may be flagged as well.
    assert len(rows) == 2 and all(r.count(ESTIMATE) == 1 and ESTIMATE in r.split("±")[-1] for r in rows)
    assert "J/out tok rests on an estimate, not a measurement: cpu: CodeCarbon estimate" in stdout
    listed = _lem("results", "list", str(run_dir.parent), cwd=run_dir.parent).stdout
    listed_rows = [line for line in listed.splitlines() if line.startswith(run_dir.name)]
    # `results list` adds a column per sweep key; the figure cells and their markers are the run table's.
    figures = [" ".join(r.split("random:tiny-llama")[1].split()[-7:]) for r in rows]
    assert [" ".join(r.split("random:tiny-llama")[1].split()[-7:]) for r in listed_rows] == figures
    shown = _lem("results", "show", str(next(run_dir.glob("000-*"))), cwd=run_dir.parent).stdout
    assert ESTIMATE in next(x for x in shown.splitlines() if x.startswith("J/out tok "))
    assert "TDP" in shown
    compared = json.loads(_lem("results", "compare", str(run_dir), "--json", cwd=run_dir.parent).stdout)
    by = {f["figure"]: f["experiments"] for f in compared["figures"]}
    assert all(c["method"] == "estimate" and "TDP" in c["basis"] for c in by["energy.j_per_output_token"])
    assert all(c["method"] == "measured" and c["basis"] is None for c in by["output_tokens_per_s"])
    table = _lem("results", "compare", str(run_dir), cwd=run_dir.parent).stdout
    assert ESTIMATE in table and "TDP" in table


def test_the_live_cycle_lines_mark_estimates(runs: dict[str, tuple[Path, str]]) -> None:
    for name, marked in (("estimate", True), ("measured", False)):
        lines = [x for x in LIVE[name].splitlines() if "cycle " in x and " J/out tok" in x]
        assert len(lines) == 2 * 2, LIVE[name]  # 2 experiments x 2 cycles
        assert all((ESTIMATE in x) is marked for x in lines), lines


def test_measured_energy_is_not_marked(runs: dict[str, tuple[Path, str]]) -> None:
    run_dir, stdout = runs["measured"]
    assert _energy_methods(run_dir) == {"counter"}
    assert "J/out tok" in stdout and ESTIMATE not in stdout
    assert ESTIMATE not in _lem("results", "list", str(run_dir.parent), cwd=run_dir.parent).stdout
    assert ESTIMATE not in _lem("results", "show", str(next(run_dir.glob("000-*"))), cwd=run_dir.parent).stdout
    compared = json.loads(_lem("results", "compare", str(run_dir), "--json", cwd=run_dir.parent).stdout)
    assert {c["method"] for f in compared["figures"] for c in f["experiments"]} == {"measured"}
    labels = _plot_labels(run_dir)
    assert "J/out tok" in labels and ESTIMATE not in labels
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    assert 'class="est"' not in report and 'id="est-' not in report


def _plot_labels(run_dir: Path) -> str:
    labels = []
    for kind in ("cycles", "pareto"):
        for plot in plots.draw(kind, read_run(run_dir)):
            assert plot.skipped is None, plot.skipped
            labels.append(plot.figure.get_supxlabel())
            labels += [t for ax in plot.figure.axes for t in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())]
    return "\n".join(labels)


def test_plots_mark_estimated_axes(runs: dict[str, tuple[Path, str]]) -> None:
    labels = _plot_labels(runs["estimate"][0])
    for fig in in_view("cycles_plot"):
        marked = f"{fig.title} {ESTIMATE}" in labels
        assert marked is (fig.method == "energy"), fig.name
    # The Pareto fronts plot J/out tok up the y axis since the study report (lower is better).
    assert f"J/out tok {ESTIMATE}  (↓ better)" in labels and "TDP" in labels


def test_report_in_headless_chromium_marks_estimates(runs: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no chromium here: `apt-get install chromium`")
    report = runs["estimate"][0] / "report.html"
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri(), wait_until="load")
            columns = page.eval_on_selector_all("#summary th", "ths => ths.map(t => t.dataset.figure || null)")
            cells = page.eval_on_selector_all(
                "#summary tr.experiment", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))"
            )
            marker = page.locator("#summary a.est").first
            tooltip = marker.get_attribute("title")
            visible = marker.is_visible()
            marker.click()  # the footnote with the basis is one click away
            footnote = page.locator("ol.estimates li").first.inner_text()
            page.screenshot(path=str(tmp_path / "report-estimates.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [] and visible
    assert (tmp_path / "report-estimates.png").stat().st_size > 10_000
    assert len(cells) == 2
    for row in cells:
        for name, text in zip(columns, row, strict=True):
            if name is not None:
                # An energy cell with a value is marked; one with none (n/a: no [quality] here) is not.
                assert (ESTIMATE in text) is (name.startswith("energy.") and text != "n/a"), (name, text)
    assert tooltip is not None and "TDP" in tooltip and "TDP" in footnote and ESTIMATE in footnote
