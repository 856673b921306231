"""report.html opened for real in headless Chromium (Debian's chromium, driven by playwright).

Run with `nox -s report`, which installs chromium when it is missing and the
session runs as root. The run is a real campaign on the scripted backend with
a fake-meter timeline (there is no GPU here; see reportrun.py). The
screenshot is saved under pytest's tmp directory, never in the repository.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import reportrun

pytest.importorskip("matplotlib", reason="the report's plots need the plots extra (pip install 'lem-core[plots]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright; nox -s report)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exps = [
        reportrun.experiment("000-batch_size=1", 1),
        reportrun.experiment("001-batch_size=2", 2),
        reportrun.experiment("002-batch_size=4", 4, fail="raise"),
    ]
    _, path = reportrun.run(tmp_path_factory.mktemp("run"), exps)
    return path


def test_report_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium here: `apt-get install chromium` (nox -s report does it as root)")
    report = run_dir / "report.html"
    assert report.exists()
    errors: list[str] = []
    failed: list[str] = []
    fetched: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            rows = page.locator("#summary tr.experiment")
            ids = [rows.nth(i).get_attribute("data-id") for i in range(rows.count())]
            visible = all(rows.nth(i).is_visible() for i in range(rows.count()))
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.closest('figure').dataset.name, i.complete, i.naturalWidth,"
                " i.getBoundingClientRect().width])"
            )
            failure_shown = page.get_by_text("002-batch_size=4: FAILED: RuntimeError: scripted failure at generate")
            failure_visible = failure_shown.is_visible()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == [] and failed == []
    assert [u for u in fetched if not u.startswith(("file:", "data:"))] == []  # nothing from any network
    assert ids == ["000-batch_size=1", "001-batch_size=2", "002-batch_size=4"] and visible
    names = sorted(name for name, *_ in images)
    expected = [f"cycles-00{i}-batch_size={b}" for i, b in ((0, 1), (1, 2))]
    expected += ["cdf", "roofline"]  # no [quality] in this run: no accuracy front (listed as not drawn)
    expected += [f"pareto-{x}" for x in ("output_tokens_per_s", "tpot_s-p50", "tpot_s-p99", "ttft_s-p50", "ttft_s-p99")]
    expected += [f"timeline-00{i}-batch_size={b}" for i, b in ((0, 1), (1, 2))]
    assert names == sorted(expected)
    for name, complete, natural, shown in images:
        assert complete and natural > 0 and shown > 200, f"plot {name} did not render"
    assert failure_visible
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 50_000
    print(f"screenshot: {shot}")
