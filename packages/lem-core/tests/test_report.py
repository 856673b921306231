"""`lem report RUN`: one self-contained report.html from real runs, for schema-1 and schema-2 results alike."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import reportrun

from lem.results.report import write_report
from lem.types import Problem

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def lem(*args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    """The real `lem` command in a subprocess; ``block_matplotlib`` makes `import matplotlib` fail in it."""
    prelude = "import sys\n" + ("sys.modules['matplotlib'] = None\n" if block_matplotlib else "")
    code = prelude + "from lem.cli.main import main\nsys.argv = ['lem', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


class Page(HTMLParser):
    """What a page is made of: its tags with their attributes, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def sweep_with_failure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two measured experiments, one that fails, and a config warning carrying markup that must be escaped."""
    exps = [
        reportrun.experiment("000-batch_size=1", 1),
        reportrun.experiment("001-batch_size=2", 2),
        reportrun.experiment("002-batch_size=4", 4, fail="raise"),
    ]
    warning = Problem("warning", "dataset.source", HOSTILE)
    ok, run_dir = reportrun.run(tmp_path_factory.mktemp("run"), exps, warnings=[warning])
    assert not ok  # one experiment failed; the report must still be there
    return run_dir


def test_lem_run_wrote_a_self_contained_report(sweep_with_failure: Path) -> None:
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    text = (sweep_with_failure / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags  # no scripts, no external stylesheets
    # Nothing is fetched: the only URLs are the page's own anchors and data: images.
    urls = [v for _, a in page.tags for k, v in a.items() if k in ("src", "href") and v]
    local = ("data:image/svg+xml;base64,", "data:image/png;base64,", "#exp-", "#est-", "#run-", "plots/")
    assert urls and all(u.startswith(local) for u in urls)
    # The print-size files each plot links to were written next to the report (SVG and PNG).
    files = [u for u in urls if u.startswith("plots/")]
    assert files and all((sweep_with_failure / u).is_file() for u in files)
    assert {Path(u).suffix for u in files} == {".svg", ".png"}
    assert not re.search(r"url\(|@import|https?://", text.split("<body>")[0])  # the CSS loads nothing either
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == 11  # 5 Pareto axes, 2 timelines, 2 cycle plots, 1 CDF, 1 roofline
    for img in images:
        data = base64.b64decode(str(img["src"]).split(",", 1)[1])
        if str(img["src"]).startswith("data:image/png"):  # timelines: every sample, kept small as a picture
            assert data.startswith(b"\x89PNG") and "power" in str(img["alt"])
        else:
            svg = data.decode("utf-8")
            assert "<svg" in svg and "http://www.w3.org/2000/svg" in svg and "<image" not in svg
    rows = [a["data-id"] for t, a in page.tags if t == "tr" and a.get("class") == "experiment"]
    assert rows == ["000-batch_size=1", "001-batch_size=2", "002-batch_size=4"]


def test_report_shows_warnings_failures_labels_and_config(sweep_with_failure: Path) -> None:
    text = (sweep_with_failure / "report.html").read_text(encoding="utf-8")
    words = " ".join(Page(text).text)
    assert HOSTILE not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in text
    assert HOSTILE in words  # escaped, so the reader sees exactly what was written
    assert "002-batch_size=4: FAILED: RuntimeError: scripted failure at generate" in words
    assert "energy window of" in words  # the summaries' own warnings
    assert "methods.energy" in words and "counter" in words  # the honest labels the summary carries
    assert "batch_size = 4" in words  # the failed experiment's resolved config (experiment.toml)
    assert "Scripted GPU" in words  # the environment
    assert "Traceback" in words  # the failure's detail


def _schema(run_dir: Path, dest: Path, version: int, extra: dict[str, Any]) -> Path:
    """A copy of a real run with every JSON file relabelled as ``version`` and ``extra`` fields added to summaries."""
    shutil.copytree(run_dir, dest)
    for path in dest.rglob("*.json"):
        doc = json.loads(path.read_text())
        doc["schema_version"] = version
        if doc.get("kind") == "summary":
            for key in ("key", "config", "output_digest"):
                doc.pop(key, None)
            doc.update(extra)
        path.write_text(json.dumps(doc))
    return dest


@pytest.mark.parametrize("version", [1, 2])
def test_schema_1_and_2_summaries(sweep_with_failure: Path, tmp_path: Path, version: int) -> None:
    """Both schemas render; schema 2's own fields (key, digests, new labels) are shown when present."""
    extra: dict[str, Any] = {}
    if version == 2:
        extra = {
            "key": "RUNKEY/exp",
            "prompts": {"description": "synthetic", "count": 4, "digest": "sha256:feedface"},
            "output_digest": "sha256:0ddba11",
            "energy_methods": {"counter": 2, "power-integration": 1},
            "config": {"batching.batch_size": 1},
        }
    copy = _schema(sweep_with_failure, tmp_path / "run", version, extra)
    done = write_report(copy)
    words = " ".join(Page(done.path.read_text(encoding="utf-8")).text)
    assert "000-batch_size=1" in words and "001-batch_size=2" in words
    if version == 2:
        for shown in ("RUNKEY/exp", "sha256:feedface", "sha256:0ddba11", "energy_methods", "power-integration"):
            assert shown in words


