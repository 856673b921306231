"""Launchers: the command a backend's worker runs under (a container runtime, ``srun``, ``env -i``, a Python).

``lem run --launch vllm="apptainer exec --nv vllm.sif python"`` (or the
experiment file's ``[campaign.launch]`` table; ``--launch`` wins) runs each
vLLM experiment's worker as that command followed by ``-m
lem.campaign.worker``. ``--python vllm=/opt/vllm/bin/python`` is the simplest
launcher: an interpreter alone. The worker's protocol needs only its standard
streams (:mod:`lem.campaign.worker`), so a launched worker shares no path with
the campaign: it measures into a directory of its own and sends the files
back; the campaign writes them under ``--out``.

:func:`probe` runs a launcher once with a small script that needs nothing but
the standard library, and says whether lem-core, the backend's distribution
and GPUs are visible where it lands (``lem doctor --launch``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from lem.errors import LemError

#: Seconds a launched worker has to start and say hello (``[campaign] start_timeout_s``, ``--start-timeout``):
#: a container runtime starting a container whose image is already pulled, ``srun`` on a free node.
START_TIMEOUT_S = 600.0


@attrs.frozen
class Launcher:
    """A backend's launcher: the command its worker runs under, and where it was given."""

    backend: str
    #: The command, split as a POSIX shell splits it; lem appends ``-m lem.campaign.worker``.
    command: tuple[str, ...]
    #: ``--launch``, ``--python`` or ``[campaign.launch]``.
    given_by: str

    @property
    def shown(self) -> str:
        """The command as one would type it."""
        return shlex.join(self.command)

    def record(self) -> dict[str, Any]:
        """What ``environment.json`` says of it."""
        return {"backend": self.backend, "command": list(self.command), "from": self.given_by}

    def flag(self) -> str:
        """The ``--launch`` option that gives it again (for the ``--resume`` line)."""
        return f" --launch {shlex.quote(f'{self.backend}={self.shown}')}"


def parse(value: str, given_by: str = "--launch") -> Launcher:
    """``BACKEND=COMMAND`` as a :class:`Launcher`; a :class:`LemError` naming the option if it is not one."""
    backend, sep, text = value.partition("=")
    backend = backend.strip()
    example = 'e.g. --launch vllm="apptainer exec --nv vllm.sif python"'
    if not sep or not backend or not text.strip():
        raise LemError(f"{given_by} {value}: expected BACKEND=COMMAND, {example}")
    return command(backend, text, given_by)


def command(backend: str, text: str, given_by: str) -> Launcher:
    """The launcher ``text`` (a command line) gives ``backend``; a :class:`LemError` if it cannot run here."""
    where = f"{given_by} {backend}" if given_by == "[campaign.launch]" else f"{given_by} {backend}={text}"
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise LemError(f"{where}: not a command line ({exc}); quote it as a POSIX shell would") from None
    if not words:
        raise LemError(f"{where}: the command is empty; give the launcher and the Python it runs")
    problem = _container_streams(words)
    if problem is not None:
        raise LemError(f"{where}: {problem}")
    if shutil.which(words[0]) is None:
        if os.sep in words[0]:
            raise LemError(f"{where}: '{words[0]}' is not an executable file; give the launcher's path or name")
        raise LemError(f"{where}: '{words[0]}' is not a command found on PATH; give its full path")
    return Launcher(backend, words, given_by)


#: Container runtimes whose ``run`` takes ``-i`` (keep stdin open) and ``-t`` (allocate a terminal).
CONTAINER_RUNTIMES = frozenset({"docker", "podman", "nerdctl"})


def _container_streams(words: tuple[str, ...]) -> str | None:
    """What is wrong with a container runtime's ``run`` for the worker's protocol, or ``None``.

    The worker reads its job on stdin and writes frames on stdout (:mod:`lem.campaign.worker`): without
    ``-i`` the container's stdin is closed at once, and with ``-t`` its output goes through a terminal
    that rewrites line ends. Every word after ``run`` that begins with ``-`` is read (the image's command's
    too: which words are the runtime's depends on each option's arity); a short word counts only when it
    is made of the runtime's switches ``d``, ``i``, ``t``, ``P``, ``q`` (``-it``), so ``-eX=1`` does not.
    """
    if os.path.basename(words[0]) not in CONTAINER_RUNTIMES:
        return None
    rest = list(words[1:])
    if rest[:2] == ["container", "run"]:
        rest = rest[1:]
    if not rest or rest[0] != "run":
        return None
    flags = [w for w in rest[1:] if w.startswith("-")]
    short = [w[1:] for w in flags if len(w) > 1 and not w.startswith("--") and set(w[1:]) <= set("ditPq")]
    interactive = any("i" in w for w in short) or any(w in ("--interactive", "--interactive=true") for w in flags)
    tty = any("t" in w for w in short) or any(w in ("--tty", "--tty=true") for w in flags)
    runtime = f"`{os.path.basename(words[0])} run`"
    if tty:
        return f"{runtime} with -t: the worker's output would pass through a terminal; leave -t out"
    if not interactive:
        return f"{runtime} without -i: the worker reads its job on standard input; add -i (e.g. run --rm -i)"
    return None


