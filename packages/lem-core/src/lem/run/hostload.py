"""How busy the host was during a cycle: other processes' CPU use, the load average and steal time.

Read from Linux's ``/proc``: ``/proc/stat`` (CPU time of the whole machine,
including ``steal``, the time a hypervisor gave another guest), ``/proc/loadavg``
and ``/proc/<pid>/stat`` of this process and its descendants (a backend's
server process counts as the experiment's own work, not as another's). A
snapshot is taken at a cycle's start and end; the cycle's ``host`` block holds
the shares of all CPUs' time between them. Where ``/proc`` cannot be read (not
Linux) the block's figures are ``None`` with the reason.

Tests point it at a fake tree: ``$LEM_PROC_ROOT`` (or ``root``) replaces ``/proc``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

DEFAULT_ROOT = "/proc"
ROOT_ENV = "LEM_PROC_ROOT"


def proc_root(root: str | Path | None = None) -> Path:
    """The proc directory: ``root``, else ``$LEM_PROC_ROOT``, else ``/proc``."""
    return Path(root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@attrs.frozen
class Snapshot:
    """CPU time (clock ticks) of the machine and of this process tree at one instant."""

    total: int
    idle: int
    steal: int
    own: int
    cpus: int


def _machine(root: Path) -> tuple[int, int, int, int]:
    """``(total, idle, steal, cpus)`` from ``stat``: ticks over all CPUs, ``idle`` including iowait."""
    lines = (root / "stat").read_text().splitlines()
    fields = [int(v) for v in lines[0].split()[1:]]
    fields += [0] * (8 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    # guest time is already counted in user: the first 8 fields are the whole.
    total = user + nice + system + idle + iowait + irq + softirq + steal
    cpus = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    return total, idle + iowait, steal, max(cpus, 1)


def _process_ticks(root: Path, pid: int) -> int:
    """utime + stime of ``pid`` and every descendant (0 for processes that vanished meanwhile)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while the tree was read
        # The command name is in parentheses and may hold spaces: split after its closing one.
        rest = text[text.rfind(")") + 2 :].split()
        if len(rest) < 13:
            continue
        parents[int(entry.name)] = int(rest[1])
        ticks[int(entry.name)] = int(rest[11]) + int(rest[12])
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(ticks.get(p, 0) for p in tree)


def snapshot(root: Path, pid: int) -> Snapshot:
    """The machine's and the process tree's CPU ticks now (``OSError``/``ValueError`` where unreadable)."""
    total, idle, steal, cpus = _machine(root)
    return Snapshot(total, idle, steal, _process_ticks(root, pid), cpus)


def load_1m(root: Path) -> float:
    """The 1-minute load average."""
    return float((root / "loadavg").read_text().split()[0])


#: Keys of a cycle's ``host`` block that are figures (``None`` with ``reason`` when unknown).
HOST_FIGURES = ("cpus", "busy_share", "own_share", "others_share", "steal_share", "load_1m", "load_per_cpu")


def unknown(reason: str) -> dict[str, Any]:
    """A ``host`` block whose figures are unknown, with the reason."""
    return {**dict.fromkeys(HOST_FIGURES), "reason": reason}


def between(a: Snapshot, b: Snapshot, load: float | None) -> dict[str, Any]:
    """The ``host`` block of the time between snapshots ``a`` and ``b`` (shares of all CPUs' time)."""
    total = b.total - a.total
    if total <= 0:
        return {**unknown("no CPU time passed between the snapshots"), "cpus": b.cpus, "load_1m": load}
    busy = total - (b.idle - a.idle)
    own = min(max(b.own - a.own, 0), busy)
    steal = max(b.steal - a.steal, 0)
    return {
        "cpus": b.cpus,
        "busy_share": busy / total,
        "own_share": own / total,
        # Steal is counted in busy ticks, but it is no process's here: others = busy - own - steal.
        "others_share": max(busy - own - steal, 0) / total,
        "steal_share": steal / total,
        "load_1m": load,
        "load_per_cpu": None if load is None else load / b.cpus,
        "reason": None,
    }


class HostLoad:
    """Samples the host around a cycle: :meth:`start` at its start, :meth:`stop` gives its ``host`` block."""

    def __init__(self, root: str | Path | None = None, pid: int | None = None) -> None:
        self.root = proc_root(root)
        self.pid = os.getpid() if pid is None else pid
        self._start: Snapshot | None = None
        self._reason: str | None = None

    def start(self) -> None:
        """Take the cycle's first snapshot."""
        try:
            self._start, self._reason = snapshot(self.root, self.pid), None
        except (OSError, ValueError, IndexError) as exc:
            self._start, self._reason = None, f"cannot read {self.root} ({exc}): host load not sampled"

    def stop(self) -> dict[str, Any]:
        """The ``host`` block since :meth:`start`."""
        if self._start is None:
            return unknown(self._reason or "host load not sampled")
        try:
            end = snapshot(self.root, self.pid)
        except (OSError, ValueError, IndexError) as exc:
            return unknown(f"cannot read {self.root} ({exc}): host load not sampled")
        try:
            load: float | None = load_1m(self.root)
        except (OSError, ValueError, IndexError):
            load = None
        return between(self._start, end, load)
