"""`lem results plot` on real result directories: every kind draws valid PNG and SVG, or says why it did not."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import reportrun

from lem.results.plots import pareto_front

pytest.importorskip("matplotlib", reason="the plot tests need the plots extra (pip install 'lem-core[plots]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def lem(*args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    """The real `lem` command in a subprocess; ``block_matplotlib`` makes `import matplotlib` fail in it."""
    prelude = "import sys\n" + ("sys.modules['matplotlib'] = None\n" if block_matplotlib else "")
    code = prelude + "from lem.cli.main import main\nsys.argv = ['lem', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reportrun.sweep(tmp_path_factory.mktemp("sweep"))


def _valid_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    pixels = matplotlib.image.imread(path)  # a real decode, not just the magic bytes
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01, f"{path} is blank"


def _valid_svg(path: Path) -> None:
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 50, f"{path} draws almost nothing"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "pareto",
            [f"pareto-{x}" for x in ("output_tokens_per_s", "ttft_s-p50", "ttft_s-p99", "tpot_s-p50", "tpot_s-p99")],
        ),
        ("timeline", ["timeline-000-batch_size=1", "timeline-001-batch_size=2"]),
        ("cycles", ["cycles-000-batch_size=1", "cycles-001-batch_size=2"]),
        ("cdf", ["cdf"]),
        ("roofline", ["roofline"]),
    ],
)
def test_each_kind_writes_valid_png_and_svg(sweep: Path, tmp_path: Path, kind: str, expected: list[str]) -> None:
    out = tmp_path / "plots"
    done = lem("results", "plot", str(sweep), "--kind", kind, "--out", str(out), "--format", "png", "--format", "svg")
    assert done.returncode == 0, done.stderr
    assert "not drawn" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{ext}" for n in expected for ext in ("png", "svg"))
    for name in expected:
        _valid_png(out / f"{name}.png")
        _valid_svg(out / f"{name}.svg")
    assert set(done.stdout.split()) == {str(p) for p in out.iterdir()}


def test_default_is_every_kind_as_png_under_the_run(sweep: Path) -> None:
    # The run's report already wrote its print-size SVG and PNG files to DIR/plots: the command must leave
    # the SVGs alone and write one PNG per figure of every kind there.
    svgs = {p: p.stat().st_mtime_ns for p in (sweep / "plots").glob("*.svg")}
    done = lem("results", "plot", str(sweep))
    assert done.returncode == 0, done.stderr
    written = [Path(p) for p in done.stdout.split()]
    assert {p.parent for p in written} == {sweep / "plots"} and all(p.suffix == ".png" for p in written)
    kinds = {p.name.split("-")[0].removesuffix(".png") for p in written}
    assert len(written) == 11 and kinds == {"pareto", "timeline", "cycles", "cdf", "roofline"}
    assert sorted((sweep / "plots").glob("*.png")) == sorted(written)
    assert {p: p.stat().st_mtime_ns for p in (sweep / "plots").glob("*.svg")} == svgs
    for path in written:
        _valid_png(path)


def test_figures_that_cannot_be_drawn_are_skipped_with_their_reason(tmp_path: Path) -> None:
    # One experiment, one cycle, no energy meter: nothing for a front, a timeline or a CI band.
    _, run_dir = reportrun.run(tmp_path / "one", [reportrun.experiment("exp", 1, meter="none", cycles=1)])
    out = tmp_path / "plots"
    done = lem("results", "plot", str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "pareto: pareto not drawn: a Pareto front needs at least 2 experiments with results; this run has 1" in err
    assert "timeline: timeline-exp not drawn: no timeline-NNN.csv files (" in err
    assert "cycles: cycles-exp not drawn: 1 cycle(s): no confidence interval to draw" in err
    # Latencies were measured, and decode steps timed on a known architecture: those two are real.
    assert sorted(p.name for p in out.iterdir()) == ["cdf.png", "roofline.png"]

    # Two experiments without energy: no J per token, so no Pareto front either.
    _, run2 = reportrun.run(
        tmp_path / "two", [reportrun.experiment("a", 1, meter="none"), reportrun.experiment("b", 2, meter="none")]
    )
    done = lem("results", "plot", str(run2), "--kind", "pareto", "--out", str(tmp_path / "p2"))
    assert done.returncode == 0
    assert "pareto not drawn: needs energy measured in 2+ experiments (" in done.stderr
    assert not (tmp_path / "p2").exists()


def _roofline(run_dir: Path) -> Any:
    from lem.results.plots import draw
    from lem.results.rundata import read_run

    (plot,) = draw("roofline", read_run(run_dir))
    return plot


def test_roofline_points_sit_under_the_roofs_of_hardware(tmp_path: Path) -> None:
    # Peaks set in [hardware] (the scripted backend names no device): each experiment is one point at its
    # summary's decode arithmetic intensity and FLOP/s, under one roof min(peak FLOP/s, AI x bandwidth).
    hw = {"hardware": {"peak_memory_bandwidth_gbs": 3.0, "peak_tflops": 0.002}}
    exps = [reportrun.experiment(f"00{i}-batch_size={b}", b, meter="none", more=hw) for i, b in ((0, 1), (1, 2))]
    _, run_dir = reportrun.run(tmp_path / "hw", exps)
    summaries = [json.loads((run_dir / e.id / "summary.json").read_text()) for e in exps]
    plot = _roofline(run_dir)
    assert plot.skipped is None
    ax = plot.figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    points = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    got = sorted((float(ln.get_xdata()[0]), float(ln.get_ydata()[0])) for ln in points)
    want = sorted(
        (
            s["figures"]["efficiency.decode_arithmetic_intensity"]["mean"],
            s["figures"]["efficiency.decode_flops_per_s"]["mean"],
        )
        for s in summaries
    )
    assert len(got) == 2 and [v for p in got for v in p] == pytest.approx([v for p in want for v in p])
    assert [t.get_text() for t in ax.texts] == ["batch_size=1", "batch_size=2"]  # each point named
    (roof,) = [ln for ln in ax.get_lines() if ln.get_marker() != "o"]
    assert roof.get_label() == "roof: [hardware] × 1"
    xs, ys = (list(map(float, roof.get_xdata())), list(map(float, roof.get_ydata())))
    assert ys == pytest.approx([min(0.002e12, x * 3.0e9) for x in xs])
    assert xs[0] < min(x for x, _ in got) and xs[-1] > max(x for x, _ in got)  # the roof spans the points
    assert all(y <= min(0.002e12, x * 3.0e9) for x, y in got)  # nothing runs above its roof
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["roof: [hardware] × 1"]


def test_roofline_without_peaks_or_decode_steps(tmp_path: Path) -> None:
    # No [hardware] and no device the peaks table knows: points, no roof, and the figure says so.
    _, run_dir = reportrun.run(tmp_path / "cpu", [reportrun.experiment("exp", 1, meter="none", cycles=1)])
    plot = _roofline(run_dir)
    assert plot.skipped is None and plot.figure.axes[0].get_legend() is None
    assert [ln.get_marker() for ln in plot.figure.axes[0].get_lines()] == ["o"]
    assert plot.figure.get_supxlabel() == "no peaks known (set [hardware]): points without a roof"
    # One output token per request: no decode step, so nothing to place; the command says why.
    _, one = reportrun.run(tmp_path / "one", [reportrun.experiment("exp", 1, meter="none", max_output_tokens=1)])
    summary = json.loads((one / "exp" / "summary.json").read_text())
    assert summary["figures"]["efficiency.decode_flops_per_s"]["mean"] is None
    assert _roofline(one).skipped == "no experiment has decode steps with a known architecture"
    done = lem("results", "plot", str(one), "--kind", "roofline", "--out", str(tmp_path / "p"))
    assert done.returncode == 0
    assert "roofline: roofline not drawn: no experiment has decode steps with a known architecture" in done.stderr
    assert not (tmp_path / "p").exists()


def test_without_matplotlib_the_command_says_how_to_install_it(sweep: Path, tmp_path: Path) -> None:
    done = lem("results", "plot", str(sweep), "--out", str(tmp_path / "p"), block_matplotlib=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "lem: plots need matplotlib: pip install 'lem-core[plots]'"
    assert "Traceback" not in done.stderr


def test_not_a_results_directory(tmp_path: Path) -> None:
    done = lem("results", "plot", str(tmp_path))
    assert done.returncode == 2
    assert "no experiments found" in done.stderr and "Traceback" not in done.stderr


def test_pareto_front() -> None:
    # (throughput, J/token): larger throughput and smaller J/token are better.
    points = [(100.0, 2.0), (200.0, 1.5), (150.0, 1.0), (300.0, 3.0), (120.0, 2.5)]
    assert pareto_front(points, x_larger_better=True) == [2, 1, 3]
    # (latency, J/token): both smaller is better.
    assert pareto_front([(10.0, 2.0), (5.0, 3.0), (20.0, 1.0), (15.0, 2.5)], x_larger_better=False) == [1, 0, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)], x_larger_better=True) == [0, 1]  # equal points: both on it
