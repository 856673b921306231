"""A study in one results directory, read by a person in a browser (issues 25 and 27).

Three real ``lem run`` subprocesses into one ``--out`` directory: the same pytorch sweep (batch size 1 and 2)
twice, and the llama.cpp backend on the same tiny Llama (an f32 GGUF lem converts). Every run scores its
outputs (``[quality]``, scorer ``contains``, a prompt file with references) and is metered by NVML through
the fake ``pynvml`` lem-energy-nvml ships for tests (it stands in for GPU hardware; its counter is read
for real). Then ``lem report DIR`` writes one page for the whole directory, opened in headless Chromium:
ids unique, every in-page link lands on its element, nothing wider than a 1280 px viewport, every plot
loaded. Screenshots go under pytest's tmp directory, and to ``$LEM_TEST_ARTEFACTS`` when it is set.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_recompute import QUALITY_PROMPTS, fake_nvml_shim, lem_env

from lem.figures import registry
from lem.results import plots
from lem.results.rundata import read_run

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("lem_energy_nvml", "lem_backend_pytorch", "matplotlib")),
    reason="needs lem-energy-nvml, lem-backend-pytorch and the plots extra",
)

COMMON = """
model = "random:tiny-llama"
precision = "float32"
seed = 5
[dataset]
source = "file"
path = "prompts.jsonl"
num_prompts = 4
reference_field = "answer"
[quality]
scorer = "contains"
[generation]
max_output_tokens = 4
ignore_eos = true
[measurement]
cycles = 2
warmup_requests = 1
idle_seconds = 0.2
energy_meter = "nvml"
devices = [0, 1]
"""
SWEEP = 'backend = "pytorch"\n' + COMMON + '[pytorch]\ndevice = "cpu"\n[sweep]\n"batching.batch_size" = [1, 2]\n'
#: One cycle of the model's own greedy answers, before the study: they become the references of half the prompts.
ANSWERS = (
    SWEEP.replace('reference_field = "answer"\n[quality]\nscorer = "contains"\n', "")
    .replace("cycles = 2", "cycles = 1")
    .split("[sweep]")[0]
)
WRONG = "no output holds this reference"
LLAMA = 'backend = "llamacpp"\n' + COMMON + '[llamacpp]\nquantization = "f32"\nn_ctx = 256\n'
HAS_LLAMA = importlib.util.find_spec("lem_backend_llamacpp") is not None
WIDTH = 1280


def _lem(*args: str, cwd: Path, shim: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "lem", *args],
        cwd=cwd,
        env=lem_env(cwd / "cache", shim),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"lem {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The results directory of the three runs, with ``report.html`` written by ``lem report``."""
    root = tmp_path_factory.mktemp("study")
    shim = fake_nvml_shim(root)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in QUALITY_PROMPTS))
    (root / "answers.toml").write_text(ANSWERS)
    _lem("run", "answers.toml", "--out", "answers", "--quiet", "--no-report", cwd=root, shim=shim)
    (first,) = root.glob("answers/*/*/cycle-001.json")
    answers = [r["output_text"] for r in sorted(json.loads(first.read_text())["requests"], key=lambda r: r["id"])]
    assert len(answers) == len(QUALITY_PROMPTS) and all(a and a.strip() for a in answers), answers
    # The model's own answer for the even prompts, one it cannot give for the odd ones: accuracy 0.5 by design.
    refs = [a.strip() if i % 2 == 0 else WRONG for i, a in enumerate(answers)]
    prompts.write_text(
        "".join(
            json.dumps({"prompt": p["prompt"], "answer": r}) + "\n" for p, r in zip(QUALITY_PROMPTS, refs, strict=True)
        )
    )
    (root / "sweep.toml").write_text(SWEEP)
    (root / "llama.toml").write_text(LLAMA)
    for source in ("sweep.toml", "sweep.toml", *(["llama.toml"] if HAS_LLAMA else [])):
        _lem("run", source, "--out", "results", "--yes", "--quiet", "--no-report", cwd=root, shim=shim)
    _lem("report", str(root / "results"), cwd=root, shim=shim)
    return root / "results"


