"""Errors a user can cause. The CLI prints them as one line and exits with 2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lem.types import Problem


class LemError(Exception):
    """Base of every error caused by input: its message says what, where and what to do."""

    exit_code = 2


class ConfigError(LemError):
    """A configuration has one or more errors; each is a :class:`~lem.types.Problem`."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__("\n".join(p.format(source) for p in self.problems))


class PluginError(LemError):
    """An installed plugin is unusable (it implements a hook that does not exist)."""


class MeterUnavailable(LemError):
    """The energy meter that was asked for cannot work on this machine (the reason is the message)."""


class BackendError(LemError):
    """A backend refused the experiment (an option it does not accept, a missing package)."""


class PromptError(LemError):
    """Prompts could not be produced (missing file, missing field, empty dataset...)."""


class ResultsError(LemError):
    """A results directory or file is missing or not what was expected."""


class DiskFull(ResultsError):
    """The disk holding the results is full (the message names the directory)."""


class RunLocked(ResultsError):
    """Another live ``lem run`` process holds the run directory."""


class Interrupted(LemError):
    """The run was interrupted (Ctrl-C); what was finished is kept and can be resumed."""

    exit_code = 130
