"""A run directory under stress, with real ``lem run`` processes: two runs of one directory, Ctrl-C,
a full disk, a large sweep, and the modes of the files written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lem.plugins import backend_names

pytestmark = pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")

FAST = (
    'model = "random:tiny-llama"\n[dataset]\nnum_prompts = 2\ninput_length = 8\n[generation]\nmax_output_tokens = 3\n'
    '[measurement]\nenergy_meter = "none"\nwarmup_requests = 0\n'
)
#: Cycle 1 is written at once, then the run waits 30 s before cycle 2: long enough to act on a live run.
SLOW = FAST + "cycles = 2\ncooldown_seconds = 30\n"
# Python loads a module named sitecustomize from the path at start-up. This one makes fsync fail with
# ENOSPC for the files named in LEM_TEST_ENOSPC, in the parent and in the worker alike: a disk that
# fills while a run goes on (no small filesystem can be mounted here to fill for real).
ENOSPC = """
import errno, os
_names = [n for n in os.environ.get("LEM_TEST_ENOSPC", "").split(",") if n]
_fsync = os.fsync
def fsync(fd):
    target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if any(target.startswith(f".{n}.") for n in _names):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _fsync(fd)
os.fsync = fsync
"""


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):  # keep the path lem itself may come from
        env["PYTHONPATH"] = extra["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
    return env


def start(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``lem run`` in its own process group, as a terminal would start it."""
    return subprocess.Popen(
        [sys.executable, "-m", "lem", "run", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
        start_new_session=True,
    )


def lem(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lem", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env(**env)
    )


def wait_for(path_glob: str, root: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{path_glob} did not appear under {root}")


def stop(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGKILL) -> tuple[str, str]:
    os.killpg(proc.pid, sig)
    return proc.communicate(timeout=120)


def test_a_live_run_is_locked_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "slow.toml").write_text(SLOW)
    first = start(tmp_path, "slow.toml", "--out", "out")
    try:
        cycle = wait_for("out/*/exp/cycle-001.json", tmp_path)
        run_id = cycle.parent.parent.name
        files_before = sorted(p.name for p in cycle.parent.iterdir())

        second = lem(tmp_path, "run", "slow.toml", "--out", "out", "--resume", run_id)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        [line] = second.stderr.strip().splitlines()
        assert f"run {run_id} is in use: process {first.pid} is running it now" in line
        # The live run's files are untouched (a second run once deleted them).
        assert sorted(p.name for p in cycle.parent.iterdir()) == files_before
        assert json.loads(cycle.read_text())["cycle"] == 1
    finally:
        stop(first)  # SIGKILL: no clean-up, the lock file stays behind

    assert (tmp_path / "out" / run_id / ".lock").read_text().strip() == str(first.pid)
    # A changed config makes the resume stop right after it took the lock: quick, and it shows the takeover.
    third = lem(tmp_path, "run", "slow.toml", "--out", "out", "--resume", run_id, "--set", "measurement.cycles=1")
    assert f"taking over the lock left by process {first.pid}, which is no longer running" in third.stderr
    assert third.returncode == 2 and "was run with a different config" in third.stderr
    assert not (tmp_path / "out" / run_id / ".lock").exists()  # released at exit


def test_ctrl_c_records_the_interruption_and_exits_130(tmp_path: Path) -> None:
    # 101 experiments: above the confirmation threshold, so this also shows that --yes skips the question.
    (tmp_path / "sweep.toml").write_text(FAST + "[sweep]\nseed = " + str(list(range(101))) + "\n")
    proc = start(tmp_path, "sweep.toml", "--out", "out", "--yes")
    try:
        wait_for("out/*/000-*/experiment.toml", tmp_path)
        time.sleep(1.0)  # the worker is starting or loading the model
    finally:
        _, err = stop(proc, signal.SIGINT)  # to the whole group, as a terminal's Ctrl-C
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "101 experiments; estimated at least" in err
    assert "interrupted: experiment 000-" in err and "--resume" in err
    [record] = (tmp_path / "out").glob("*/000-*/interrupted.json")
    doc = json.loads(record.read_text())
    assert doc["kind"] == "interrupted" and "Ctrl-C" in doc["reason"]
    listed = lem(tmp_path, "results", "list", "out", "--json")
    status = {row["id"].split("/")[1][:3]: row["status"] for row in json.loads(listed.stdout)}
    assert status == {"000": "interrupted"}  # later experiments were never started: no directory yet
    shown = lem(tmp_path, "results", "list", "out")
    assert "interrupted" in shown.stdout


def test_a_full_disk_says_so_once_and_keeps_every_complete_file(tmp_path: Path) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(ENOSPC)
    (tmp_path / "exp.toml").write_text(FAST + "cycles = 3\n")
    done = lem(
        tmp_path,
        "run",
        "exp.toml",
        "--out",
        "out",
        PYTHONPATH=str(tmp_path / "hook"),
        LEM_TEST_ENOSPC="cycle-002.json,failure.json,summary.json",
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [exp_dir] = (tmp_path / "out").glob("*/exp")
    assert done.stderr.count("no space left on device") == 1
    assert f"no space left on device in {exp_dir.relative_to(tmp_path)}" in done.stderr
    assert "writing cycle-002.json" in done.stderr
    names = sorted(p.name for p in exp_dir.iterdir())
    assert names == ["cycle-001.json", "engine.log", "environment.json", "experiment.toml", "setup.json"]
    assert json.loads((exp_dir / "cycle-001.json").read_text())["cycle"] == 1  # whole, readable
    assert not list((tmp_path / "out").rglob(".*.tmp")), "a partial file was left"


def test_the_parent_keeps_the_workers_reason_when_the_disk_is_full(tmp_path: Path) -> None:
    """The worker fails for its own reason; failure.json then cannot be written: both are said, once."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(ENOSPC)
    # One token of room cannot hold the chat template: the worker fails while it prepares the prompts.
    dataset = '[dataset]\nsource = "builtin"\nnum_prompts = 2\nmax_input_tokens = 1\napply_chat_template = true\n'
    (tmp_path / "exp.toml").write_text(FAST.replace("[dataset]\nnum_prompts = 2\ninput_length = 8\n", dataset))
    done = lem(
        tmp_path, "run", "exp.toml", "--out", "out", PYTHONPATH=str(tmp_path / "hook"), LEM_TEST_ENOSPC="failure.json"
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("no space left on device") == 1
    assert "writing failure.json" in done.stderr
    assert "had failed: PromptError: dataset.max_input_tokens = 1 leaves no room" in done.stderr
    assert not list((tmp_path / "out").rglob(".*.tmp"))


def test_result_files_follow_the_umask(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text(FAST + "cycles = 1\n")
    done = subprocess.run(
        ["sh", "-c", f"umask 027 && exec {sys.executable} -m lem run exp.toml --out out -q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"run.json", "summary.json", "cycle-001.json", "setup.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}


def test_a_large_sweep_asks_on_a_terminal_and_no_means_nothing_runs(tmp_path: Path) -> None:
    import pty

    (tmp_path / "sweep.toml").write_text(FAST + "[sweep]\nseed = " + str(list(range(150))) + "\n")
    master, slave = pty.openpty()  # stdin is a terminal, as when a user types the command
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lem", "run", "sweep.toml", "--out", "out"],
            cwd=tmp_path,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        os.write(master, b"n\n")
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 2, err
    assert "150 experiments; estimated at least 12 min" in err  # 150 worker starts of 5 s, no idle (no meter)
    assert "Run all 150 experiments? [y/N]" in err
    assert "not started" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
