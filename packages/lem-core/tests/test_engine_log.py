"""lem.run.enginelog: what an engine prints, C included, lands in engine.log; lem's progress still reaches stderr.

Each case runs in a real subprocess, so the file descriptors redirected are a process's own, not pytest's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import ctypes, logging, os, sys, warnings
    from pathlib import Path
    from lem.run.enginelog import engine_log

    print("before", flush=True)
    with engine_log(Path(sys.argv[1]), tee=sys.argv[2] == "tee") as terminal:
        libc = ctypes.CDLL(None)
        libc.printf(b"from C printf, buffered\\n")  # stdio-buffered: must be flushed into the log
        libc.dprintf(2, b"from C on fd 2\\n")
        os.write(1, b"from os.write on fd 1\\n")
        print("from Python print")
        print("from Python stderr", file=sys.stderr)
        logging.getLogger("engine").warning("from an engine's logger")
        warnings.warn("from the warnings module")
        child = "import os; os.write(2, b'from a child process\\\\n')"
        os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", child])
        terminal.write("progress line\\n")
    print("after", flush=True)
    print("after on stderr", file=sys.stderr, flush=True)
    """
)

ENGINE = (
    "from C printf, buffered",
    "from C on fd 2",
    "from os.write on fd 1",
    "from Python print",
    "from Python stderr",
    "from an engine's logger",
    "from the warnings module",
    "from a child process",
)


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc, (tmp_path / "engine.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dprintf, and lem's own platform")
def test_everything_an_engine_prints_goes_to_the_log_and_only_there(tmp_path: Path) -> None:
    proc, log = _run(tmp_path, "plain")
    for line in ENGINE:
        assert line in log, (line, log)
        assert line not in proc.stdout and line not in proc.stderr, line
    # lem's progress goes to what stderr was; the streams are back where they were afterwards.
    assert proc.stderr.splitlines() == ["progress line", "after on stderr"]
    assert proc.stdout.splitlines() == ["before", "after"]
    assert "progress line" not in log and "before" not in log and "after" not in log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dprintf, and lem's own platform")
def test_tee_shows_the_engine_on_stderr_and_keeps_the_log(tmp_path: Path) -> None:
    proc, log = _run(tmp_path, "tee")
    for line in ENGINE:
        assert line in log, (line, log)
        assert line in proc.stderr, (line, proc.stderr)
        assert line not in proc.stdout, line  # fd 1's output is the engine's too: shown on stderr, never stdout
    assert proc.stdout.splitlines() == ["before", "after"]
    assert "progress line" in proc.stderr and "progress line" not in log
    assert proc.stderr.rstrip().endswith("after on stderr")


def test_the_log_starts_afresh_for_each_attempt(tmp_path: Path) -> None:
    (tmp_path / "engine.log").write_text("an earlier attempt's output\n")
    _, log = _run(tmp_path, "plain")
    assert "an earlier attempt" not in log and "from C on fd 2" in log


LINGERING = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from pathlib import Path
    from lem.run.enginelog import engine_log

    with engine_log(Path(sys.argv[1]), tee=True):
        # An engine's process that outlives the experiment, still holding (and writing to) the tee's pipe.
        late = "import os, time; time.sleep(3); os.write(2, b'late engine line\\\\n')"
        child = subprocess.Popen([sys.executable, "-c", late])
        t0 = time.monotonic()
    print(f"returned after {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    child.wait()
    time.sleep(0.3)  # the copy, left running in the background, writes the late line
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lem's own platform")
def test_tee_returns_while_an_engine_process_lingers_and_still_logs_its_late_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LINGERING, str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    returned = float(proc.stderr.split("returned after ")[1].split(" s")[0])
    assert returned < 2.9  # waited for briefly, not for the lingering process
    assert "late engine line" in (tmp_path / "engine.log").read_text()
    assert "late engine line" in proc.stderr
