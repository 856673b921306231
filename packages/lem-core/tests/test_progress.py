"""Progress: plain lines off a terminal, a live rich line on one, and the heartbeat contract the worker relies on."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time

from lem.run.progress import Progress


class Tty(io.StringIO):
    """A stream that says it is a terminal (what a user's stderr is)."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    beats: list[float] = []
    stream = io.StringIO()
    p = Progress("[1/2] ", stream=stream, heartbeat=lambda: beats.append(time.monotonic()))
    p.stage("load")
    p.end()
    p.stage("cycle 1/3", total=4)
    for done in range(1, 5):
        p.advance(done)
    p.end("12.0 tok/s")
    p.note("a warning")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/2] load         done in ") and lines[0].endswith(" s")
    assert lines[1].startswith("[1/2] cycle 1/3    done in ") and lines[1].endswith(" s 4/4 requests  12.0 tok/s")
    assert lines[2] == "[1/2] a warning" and len(lines) == 3
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert len(beats) == 2 + 1 + 4 + 1  # stage+end, stage, every advance, end


def test_a_substage_has_its_own_line_and_the_outer_stage_ends_with_its_own_name_and_count() -> None:
    # A cycle's prefill pass runs between the cycle's requests and the cycle's result line.
    stream = io.StringIO()
    p = Progress(stream=stream)
    p.stage("cycle 1/3", total=4)
    p.advance(4)
    with p.substage("  prefill pass of cycle 1", total=8):
        p.advance(8)
    p.end("12.0 tok/s")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("  prefill pass of cycle 1 done in ") and lines[0].endswith(" s 8/8 requests")
    assert lines[1].startswith("cycle 1/3    done in ") and lines[1].endswith(" s 4/4 requests  12.0 tok/s")
    assert len(lines) == 2


def test_quiet_writes_nothing_but_still_beats() -> None:
    beats: list[int] = []
    stream = Tty()
    p = Progress(quiet=True, stream=stream, heartbeat=lambda: beats.append(1))
    p.stage("cycle 1/1", total=2)
    p.advance(1)
    p.end()
    p.note("x")
    assert stream.getvalue() == "" and len(beats) == 3


def test_a_stage_without_a_total_ticks_on_a_terminal_and_the_refresh_never_beats() -> None:
    """The load stage shows a live spinner and elapsed time while the caller is blocked (no frozen 0.0 s)."""
    beats: list[int] = []
    stream = Tty()
    p = Progress(stream=stream, heartbeat=lambda: beats.append(1))
    p.stage("load")
    time.sleep(1.4)  # the caller is busy loading a model: no calls into Progress
    during = stream.getvalue()
    p.end()
    assert "load" in during and "0:00:01" in during  # redrawn by itself: the elapsed time moved on
    assert len({c for c in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏" if c in during}) >= 2  # the spinner turned
    # Only the caller's own calls beat: a hung experiment must still look hung to the campaign runner.
    assert beats == [1, 1]
    assert re.search(r"\nload         done in 1\.\d s\n$", stream.getvalue().replace("\x1b[2K", "\n"))


def test_a_stage_with_a_total_shows_a_bar_count_and_eta_and_ends_with_one_line() -> None:
    stream = Tty()
    p = Progress(stream=stream)
    p.stage("cycle 1/3", total=8)
    for done in range(1, 5):
        time.sleep(0.15)
        p.advance(done)
    time.sleep(0.6)
    live = stream.getvalue()
    p.end("12.0 tok/s")
    assert "4/8" in live and "ETA" in live and "━" in live
    assert stream.getvalue().endswith(" s 4/8 requests  12.0 tok/s\n")


def test_close_stops_the_live_line_of_a_stage_ended_by_an_exception() -> None:
    def refreshing() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]  # rich's redraw thread

    stream = Tty()
    p = Progress(stream=stream)
    p.stage("cycle 1/1", total=2)
    assert len(refreshing()) == 1
    p.close()  # what the worker does when run_experiment raises mid-stage
    for _ in range(50):  # rich signals its thread to stop; it exits at its next wake-up
        if not refreshing():
            break
        time.sleep(0.02)
    assert refreshing() == []
    size = len(stream.getvalue())
    time.sleep(0.6)
    assert len(stream.getvalue()) == size  # nothing draws any more


def test_progress_imports_rich_only_on_a_terminal() -> None:
    code = (
        "import io, sys\n"
        "from lem.run.progress import Progress\n"
        "p = Progress(stream=io.StringIO())\n"
        "p.stage('load'); p.end()\n"
        "print('rich' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_help_imports_no_plotting_table_or_http_library() -> None:
    """`lem --help` stays fast: rich, matplotlib, pandas and httpx are imported only by the commands that use them."""
    heavy = ("rich", "matplotlib", "pandas", "httpx", "pyarrow", "torch")
    code = (
        "import sys\nfrom lem.cli.main import cli\n"
        "try:\n    cli(['--help'], prog_name='lem')\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "LOADED []" in done.stdout, done.stdout + done.stderr
