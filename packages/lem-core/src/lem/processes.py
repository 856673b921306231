"""Process lifetimes shared by lem and its backends: ports (free, listening), parent-death signals, child subreapers.

Backends that start processes of their own (the server backend's managed
server, the pytorch backend's tensor-parallel ranks) and the campaign runner's
worker supervision (:mod:`lem.campaign.reaper`) use these, so each Linux mechanism is
written once. Off Linux the ``prctl`` calls do nothing and return ``False``.
"""

from __future__ import annotations

import ctypes  # imported here, not in the functions: set_parent_death_signal runs between fork and exec
import os
import socket
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PR_SET_CHILD_SUBREAPER = 36


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (a bounded probe: at most ``timeout_s``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:  # refused, unreachable, timed out, a name that does not resolve
        return False


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send this process ``sig`` when its parent exits; whether it could.

    Linux sends it when the *thread* that forked this process exits. Safe to
    call between fork and exec (``preexec_fn``): it imports nothing.
    """
    return _prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper(on: bool) -> bool:
    """Make this process (or stop it being) the reaper of its orphaned descendants; whether it could."""
    return _prctl(PR_SET_CHILD_SUBREAPER, int(on))


def children() -> set[int]:
    """The pids whose parent is this process (from ``/proc``; empty where there is none)."""
    me, found = os.getpid(), set[int]()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # it ended meanwhile
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and int(fields[1]) == me:
            found.add(int(name))
    return found
