"""A run directory's safety: which directory ``--resume`` may name, and the lock a live run holds.

The lock is an OS file lock (``flock``) on ``<run>/.lock``, held by the
``lem run`` process for as long as it writes the run. The kernel releases it
when that process dies, however it dies, so a lock file left behind by a
killed run is not a lock: the next run takes it over and says so. The file
holds the holder's process id only to make the messages useful.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import attrs

from lem.errors import ResultsError, RunLocked
from lem.results.files import read_json

LOCK_NAME = ".lock"


def check_resume_id(resume_id: str, root: Path) -> Path:
    """The run directory ``root/resume_id``, if it is one lem wrote; else a :class:`ResultsError`.

    A run id is one directory name: no separator, no ``..``, not absolute, so
    ``--resume`` can never reach (and overwrite files in) a directory outside
    ``--out``. The directory must hold the ``run.json`` that lem writes first.
    """
    seps = {"/", os.sep, os.altsep or "/"}
    if (
        not resume_id
        or resume_id in (".", "..")
        or any(s in resume_id for s in seps)
        or "\0" in resume_id
        or Path(resume_id).is_absolute()
    ):
        raise ResultsError(
            f"--resume {resume_id!r}: a run id is one directory name under {root} (e.g. 20261202-031500-ab12),"
            f" not a path; see `lem results list {root}`"
        )
    run_dir = root / resume_id
    if not run_dir.is_dir():
        raise ResultsError(f"--resume {resume_id}: no run directory {run_dir} (see `lem results list {root}`)")
    if run_dir.is_symlink():
        raise ResultsError(f"--resume {resume_id}: {run_dir} is a symbolic link, not a run directory lem wrote")
    try:
        doc = read_json(run_dir / "run.json")
    except ResultsError as exc:
        raise ResultsError(f"--resume {resume_id}: {run_dir} is not a run lem wrote ({exc})") from None
    if doc.get("kind") != "run" or doc.get("run_id") != resume_id:
        raise ResultsError(
            f"--resume {resume_id}: {run_dir / 'run.json'} does not describe run {resume_id!r}"
            f" (kind {doc.get('kind')!r}, run_id {doc.get('run_id')!r}); start a new run instead"
        )
    return run_dir


@attrs.define
class RunLock:
    """The lock on one run directory, held until :meth:`release` (or the process's end)."""

    path: Path
    fd: int
    took_over: int | None = None

    def release(self) -> None:
        """Remove the lock file and release the lock (a later run then finds no stale lock)."""
        if self.fd < 0:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished directory: the kernel still releases the lock below
            pass
        os.close(self.fd)
        self.fd = -1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def lock_run(run_dir: Path) -> RunLock:
    """Take the run directory's lock, or raise :class:`RunLocked` if a live process holds it.

    A lock file whose process is gone (killed, crashed) is taken over with a
    message on stderr.
    """
    path = run_dir / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ResultsError(f"{run_dir}: cannot create its lock file ({exc.strerror}); check --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunLocked(
                f"run {run_dir.name} is in use: {who} is running it now ({path} is locked); "
                "wait for it to finish or stop it, then --resume"
            ) from None
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else will see; open the path again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        previous = _holder(fd)
        took_over = None
        if previous is not None and previous != os.getpid():
            took_over = previous
            state = "is no longer running" if not _alive(previous) else "no longer holds it"
            print(
                f"lem: {run_dir.name}: taking over the lock left by process {previous}, which {state}",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return RunLock(path, fd, took_over)
    raise RunLocked(f"run {run_dir.name}: its lock file keeps being replaced by another process; try again")