def test_impossible_ci_and_negative_dynamic_energy_are_flagged(sweep_with_failure: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sweep_with_failure, copy)
    path = copy / "000-batch_size=1" / "summary.json"
    doc = json.loads(path.read_text())
    # A schema-1 summary carries no flags of its own: the report works them out.
    doc["schema_version"] = 1
    doc.pop("flags", None)
    for entry in doc["figures"].values():
        entry.pop("ci95_low_impossible", None)
    doc["figures"]["energy.j_per_output_token"].update({"mean": 0.5, "ci95_low": -0.2, "ci95_high": 1.2})
    doc["figures"]["energy.dynamic_j_per_output_token"].update({"mean": -0.1, "ci95_low": -0.3, "ci95_high": 0.1})
    path.write_text(json.dumps(doc))
    text = write_report(copy).path.read_text(encoding="utf-8")
    words = " ".join(Page(text).text)
    assert "energy.j_per_output_token: 95% CI lower bound -0.2 is below 0" in words and "run more cycles" in words
    assert "energy.dynamic_j_per_output_token is negative (-0.1): the idle baseline was above" in words
    assert "impossible negative CI bound" in text


def test_damaged_files_become_warnings_not_errors(sweep_with_failure: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sweep_with_failure, copy)
    (copy / "001-batch_size=2" / "summary.json").write_text("{not json")
    words = " ".join(Page(write_report(copy).path.read_text(encoding="utf-8")).text)
    assert "001-batch_size=2" in words and "summary.json: unreadable" in words


def test_report_command_and_without_matplotlib(sweep_with_failure: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = lem("report", str(sweep_with_failure), "--out", str(out), block_matplotlib=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert "plots need matplotlib: pip install 'lem-core[plots]'" in done.stderr
    page = Page(out.read_text(encoding="utf-8"))
    assert not [t for t, _ in page.tags if t == "img"]
    assert "plots need matplotlib: pip install 'lem-core[plots]'" in " ".join(page.text)
    assert "000-batch_size=1" in " ".join(page.text)


def test_report_command_by_run_id(sweep_with_failure: Path) -> None:
    done = lem("report", sweep_with_failure.name, "--dir", str(sweep_with_failure.parent))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sweep_with_failure / "report.html")
    missing = lem("report", "no-such-run", "--dir", str(sweep_with_failure.parent))
    assert missing.returncode == 2 and "no such run" in missing.stderr and "Traceback" not in missing.stderr


def test_a_large_sweep_keeps_per_experiment_plots_to_a_few(
    sweep_with_failure: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib", reason="plots need the plots extra")
    import lem.results.report

    monkeypatch.setattr(lem.results.report, "MAX_PER_EXPERIMENT", 1)
    done = write_report(sweep_with_failure, tmp_path / "r.html")
    names = [a["data-name"] for t, a in Page(done.path.read_text(encoding="utf-8")).tags if t == "figure"]
    assert [n for n in names if n and n.startswith(("timeline-", "cycles-"))] == [
        "timeline-000-batch_size=1",
        "cycles-000-batch_size=1",
    ]
    assert "timeline: 2 more experiment(s) left out of the page; `lem results plot` draws all" in done.skipped


def test_a_report_that_cannot_be_written_is_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok, run_dir = reportrun.run(tmp_path, [reportrun.experiment("exp", 1, meter="none")])
    assert ok and (run_dir / "report.html").is_file()
    (run_dir / "report.html").unlink()
    (run_dir / "report.html").mkdir()  # nothing can be written there now
    capsys.readouterr()
    ok, _ = reportrun.run(tmp_path, [reportrun.experiment("exp", 1, meter="none")], resume_id=run_dir.name)
    captured = capsys.readouterr()
    assert ok  # the run's outcome is the experiments', not the report's
    assert "lem: warning: report.html not written (" in captured.err and f"lem report {run_dir}" in captured.err
    assert "report:" not in captured.out and captured.out.rstrip().endswith(f"results: {run_dir}/")
    assert (run_dir / "exp" / "summary.json").exists()


def test_lem_run_writes_the_report_unless_no_report(tmp_path: Path) -> None:
    """The real `lem run` on the PyTorch backend and a tiny random model."""
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'model = "random:tiny-llama"\nbackend = "pytorch"\nprecision = "float32"\npreset = "quick-test"\n'
        '[generation]\nmax_output_tokens = 4\nignore_eos = true\n[measurement]\nenergy_meter = "none"\n'
    )
    env = {**os.environ, "LEM_PLUGINS": "pytorch"}
    args = [sys.executable, "-m", "lem", "run", str(exp), "--in-process"]
    done = subprocess.run([*args, "--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    (run_dir,) = (tmp_path / "a").iterdir()
    assert f"report: {run_dir / 'report.html'}" in done.stdout.splitlines()
    assert "exp" in " ".join(Page((run_dir / "report.html").read_text(encoding="utf-8")).text)
    off = [*args, "--out", str(tmp_path / "b"), "--no-report", "--json"]
    done = subprocess.run(off, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["report"] is None and not (Path(doc["results"]) / "report.html").exists()


def test_schema_2_flags_are_the_summarys_own_and_said_once(sweep_with_failure: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(sweep_with_failure, copy)
    path = copy / "000-batch_size=1" / "summary.json"
    doc = json.loads(path.read_text())
    assert "flags" in doc  # written by this lem: schema 2
    doc["figures"]["energy.mean_power_w"].update({"ci95_low": -5.0, "ci95_low_impossible": True})
    doc["warnings"].append("the 95% interval of energy.mean_power_w reaches below zero: run more cycles")
    path.write_text(json.dumps(doc))
    text = write_report(copy).path.read_text(encoding="utf-8")
    words = " ".join(Page(text).text)
    assert words.count("energy.mean_power_w reaches below zero") == 1 and "95% CI lower bound" not in words
    assert "figures.energy.mean_power_w.ci95_low_impossible" in words and "impossible negative CI bound" in text