def _summaries(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*/*/summary.json"))]


def test_the_study_holds_two_runs_of_the_sweep_and_a_second_backend(study: Path) -> None:
    docs = _summaries(study)
    backends = sorted(d["backend"] for d in docs)
    assert (
        backends == ["pytorch"] * 4 + (["llamacpp"] if HAS_LLAMA else [])
        or backends == (["llamacpp"] if HAS_LLAMA else []) + ["pytorch"] * 4
    )
    assert len({d["run_id"] for d in docs}) == (3 if HAS_LLAMA else 2)
    for d in docs:
        assert d["status"] == "ok", d.get("warnings")
        assert d["quality"]["scorer"] == "contains" and d["quality"]["accuracy"] is not None
        assert d["figures"]["energy.j_per_output_token"]["mean"] is not None
    # The references of the even prompts are batch size 1's own answers: that experiment scores as constructed.
    for d in docs:
        if d["backend"] == "pytorch" and d["sweep_values"] == {"batching.batch_size": 1}:
            assert d["quality"]["per_prompt"] == [True, False, True, False] and d["quality"]["accuracy"] == 0.5


def _legend(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_accuracy_pareto_fronts(study: Path) -> None:
    run = read_run(study)
    made = plots.draw("quality", run)
    assert [p.name for p in made] == ["quality-energy-j_per_output_token", "quality-energy-j_per_correct_answer"]
    x_fig = registry.figure("quality.accuracy")
    exps = [e for e in run.experiments if e.status == "ok"]
    for plot in made:
        y_name = plot.name.removeprefix("quality-").replace("-", ".", 1)
        y_fig = registry.figure(y_name)
        shown = [e for e in exps if (e.summary or {})["figures"][y_name]["mean"] is not None]
        assert plot.skipped is None and len(shown) >= 2, plot.skipped
        ax = plot.figure.axes[0]
        # One legend entry per point (backend, run, sweep values) and the front.
        legend = _legend(ax)
        entries = [t for t in legend if t != "Pareto front"]
        assert len(legend) == len(shown) + 1 and len(entries) == len(shown) == len(set(entries))
        assert {t.split(" · ")[0] for t in entries} == {(e.summary or {})["backend"] for e in shown}
        # Each point is the summary's accuracy (%) and energy figure, and the front is the one computed by hand.
        pts = [
            (
                (e.summary or {})["figures"]["quality.accuracy"]["mean"] * 100,
                (e.summary or {})["figures"][y_name]["mean"],
            )
            for e in shown
        ]
        drawn = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
        (front_line,) = drawn
        front = [
            i
            for i, p in enumerate(pts)
            if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in pts)
        ]
        on_line = sorted(zip(front_line.get_xdata(), front_line.get_ydata(), strict=True))
        assert [v for p in on_line for v in p] == pytest.approx(
            [v for i in sorted(front, key=pts.__getitem__) for v in pts[i]]
        )
        marked = [i for i, text in enumerate(entries) if text.endswith("(on the front)")]
        assert marked == sorted(front)
        # Axes within what the figures can be: accuracy 0-100 %, energy above 0; so are the bars.
        lo, hi = ax.get_xlim()
        assert 0.0 <= lo and hi <= 100.0 and ax.get_ylim()[0] >= 0.0
        for e, (x, _) in zip(shown, pts, strict=True):
            q = (e.summary or {})["quality"]
            assert 0.0 <= q["wilson95_low"] * 100 <= x <= q["wilson95_high"] * 100 <= 100.0
        assert ax.get_xlabel().startswith(x_fig.title) and ax.get_ylabel().startswith(y_fig.title)
        assert "accuracy bars: Wilson 95% interval over the prompts" in plot.figure.get_supxlabel()


def test_results_plot_draws_the_accuracy_fronts(study: Path, tmp_path: Path) -> None:
    shim = study.parent / "shim"
    done = _lem("results", "plot", str(study), "--kind", "quality", "--out", str(tmp_path), cwd=study.parent, shim=shim)
    assert "not drawn" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "quality-energy-j_per_correct_answer.png",
        "quality-energy-j_per_output_token.png",
    ]


def test_results_compare_shows_accuracy_and_mcnemar_on_the_same_prompts(study: Path) -> None:
    """``lem results compare`` of the study's scored experiments: accuracy and J per correct answer beside
    the other figures, and McNemar's exact test of each against the first, recomputed here by hand."""
    docs = sorted(_summaries(study), key=lambda d: d["key"])
    first = docs[0]
    shim = study.parent / "shim"
    keys = [d["key"] for d in docs]
    done = _lem("results", "compare", *keys, "--dir", str(study), "--json", cwd=study.parent, shim=shim)
    result = json.loads(done.stdout)
    pairs = result["quality"]["pairs"]
    assert [p["key"] for p in pairs] == keys[1:]
    for doc, row in zip(docs[1:], pairs, strict=True):
        if doc["prompts"]["digest"] != first["prompts"]["digest"]:
            assert row["test"] is None and "different prompts" in row["reason"]
            continue
        a, b = first["quality"]["per_prompt"], doc["quality"]["per_prompt"]
        only_a = sum(1 for x, y in zip(a, b, strict=True) if x is True and y is False)
        only_b = sum(1 for x, y in zip(a, b, strict=True) if y is True and x is False)
        n = only_a + only_b
        p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n)
        assert row["test"] == {"pairs": len(a), "only_first": only_a, "only_second": only_b, "p_value": p}
    # The pytorch experiments ran on the same prompt file: at least one pair is tested, not skipped.
    assert any(row["test"] is not None for row in pairs)
    table = _lem("results", "compare", *keys, "--dir", str(study), cwd=study.parent, shim=shim).stdout
    for label in ("accuracy", "J/correct answer", "McNemar (exact, two-sided) on per-prompt outcomes"):
        assert label in table, table[-3000:]


def test_results_show_has_a_quality_section(study: Path) -> None:
    """``lem results show``: a scored experiment's accuracy, correct answers and J per correct answer, and its
    accuracy over the prompts with the Wilson interval; an unscored one says why there is none."""
    shim = study.parent / "shim"
    doc = sorted(_summaries(study), key=lambda d: d["key"])[0]
    out = _lem("results", "show", doc["key"], "--dir", str(study), cwd=study.parent, shim=shim).stdout
    section = out.split("Quality", 1)[1]
    for label in ("accuracy (%)", "correct answers", "J/correct answer", "dynamic J/correct answer"):
        assert label in section, section
    q = doc["quality"]
    line = f"{q['prompts_correct']} of {q['prompts_scored']} prompts right, {q['accuracy']:.1%} (Wilson 95% ["
    assert line in section, section
    (unscored,) = (study.parent / "answers").glob("*/*/summary.json")
    out = _lem("results", "show", str(unscored.parent), cwd=study.parent, shim=shim).stdout
    assert "no quality: no [quality] table" in out.split("Quality", 1)[1]


def _save(shot: Path) -> None:
    artefacts = os.environ.get("LEM_TEST_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(artefacts) / shot.name)


#: Each in-page link, followed for real: the element its hash names, whether the page scrolled to it, and
#: (for an experiment's link) whether that element is the experiment's section.
FOLLOW = """links => links.map(a => {
  const id = decodeURIComponent(a.getAttribute('href').slice(1));
  const target = document.getElementById(id);
  if (!target) return [id, false, false, null];
  window.scrollTo(0, 0);
  a.click();
  const top = target.getBoundingClientRect().top;
  const bottom = window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 2;
  const landed = document.querySelector(':target') === target && (Math.abs(top) < 2 || bottom);
  const exp = target.matches('section.exp') ? target.dataset.key.endsWith(a.textContent.trim()) : null;
  return [id, true, landed, exp];
})"""
WIDER = f"""() => Array.from(document.querySelectorAll('body *')).filter(e => {{
  const r = e.getBoundingClientRect();
  return r.width > {WIDTH} || r.right > document.documentElement.clientWidth + 0.5;
}}).map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className)"""


def test_study_report_in_headless_chromium(study: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("no chromium here: `apt-get install chromium`")
    report = study / "report.html"
    errors: list[str] = []
    failed: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            ids = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
            wider = page.evaluate(WIDER)
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            images = page.eval_on_selector_all(
                "img",
                "imgs => imgs.map(i => [i.closest('figure') ? i.closest('figure').dataset.name : null, i.complete,"
                " i.naturalWidth, i.getBoundingClientRect().width])",
            )
            rows = page.eval_on_selector_all("#summary tr.experiment", "rs => rs.map(r => r.dataset.run)")
            shot = tmp_path / "study-report.png"
            page.screenshot(path=str(shot), full_page=True)
            _save(shot)
            links = page.eval_on_selector_all('a[href^="#"]', FOLLOW)
            page.screenshot(path=str(tmp_path / "study-report-last-link.png"))
            _save(tmp_path / "study-report-last-link.png")
        finally:
            browser.close()
    assert errors == [] and failed == []
    assert sorted(i for i in set(ids) if ids.count(i) > 1) == []
    assert wider == [] and scroll_width <= WIDTH
    docs = _summaries(study)
    assert len(rows) == len(docs) and len(set(rows)) == len({d["run_id"] for d in docs})
    # Links: every one names an element, the page lands on it, an experiment's link on that experiment.
    assert links, "the report has no in-page links"
    assert [x for x in links if not (x[1] and x[2])] == []
    to_experiments = [x for x in links if x[3] is not None]
    assert len(to_experiments) >= len(docs) and all(x[3] for x in to_experiments)
    # Plots: every kind that has data here, every experiment's own, all present and decoded.
    names = [name for name, *_ in images]
    assert None not in names and len(set(names)) == len(names)
    across = {n for n in names if "-timeline-" not in n and "-cycles-" not in n}
    assert {n.split("-")[0] for n in across} == {"pareto", "quality", "cdf", "roofline"}
    assert {
        "quality-energy-j_per_output_token",
        "quality-energy-j_per_correct_answer",
        "pareto-output_tokens_per_s",
    } <= across
    for kind in ("timeline", "cycles"):
        assert sum(f"-{kind}-" in n for n in names) == len(docs), kind
    for name, complete, natural, shown in images:
        assert complete and natural > 0 and shown > 100, f"plot {name} did not load"
    assert shot.read_bytes().startswith(b"\x89PNG")
