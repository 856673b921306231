"""Progress on stderr: a live rich line per stage on a terminal, plain lines otherwise; silent when quiet.

Every update also calls ``heartbeat``: the worker uses it to tell the campaign
runner it is alive, so a hung experiment can be told from a slow one. Only
the stage's own calls (``stage``, ``advance``, ``end``) beat: the refresh thread
that keeps the terminal line moving never does, so a stuck experiment still
looks stuck to the runner.

On a terminal each stage is a rich progress line: a spinner with the elapsed
time (so a long model load visibly runs), and for a stage whose number of
requests is known a bar, the count and an ETA. rich is imported only then. It
redraws from a thread: one redraw costs ~1.4 ms of CPU here, so stages that
measure (warm-up, cycles) redraw twice a second, the others four times. When
the stream is not a terminal (a log file, CI) nothing is drawn until a stage
ends, with one plain line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO


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
        self._bar: Any = None  # the rich Progress showing the current stage, on a terminal
        self._task: Any = None

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def _start_bar(self) -> None:
        # Imported on a terminal only: rich costs ~50 ms to import, and a worker writing to a log never draws.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        columns: list[ProgressColumn | str] = [SpinnerColumn(), TextColumn(f"{self.prefix}{self._stage:<12}")]
        if self._total:
            columns += [BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn()]
            columns += ["ETA", TimeRemainingColumn()]
        else:
            columns += [TimeElapsedColumn()]
        console = Console(file=self.stream, force_terminal=True, highlight=False)
        self._bar = RichProgress(
            *columns,
            console=console,
            transient=True,  # the live line gives way to the stage's one-line result
            refresh_per_second=2 if self._total else 4,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._bar.add_task(self._stage, total=self._total)
        self._bar.start()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        self.stream.write(f"{self.prefix}{text}\n")
        self.stream.flush()

    def stage(self, name: str, total: int | None = None) -> None:
        """Start a stage; ``total`` is the number of requests it will serve, when known."""
        self._stop_bar()
        self._stage, self._total, self._done = name, total, 0
        self._t0 = time.monotonic()
        self._beat()
        if self.live and not self.quiet:
            self._start_bar()

    def advance(self, done: int) -> None:
        """``done`` requests of the current stage have finished."""
        self._done = done
        self._beat()
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def end(self, detail: str = "") -> None:
        """Finish the current stage with a one-line result (``"1234 tok/s, 2.1 J/out tok"``)."""
        self._stop_bar()
        elapsed = time.monotonic() - self._t0
        count = f" {self._done}/{self._total} requests" if self._total else ""
        self._line(f"{self._stage:<12} done in {elapsed:.1f} s{count}{'  ' + detail if detail else ''}")
        self._beat()

    @contextlib.contextmanager
    def substage(self, name: str, total: int | None = None) -> Iterator[None]:
        """A stage within the current one (a cycle's prefill pass): its own line, then the outer stage again.

        The outer stage's clock runs on through it, so the outer line's time includes it.
        """
        outer = (self._stage, self._total, self._done, self._t0)
        self.stage(name, total)
        try:
            yield
        finally:
            self.end()
            self._stage, self._total, self._done, self._t0 = outer

    def note(self, text: str) -> None:
        """A line of its own (a warning, a skipped experiment)."""
        if self._bar is not None and not self.quiet:
            self._bar.console.print(f"{self.prefix}{text}", markup=False)  # above the live line
            return
        self._line(text)

    def close(self) -> None:
        """Stop the live line, if one is showing (the stage ended by an exception)."""
        self._stop_bar()
