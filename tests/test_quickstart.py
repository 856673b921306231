"""The README's quickstart, exactly: `lem run examples/quickstart.toml`, then what it wrote."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path

from lem.configfile.loading import load_one

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_writes_complete_results(tmp_path: Path, lem) -> None:
    shutil.copy(REPO / "examples" / "quickstart.toml", tmp_path / "quickstart.toml")
    proc = lem("run", "quickstart.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The summary table ends with where the results are.
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: ")
    run_dir = tmp_path / last.removeprefix("results: ").strip()
    [exp_dir] = [p for p in run_dir.iterdir() if (p / "experiment.toml").exists()]  # plots/ sits beside it

    # experiment.toml is the resolved config, exactly as run: it loads back to the same config.
    original = load_one(tmp_path / "quickstart.toml")
    assert load_one(exp_dir / "experiment.toml") == original

    env = json.loads((exp_dir / "environment.json").read_text())
    assert env["python"]["version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert "lem-core" in json.dumps(env["packages"])

    cycles = sorted(exp_dir.glob("cycle-*.json"))
    assert [c.name for c in cycles] == ["cycle-001.json", "cycle-002.json", "cycle-003.json"]
    for path in cycles:
        cycle = json.loads(path.read_text())
        metrics = cycle["metrics"]
        # 8 prompts x 16 fixed-length output tokens, every token accounted for.
        assert metrics["output_tokens"] == 8 * 16
        assert metrics["input_tokens"] == 8 * 32
        assert metrics["ttft_s"]["n"] == 8 and metrics["itl_s"]["n"] == 8 * 15

    summary = json.loads((exp_dir / "summary.json").read_text())
    tps = summary["figures"]["output_tokens_per_s"]
    assert tps["n"] == 3 and tps["ci95_low"] <= tps["mean"] <= tps["ci95_high"]
    if summary["methods"]["energy"] is None:  # CPU-only machine: null with a reason, never 0
        assert summary["figures"]["energy.total_j"]["mean"] is None
        # lem-energy-nvml is installed here, so the reason is what it said, not "install it".
        # (every installed meter's reason is listed: codecarbon and rapl too where they are installed)
        reason = summary["energy_reason"]
        assert reason.startswith("no energy meter works here (") and "nvml: " in reason, reason
    # No temporary files left behind.
    assert not list(run_dir.rglob("*.tmp*"))

    # The README installs lem-core[plots]: the report the run wrote has its plots, drawn and filed.
    report = (run_dir / "report.html").read_text(encoding="utf-8")
    _has_plots(report, run_dir)
    _has_a_readable_interval(report, tps)


def _has_plots(report: str, run_dir: Path) -> None:
    figures = re.findall(
        r'<figure class="plot" data-name="([^"]+)"><img [^>]*src="data:image/([a-z+]+);base64,([^"]+)"', report
    )
    names = [name for name, *_ in figures]
    # One experiment of 3 cycles on the CPU: no front, no energy timeline, but cycles, latencies and the roofline.
    assert sorted(names) == ["cdf", "cycles-exp", "roofline"], names
    for name, mime, data in figures:
        picture = base64.b64decode(data, validate=True)
        assert picture.startswith(b"\x89PNG") if mime == "png" else b"<svg" in picture[:400], name
        assert len(picture) > 5_000, name
        for ext in ("svg", "png"):  # the print-size files the caption links to
            path = run_dir / "plots" / f"{name}.{ext}"
            assert f'href="plots/{name}.{ext}"' in report and path.stat().st_size > 5_000, path


def _has_a_readable_interval(report: str, tps: dict[str, float]) -> None:
    """The output tok/s cell shows the mean and its 95% CI over the 3 cycles as plain numbers, the summary's.

    3 cycles on a shared host can give a lower bound below zero (the README says the intervals are wide and
    real): then the cell must carry the flag that says so, never hide or clip the bound.
    """
    head = report.split('id="summary"')[1].split("<tbody>")[0]
    heads = [re.findall(r'data-figure="([^"]+)"', attrs) for attrs in re.findall(r"<th([\s>][^>]*)?>", head)]
    columns = [names[0] if names else None for names in heads]
    row = report.split('<tr class="experiment"')[1].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    cell = cells[columns.index("output_tokens_per_s")]
    number = r"(-?[0-9]+(?:\.[0-9]+)?)"  # no exponent, no nan
    found = re.fullmatch(
        rf'{number}(?: <span class="flag" title="([^"]+)">⚠</span>)?<br><small>\[{number}, {number}\]</small>', cell
    )
    assert found is not None, cell  # an interval, not "no CI (1 cycle)"
    mean, low, high = (float(found.group(i)) for i in (1, 3, 4))
    assert low <= mean <= high and mean > 0
    if low < 0:
        assert found.group(2) is not None and "impossible negative CI bound" in found.group(2), cell
    for shown, value in ((mean, tps["mean"]), (low, tps["ci95_low"]), (high, tps["ci95_high"])):
        assert shown == float(format(value, ".4g"))
