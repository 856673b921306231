"""Launchers, for real: a backend's worker started through a wrapper script, ``env -i`` and ``unshare -m``
(a mount namespace whose ``--out`` is an empty tmpfs), and launchers that fail at once, hang, or kill the
worker mid-run. Docker, Apptainer and Slurm cannot run on this machine; these are the launchers that can.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from test_run_safety import FAST, lem, start, stop, wait_for

import lem.testing.scripted as scripted
from lem.campaign.job import job_for
from lem.campaign.launcher import Launcher
from lem.campaign.loop import CampaignOptions, run_campaign
from lem.campaign.worker import run_in_worker
from lem.configfile.loading import LoadedFile
from lem.plugins import backend_names

SH = shutil.which("sh") or "/bin/sh"
SCRIPTED = {
    "dataset": {"num_prompts": 2, "input_length": 4},
    "generation": {"max_output_tokens": 2},
    "measurement": {"cycles": 1, "idle_seconds": 0.0, "energy_meter": "none", "warmup_requests": 0},
    "scripted": {"sleep": False},
}
needs_pytorch = pytest.mark.skipif("pytorch" not in backend_names(), reason="lem-backend-pytorch is not installed")


def _python_env() -> list[str]:
    """``VAR=value`` words a clean environment needs to find this lem (the path the tests run it from)."""
    return [f"PYTHONPATH={os.environ['PYTHONPATH']}"] if os.environ.get("PYTHONPATH") else []


def _wrapper(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def _campaign(tmp_path: Path, launcher: list[str], *exps: Any, start_timeout_s: float = 600.0) -> Path:
    launchers = {"scripted": Launcher("scripted", tuple(launcher), "--launch")}
    options = CampaignOptions(
        out_dir=tmp_path / "out", quiet=True, launchers=launchers, start_timeout_s=start_timeout_s
    )
    run_campaign(LoadedFile("t.toml", exps, ()), options)
    (run_dir,) = (tmp_path / "out").iterdir()
    return run_dir


def _failure(run_dir: Path, exp_id: str) -> dict[str, Any]:
    return json.loads((run_dir / exp_id / "failure.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.usefixtures("scripted_backend")
def test_a_launcher_that_exits_at_once_is_a_failure_with_its_status_and_last_line(tmp_path: Path) -> None:
    # What `docker run` does for an image it cannot find: a line on stderr, status 125.
    launcher = [SH, "-c", 'echo "launcher: unable to find image foo:1.0" >&2; exit 125']
    run_dir = _campaign(tmp_path, launcher, scripted.experiment(SCRIPTED, exp_id="exp"))
    failure = _failure(run_dir, "exp")
    assert failure["exit_code"] == 125
    assert "exited with status 125 before reporting a result" in failure["reason"]
    assert failure["reason"].endswith("last output: launcher: unable to find image foo:1.0")
    assert "launcher: unable to find image foo:1.0" in failure["detail"]
    assert not (run_dir / "exp" / "summary.json").exists()
    # No environment.json (the worker never started): failure.json says which launcher ran, as given.
    assert not (run_dir / "exp" / "environment.json").exists()
    assert failure["launcher"]["command"] == launcher and failure["launcher"]["worker"] is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.usefixtures("scripted_backend")
def test_a_launcher_that_hangs_before_the_worker_starts_is_bounded(tmp_path: Path) -> None:
    # A launcher stuck before the worker (an image pull, a job that never leaves the queue), with a child.
    pid_file = tmp_path / "sleep.pid"
    launcher = [SH, "-c", f'echo "waiting for resources" >&2; sleep 600 & echo $! > {pid_file}; wait']
    t0 = time.monotonic()
    run_dir = _campaign(
        tmp_path, launcher, scripted.experiment(SCRIPTED, exp_id="a"), scripted.experiment(SCRIPTED, exp_id="b"),
        start_timeout_s=1.5,
    )  # fmt: skip
    assert time.monotonic() - t0 < 60
    for exp_id in ("a", "b"):  # each one waited its own bounded time; the campaign went on
        failure = _failure(run_dir, exp_id)
        assert failure["reason"].startswith("the worker did not start within 1.5 s (campaign.start_timeout_s")
        assert failure["reason"].endswith("last output: waiting for resources")
    assert not _alive(int(pid_file.read_text()))  # what the launcher started was ended with it


def test_a_launched_workers_files_come_back_even_when_its_experiment_fails(
    tmp_path: Path, scripted_backend: Any
) -> None:
    exp = scripted.experiment({**SCRIPTED, "scripted": {"sleep": False, "fail": "raise"}}, exp_id="exp")
    # No exp_dir: the worker measures into a directory of its own and sends the files back.
    job = attrs.evolve(job_for(exp, tmp_path / "unused", "run", quiet=True), exp_dir="")
    outcome = run_in_worker(job, Launcher("scripted", (sys.executable,), "--launch"), deliver_to=tmp_path / "exp")
    assert not outcome.ok and "scripted failure at generate" in (outcome.reason or "")
    assert not (tmp_path / "unused").exists()
    env = json.loads((tmp_path / "exp" / "environment.json").read_text())  # written by the worker, sent back
    assert env["launcher"]["command"] == [sys.executable] and env["launcher"]["worker"]["pid"] > 0
    assert (tmp_path / "exp" / "setup.json").exists()


# --- the `lem` command, with the real PyTorch backend on a tiny model --------------------------------------


@needs_pytorch
def test_launch_on_the_command_line_wins_over_the_file_and_runs_in_a_clean_environment(tmp_path: Path) -> None:
    seen_file, seen_cli = tmp_path / "file-launcher.txt", tmp_path / "cli-launcher.txt"
    from_file = _wrapper(tmp_path / "file.sh", f'echo "$@" > {seen_file}\nexec "$@"\n')
    from_cli = _wrapper(tmp_path / "cli.sh", f'env > {seen_cli}\necho "argv: $*" >> {seen_cli}\nexec "$@"\n')
    (tmp_path / "exp.toml").write_text(FAST + f'[campaign.launch]\npytorch = "{from_file} {sys.executable}"\n')
    clean = shlex.join(["env", "-i", *_python_env(), "HF_HUB_OFFLINE=1", from_cli, sys.executable])
    done = lem(tmp_path, "run", "exp.toml", "--out", "out", "--launch", f"pytorch={clean}", LEM_TEST_DIRTY="1")
    assert done.returncode == 0, done.stderr
    assert not seen_file.exists()  # --launch took the backend over
    seen = seen_cli.read_text()
    assert "LEM_TEST_DIRTY" not in seen  # env -i: nothing of the campaign's environment
    assert f"argv: {sys.executable} -m lem.campaign.worker" in seen
    (exp_dir,) = (tmp_path / "out").glob("*/exp")
    assert json.loads((exp_dir / "summary.json").read_text())["status"] == "ok"
    env = json.loads((exp_dir / "environment.json").read_text())
    assert env["launcher"]["from"] == "--launch" and env["launcher"]["command"][:2] == ["env", "-i"]
    assert env["launcher"]["worker"]["python"] == sys.executable
    assert env["python"]["executable"] == sys.executable  # what the worker saw inside


@needs_pytorch
def test_a_worker_killed_mid_run_by_its_launcher_is_recorded_and_the_campaign_goes_on(tmp_path: Path) -> None:
    # The first time, the wrapper runs the worker in the background, kills it once it has written a cycle
    # (in the worker's own directory: nothing reaches --out before the end), and exits as a container killed
    # by the out-of-memory killer does. The second time it simply runs the worker.
    work, mark = tmp_path / "work", tmp_path / "called"
    work.mkdir()
    wrapper = _wrapper(
        tmp_path / "killer.sh",
        f'if [ -e {mark} ]; then exec "$@"; fi\ntouch {mark}\nexport TMPDIR={work}\nexec 3<&0\n"$@" <&3 &\n'
        f"pid=$!\nuntil ls {work}/lem-worker-*/*/cycle-001.json >/dev/null 2>&1; do sleep 0.05; done\n"
        'kill -9 "$pid"\necho "killer: worker killed mid-run" >&2\nexit 137\n',
    )
    sweep = 'cycles = 2\ncooldown_seconds = 2\n[sweep]\n"dataset.num_prompts" = [2, 3]\n'
    (tmp_path / "exp.toml").write_text(FAST + sweep)
    done = lem(tmp_path, "run", "exp.toml", "--out", "out", "--launch", f"pytorch={wrapper} {sys.executable}")
    assert done.returncode == 1, done.stderr
    first, second = sorted(p.parent for p in (tmp_path / "out").glob("*/*/experiment.toml"))
    failure = json.loads((first / "failure.json").read_text())
    assert failure["exit_code"] == 137
    assert "exited with status 137" in failure["reason"] and "killer: worker killed mid-run" in failure["reason"]
    assert not (first / "summary.json").exists() and not list(first.glob("cycle-*.json"))
    assert json.loads((second / "summary.json").read_text())["status"] == "ok"
    assert [p.name for p in sorted(second.glob("cycle-*.json"))] == ["cycle-001.json", "cycle-002.json"]


@needs_pytorch
@pytest.mark.parametrize("session", ["shared", "own"])
def test_ctrl_c_through_a_launcher_stops_the_worker_and_is_recorded(tmp_path: Path, session: str) -> None:
    # The wrapper stays the worker's parent (as `docker run -i` and `srun` do) and says how it ended. "shared":
    # the terminal's Ctrl-C reaches the worker through the process group. "own": `setsid` puts the worker out
    # of its reach (a container's or a job step's processes); only lem closing its stdin can stop it.
    work, pid_file = tmp_path / "work", tmp_path / "worker.pid"
    work.mkdir()
    inner = f'echo $$ > {pid_file}; exec "$@"'
    wrapper = _wrapper(
        tmp_path / "wrap.sh",
        f"trap 'echo wrap: SIGINT >&2' INT\nexport TMPDIR={work}\nsh -c {shlex.quote(inner)} sh \"$@\"\n"
        'echo "wrap: worker exited $?" >&2\n',
    )
    launcher = [*(["setsid"] if session == "own" else []), wrapper, sys.executable]
    (tmp_path / "exp.toml").write_text(FAST + "cycles = 2\ncooldown_seconds = 60\n")
    proc = start(tmp_path, "exp.toml", "--out", "out", "--launch", f"pytorch={shlex.join(launcher)}")
    try:
        wait_for("work/lem-worker-*/exp/cycle-001.json", tmp_path)  # the worker waits out its cooldown
        t0 = time.monotonic()
    finally:
        _, err = stop(proc, signal.SIGINT)  # to lem's whole process group, as a terminal's Ctrl-C
    assert time.monotonic() - t0 < 60, err  # the worker stopped itself: not killed after the 90 s grace
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: experiment exp of run" in err
    assert "--launch" in err.splitlines()[-1]  # the --resume line gives the launcher again
    assert "wrap: worker exited" in err  # the launcher outlived its worker: it was not killed
    assert ("wrap: SIGINT" in err) == (session == "shared")  # in its own session, only the EOF stopped it
    assert not _alive(int(pid_file.read_text()))
    (exp_dir,) = (tmp_path / "out").glob("*/exp")
    interrupted = json.loads((exp_dir / "interrupted.json").read_text())
    assert interrupted["kind"] == "interrupted"
    # What it measured before the Ctrl-C came back, as a local worker's files stay: the first cycle.
    assert interrupted["cycles_written"] == 1
    assert [p.name for p in exp_dir.glob("cycle-*.json")] == ["cycle-001.json"]
    assert not (exp_dir / "summary.json").exists()
    assert not list(work.glob("lem-worker-*"))  # the worker removed its own directory on the way out


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = ["unshare", "-m", "-u", "sh", "-c", "mount -t tmpfs tmpfs /mnt && hostname lem-probe"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@needs_pytorch
@pytest.mark.skipif(not _unshare_works(), reason="needs root and `unshare -m -u` (mount and UTS namespaces)")
def test_a_worker_that_cannot_see_out_still_delivers_its_results_there(tmp_path: Path) -> None:
    # The worker's own mount namespace with an empty tmpfs over --out: had it written there, nothing would
    # reach the campaign. The launcher fails if the worker could see what the campaign already wrote there.
    # Its own host name too (a UTS namespace), as a container's or a node's: environment.json is its view.
    out = tmp_path / "out"
    hide = 'mount -t tmpfs tmpfs "$0" && test -z "$(ls -A "$0")" && hostname lem-inside && exec "$@"'
    launcher = shlex.join(["unshare", "-m", "-u", "sh", "-c", hide, str(out), sys.executable])
    (tmp_path / "exp.toml").write_text(FAST)
    done = lem(tmp_path, "run", "exp.toml", "--out", "out", "--launch", f"pytorch={launcher}", "--json")
    assert done.returncode == 0, done.stderr
    (exp_dir,) = out.glob("*/exp")
    assert json.loads((exp_dir / "summary.json").read_text())["status"] == "ok"
    assert sorted(p.name for p in exp_dir.glob("cycle-*.json"))
    assert json.loads(done.stdout)["experiments"][0]["status"] == "ok"
    env = json.loads((exp_dir / "environment.json").read_text())
    assert os.uname().nodename != "lem-inside"
    assert env["hostname"] == env["launcher"]["worker"]["hostname"] == "lem-inside"
    assert env["launcher"]["command"][:3] == ["unshare", "-m", "-u"]
    assert env["packages"]["lem"]["lem-backend-pytorch"] and "available" in env["cuda"]


@needs_pytorch
def test_doctor_says_what_a_launcher_sees(tmp_path: Path) -> None:
    good = lem(tmp_path, "doctor", "--launch", f"pytorch={sys.executable}")
    assert good.returncode == 0, good.stderr
    lines = good.stdout.splitlines()
    assert lines[0].startswith(f"launcher pytorch: `{sys.executable}`: ran in")
    assert lines[1].startswith("lem-core: ") and "MISSING" not in lines[1]
    assert lines[2].startswith("backend pytorch: lem-backend-pytorch ")
    assert lines[3].startswith("gpus: ")
    missing = lem(tmp_path, "doctor", "--launch", f"nosuch={sys.executable}")
    assert missing.returncode == 1
    assert "backend nosuch: MISSING" in missing.stdout
    silent = lem(tmp_path, "doctor", "--launch", f"pytorch={SH} -c 'exit 3'")
    assert silent.returncode == 1 and "no answer (exit status 3" in silent.stdout


@pytest.mark.parametrize(
    ("args", "toml", "said"),
    [
        (("--launch", "pytorch"), "", "--launch pytorch: expected BACKEND=COMMAND"),
        (("--launch", "pytorch=/no/such/runtime python"), "", "'/no/such/runtime' is not an executable file"),
        (("--launch", "pytorch=no-such-runtime python"), "", "'no-such-runtime' is not a command found on PATH"),
        (("--launch", "pytorch='unclosed"), "", "not a command line (No closing quotation)"),
        ((), "[campaign.launch]\npytorch = 3\n", "campaign.launch.pytorch = 3: must be a command line"),
        ((), "[campaign]\nlauncher = 'x'\n", "campaign.launcher: unknown key"),
        (("--launch", f"pytorch={sys.executable}", "--in-process"), "", "--in-process exclude each other"),
        # A container runtime's run needs -i (the job goes in on stdin) and no -t; checked before it is looked up.
        (("--launch", "pytorch=docker run --rm --gpus all img python"), "", "`docker run` without -i"),
        (("--launch", "pytorch=podman container run -it img python"), "", "`podman run` with -t"),
        ((), "[campaign.launch]\npytorch = 'docker run --rm --tty -i img python'\n", "`docker run` with -t"),
    ],
)
def test_bad_launchers_are_one_line_and_status_2(tmp_path: Path, args: tuple[str, ...], toml: str, said: str) -> None:
    (tmp_path / "exp.toml").write_text(FAST + toml)
    done = lem(tmp_path, "run", "exp.toml", "--out", "out", *args)
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*/exp/summary.json"))
