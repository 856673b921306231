"""An experiment's status from its requests: ``ok``, ``degraded`` or ``failed``.

A run whose requests failed must not read as a success: ``failed`` when no
request succeeded, ``degraded`` when the failed share is above
``measurement.max_failed_share`` (default 0), each with a reason that gives the
share and the first causes. The summary carries both; ``lem run`` exits 1 on
either (README: exit status).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

#: How many distinct causes the reason line names (the summary's ``failure_reasons`` has them all).
REASONS_SHOWN = 2


@attrs.frozen
class Status:
    """``status`` (``ok``, ``degraded``, ``failed``) and, unless ok, why (share and first causes)."""

    status: str
    reason: str | None = None


def _causes(reasons: Mapping[str, int]) -> str:
    shown = [f"{why} ({n})" for why, n in list(reasons.items())[:REASONS_SHOWN]]
    more = len(reasons) - REASONS_SHOWN
    return "; ".join(shown) + (f"; and {more} other cause(s)" if more > 0 else "")


def request_status(requests: int, reasons: Mapping[str, int], max_failed_share: float) -> Status:
    """The status of an experiment that served ``requests`` requests, ``reasons`` counting its failed ones.

    :param reasons: failure reason -> number of requests, most frequent first (``failure_reasons``).
    """
    failed = sum(reasons.values())
    if failed == 0:
        return Status("ok")
    share = failed / requests if requests else 1.0
    if failed >= requests:
        return Status("failed", f"all {requests} requests failed: {_causes(reasons)}")
    if share > max_failed_share:
        return Status(
            "degraded",
            f"{failed} of {requests} requests failed ({share:.1%}, above measurement.max_failed_share ="
            f" {max_failed_share:g}): {_causes(reasons)}",
        )
    return Status("ok")


def cycles_status(status: Status, cycles: int, included: int, left_out: str | None) -> Status:
    """``status`` (of the requests of the cycles kept), unless cycles ran and gating left every one out.

    Then no figure stands for the experiment: ``degraded``, with gating's line (``left_out``) as the reason.
    """
    if cycles and not included:
        return Status("degraded", f"every cycle was spoilt: no figure ({left_out})")
    return status