def merged(from_file: Mapping[str, str], launch: Iterable[str], pythons: Mapping[str, str]) -> dict[str, Launcher]:
    """Each backend's launcher: ``--launch`` over the file's ``[campaign.launch]``; ``--python`` is one too."""
    out = {b: command(b, text, "[campaign.launch]") for b, text in from_file.items()}
    given = [parse(v) for v in launch]
    for launcher in given:
        if launcher.backend in pythons:
            raise LemError(
                f"--launch {launcher.backend}=... and --python {launcher.backend}=... both say how its worker"
                " starts; give one (--python B=PY is --launch B=PY)"
            )
    out.update({b: Launcher(b, (py,), "--python") for b, py in pythons.items()})
    out.update({launcher.backend: launcher for launcher in given})
    return out


#: The line that carries the probe's answer, among whatever the launcher prints.
_PROBE_MARK = "\x1elem-probe "

#: Run by the launched Python: the standard library only, so it answers even where lem is not installed.
PROBE = r"""
import json, platform, shutil, subprocess, sys
from importlib import metadata
out = {"python": sys.executable, "python_version": platform.python_version()}
try:
    out["lem"] = metadata.version("lem-core")
except metadata.PackageNotFoundError:
    out["lem"] = None
found = [ep for ep in metadata.entry_points(group="lem") if ep.name == sys.argv[1]]
dist = found[0].dist if found else None
out["backend"] = [dist.metadata["Name"], dist.version] if dist is not None else None
smi = shutil.which("nvidia-smi")
if smi is None:
    out["gpus"], out["gpus_reason"] = [], "nvidia-smi not found"
else:
    q = [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(q, capture_output=True, text=True, timeout=30)
        rows = [r.split(", ") for r in done.stdout.strip().splitlines() if r.strip()]
        out["gpus"] = [{"name": r[0], "driver_version": r[-1]} for r in rows]
        out["gpus_reason"] = None if rows else (done.stderr.strip() or "nvidia-smi lists none")
    except (OSError, subprocess.SubprocessError) as exc:
        out["gpus"], out["gpus_reason"] = [], f"nvidia-smi failed: {exc}"
print("\x1elem-probe " + json.dumps(out), flush=True)
"""


@attrs.frozen
class Probe:
    """What a launcher's Python saw: lem-core, the backend's distribution, GPUs; or why it gave no answer."""

    launcher: Launcher
    seconds: float
    exit_code: int | None
    seen: Mapping[str, Any] | None
    #: The launcher's last lines when it gave no answer.
    output: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """lem-core and the backend's distribution are both there."""
        return self.seen is not None and bool(self.seen.get("lem")) and bool(self.seen.get("backend"))

    def lines(self) -> list[str]:
        """One line each: the launcher, lem-core, the backend, the GPUs."""
        head = f"launcher {self.launcher.backend}: `{self.launcher.shown}`"
        if self.seen is None:
            status = "timed out" if self.exit_code is None else f"exit status {self.exit_code}"
            last = f": {self.output[-1]}" if self.output else ""
            return [f"{head}: no answer ({status}, {self.seconds:.1f} s){last}"]
        s = self.seen
        gpus = s.get("gpus") or []
        names = ", ".join(sorted({g["name"] for g in gpus}))
        driver = gpus[0]["driver_version"] if gpus else None
        return [
            f"{head}: ran in {self.seconds:.1f} s (Python {s.get('python_version')} at {s.get('python')})",
            f"lem-core: {s['lem']}" if s.get("lem") else "lem-core: MISSING (pip install lem-core there)",
            f"backend {self.launcher.backend}: {s['backend'][0]} {s['backend'][1]}"
            if s.get("backend")
            else f"backend {self.launcher.backend}: MISSING (no installed distribution provides it there)",
            f"gpus: {len(gpus)} visible ({names}; driver {driver})"
            if gpus
            else f"gpus: none visible ({s.get('gpus_reason')})",
        ]


def probe(launcher: Launcher, timeout_s: float = START_TIMEOUT_S) -> Probe:
    """Run ``launcher`` once with :data:`PROBE`; what it saw, within ``timeout_s`` seconds."""
    t0 = time.monotonic()
    argv = [*launcher.command, "-c", PROBE, launcher.backend]
    try:
        # Its own session: a launcher that hangs is stopped with everything it started (they hold the pipes).
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as exc:
        return Probe(launcher, time.monotonic() - t0, None, None, (str(exc),))
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        said = (out + err).decode("utf-8", "replace").splitlines()
        return Probe(launcher, time.monotonic() - t0, None, None, tuple(line for line in said if line.strip())[-5:])
    seconds = time.monotonic() - t0
    text = out.decode("utf-8", "replace")
    for line in text.split("\n"):  # not splitlines(): it splits at the marker's \x1e too
        if line.startswith(_PROBE_MARK):
            return Probe(launcher, seconds, proc.returncode, json.loads(line[len(_PROBE_MARK) :]))
    said = (text + err.decode("utf-8", "replace")).splitlines()
    return Probe(launcher, seconds, proc.returncode, None, tuple(line for line in said if line.strip())[-5:])
