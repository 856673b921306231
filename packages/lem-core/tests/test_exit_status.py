"""The exit-status contract of ``lem run``, as the README's table states it, walked through the real CLI.

One test runs ``python -m lem run`` (real processes, real workers) four ways: every experiment ok, one
that fails and one that is degraded, a bad input, and a run stopped by Ctrl-C mid-cycle. The status each
case must exit with is read from the README's "Exit status of `lem run`" table, so the test fails when
the README and the code disagree.

The backend is ``scripted``, lem's own test double (lem.testing.scripted: exact timings, no model),
installed for the subprocesses the way any plugin is: an entry point in the ``lem`` group, declared by a
``.dist-info`` directory on PYTHONPATH. Next to it, ``failing_requests`` marks the requests listed in
its ``[failing_requests] ids`` as failed (as lem.serving reports a request the server refused).
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from test_run_safety import start, stop, wait_for

README = Path(__file__).parents[3] / "README.md"

BASE = (
    'backend = "scripted"\nmodel = "random:tiny-llama"\n[dataset]\nnum_prompts = 2\ninput_length = 4\n'
    '[generation]\nmax_output_tokens = 2\n[measurement]\nenergy_meter = "none"\ncycles = 1\nwarmup_requests = 0\n'
    "idle_seconds = 0\n"
)
FAILING_REQUESTS = """
import attrs
from lem import hookimpl
from lem.testing import scripted


@hookimpl
def generate_stream(model, requests, params, config):
    if model.backend != "scripted":
        return None
    failing = set(config.options_for("failing_requests").get("ids", ()))
    stream = scripted.generate_stream(model=model, requests=requests, params=params, config=config)
    return (
        attrs.evolve(ev, error="HTTP 500: engine overloaded")
        if ev.finished and ev.request_id in failing
        else ev
        for ev in stream
    )
"""
ENTRY_POINTS = "[lem]\nscripted = lem.testing.scripted\nfailing_requests = failing_requests\n"


def readme_exit_statuses() -> dict[int, str]:
    """``{status: meaning}`` from the README's table under "Exit status of `lem run`"."""
    text = README.read_text(encoding="utf-8")
    start = text.index("**Exit status of `lem run`:**")
    table = []
    for line in text[start:].splitlines()[1:]:
        if not line.strip() and table:
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    assert table[0] == ["status", "meaning"], table[0]
    return {int(status): meaning for status, meaning in table[2:]}


def status_for(word: str) -> int:
    """The README row whose meaning starts with, or names as a status, ``word``."""
    rows = readme_exit_statuses()
    found = [s for s, meaning in rows.items() if meaning.startswith(word) or f"`{word}`" in meaning]
    assert len(found) == 1, f"the README's exit-status table has {len(found)} rows for {word!r}: {rows}"
    return found[0]


def _plugins(where: Path) -> str:
    """A folder in which the scripted backend is installed (through entry points), for PYTHONPATH."""
    site = where / "site"
    (site / "lem_test_scripted-0.dist-info").mkdir(parents=True)
    (site / "lem_test_scripted-0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: lem-test-scripted\nVersion: 0\n"
    )
    (site / "lem_test_scripted-0.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "failing_requests.py").write_text(FAILING_REQUESTS)
    return str(site)


def test_lem_run_exits_as_the_readme_table_says(tmp_path: Path) -> None:
    rows = readme_exit_statuses()
    assert sorted(rows) == [0, 1, 2, 130], rows  # each row is walked below: a new row needs a new case
    site = _plugins(tmp_path)
    files = {
        "ok.toml": BASE + "[scripted]\nsleep = false\n",
        # One experiment that crashes at generate (failed); one whose request 1 is refused (degraded).
        "failed.toml": BASE + '[scripted]\nsleep = false\nfail = "raise"\n',
        "degraded.toml": BASE + "[scripted]\nsleep = false\n[failing_requests]\nids = [1]\n",
        "bad.toml": BASE + "max_failed_share = 1.5\n",
        # Cycle 1 is written at once, then the run waits 30 s before cycle 2: Ctrl-C comes in that wait.
        "slow.toml": BASE.replace("cycles = 1", "cycles = 2\ncooldown_seconds = 30"),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    cases = {"ok": "ok.toml", "failed": "failed.toml", "degraded": "degraded.toml", "bad input": "bad.toml"}
    seen: dict[str, tuple[int, str]] = {}
    for word, toml in cases.items():
        proc = start(tmp_path, toml, "--out", f"out-{toml[:-5]}", "--no-report", PYTHONPATH=site)
        out, err = proc.communicate(timeout=300)
        assert "Traceback" not in out + err, err
        seen[word] = (proc.returncode, out + err)

    proc = start(tmp_path, "slow.toml", "--out", "out-slow", "--no-report", PYTHONPATH=site)
    try:
        wait_for("out-slow/*/*/cycle-001.json", tmp_path)
    finally:
        out, err = stop(proc, signal.SIGINT)
    assert "Traceback" not in out + err, err
    seen["interrupted"] = (proc.returncode, out + err)

    for word, (code, text) in seen.items():
        assert code == status_for(word), f"{word}: exit {code}, the README says {status_for(word)}:\n{text[-3000:]}"
    # Each run ended the way its case means, not by some other error with the same status.
    assert re.search(r"/exp +ok +scripted", seen["ok"][1]), seen["ok"][1]
    assert "scripted failure at generate" in seen["failed"][1], seen["failed"][1]
    assert re.search(r"/exp +degraded +scripted", seen["degraded"][1]), seen["degraded"][1]
    assert "1 of 2 requests failed" in seen["degraded"][1] and "HTTP 500: engine overloaded" in seen["degraded"][1]
    assert "max_failed_share" in seen["bad input"][1] and not (tmp_path / "out-bad").exists()
    assert list(tmp_path.glob("out-slow/*/*/interrupted.json")), seen["interrupted"][1]
