"""Result files and what reads them.

``files`` (atomic writes, strict reads, aggregation), ``timelines``, ``rundata`` (lenient reads for
screens), ``rundir`` (run directories and their lock), ``export``, ``compare``, ``report``, ``plots``.

``lem.results.load(path)`` returns a pandas DataFrame of a results directory (``lem-core[export]``).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load":
        # deferred: every reader of result files imports this package; only `load` needs export's code
        from lem.results.export import load

        return load
    raise AttributeError(f"module 'lem.results' has no attribute {name!r}")
