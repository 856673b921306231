"""Progress on stderr: one live line per stage on a terminal, plain lines otherwise; silent when quiet.

Every update also calls ``heartbeat``: the worker uses it to tell the campaign
runner it is alive, so a hung experiment can be told from a slow one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Stage-by-stage progress of one experiment (``load``, ``idle``, ``warm-up``, ``cycle 1/3``...)."""

    def __init__(
        self,
        prefix: str = "",
        quiet: bool = False,
        stream: TextIO | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.heartbeat = heartbeat
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._stage = ""
        self._total: int | None = None
        self._done = 0
        self._t0 = time.monotonic()
        self._last_draw = 0.0

    def _emit(self, text: str, final: bool) -> None:
        if self.quiet:
            return
        line = f"{self.prefix}{text}"
        if self.live:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def stage(self, name: str, total: int | None = None) -> None:
        """Start a stage; ``total`` is the number of requests it will serve, when known."""
        self._stage, self._total, self._done = name, total, 0
        self._t0 = time.monotonic()
        self._beat()
        if self.live:
            self._draw()

    def advance(self, done: int) -> None:
        """``done`` requests of the current stage have finished."""
        self._done = done
        self._beat()
        now = time.monotonic()
        if self.live and now - self._last_draw > 0.1:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self._t0
        if self._total:
            width = 20
            filled = int(width * self._done / self._total)
            bar = "#" * filled + "." * (width - filled)
            self._emit(f"{self._stage:<12} [{bar}] {self._done}/{self._total}  {elapsed:6.1f} s", final=False)
        else:
            self._emit(f"{self._stage:<12} {elapsed:6.1f} s", final=False)

    def end(self, detail: str = "") -> None:
        """Finish the current stage with a one-line result (``"1234 tok/s, 2.1 J/tok"``)."""
        elapsed = time.monotonic() - self._t0
        count = f" {self._done}/{self._total} requests" if self._total else ""
        self._emit(f"{self._stage:<12} done in {elapsed:.1f} s{count}{'  ' + detail if detail else ''}", final=True)
        self._beat()

    def note(self, text: str) -> None:
        """A line of its own (a warning, a skipped experiment)."""
        self._emit(text, final=True)
