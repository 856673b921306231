"""Batch formation for the four strategies (pure functions; the clock is a counter we advance)."""

from __future__ import annotations

from lem.config import BatchingConfig
from lem.types import Request
from lem_backend_pytorch.batching import batches, static_batches


def _requests(lengths: list[int], arrivals: list[int | None] | None = None) -> list[Request]:
    arrivals = arrivals or [None] * len(lengths)
    pairs = enumerate(zip(lengths, arrivals, strict=True))
    return [Request(id=i, prompt="", input_tokens=n, arrival_ns=a) for i, (n, a) in pairs]


def _ids(groups: list[list[Request]]) -> list[list[int]]:
    return [[r.id for r in g] for g in groups]


class Clock:
    """A clock that only moves when sleep() is called, so waiting is exact and instant."""

    def __init__(self) -> None:
        self.now = 0
        self.slept: list[int] = []

    def __call__(self) -> int:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += round(seconds * 1e9)
        self.slept.append(self.now)


def test_static_keeps_order_and_sorted_static_puts_longest_first() -> None:
    reqs = _requests([5, 50, 10, 40, 20])
    assert _ids(static_batches(reqs, 2, sort=False)) == [[0, 1], [2, 3], [4]]
    assert _ids(static_batches(reqs, 2, sort=True)) == [[1, 3], [4, 2], [0]]


def test_dynamic_respects_the_padded_token_budget() -> None:
    # rows x (longest input + max_new) <= 100 with max_new = 10.
    reqs = _requests([10, 10, 10, 40, 5])
    clock = Clock()
    got = list(
        batches(
            reqs, BatchingConfig(batch_size=8, strategy="dynamic", max_tokens_per_batch=100), 8, 10, clock, clock.sleep
        )
    )
    assert _ids(got) == [[0, 1, 2, 4], [3]]


def test_sorted_dynamic_groups_similar_lengths() -> None:
    reqs = _requests([5, 50, 6, 48])
    clock = Clock()
    got = list(batches(reqs, BatchingConfig(batch_size=2, strategy="sorted_dynamic"), 2, 10, clock, clock.sleep))
    assert _ids(got) == [[1, 3], [2, 0]]


def test_a_request_over_the_budget_runs_alone() -> None:
    clock = Clock()
    got = list(
        batches(
            _requests([500, 5]),
            BatchingConfig(batch_size=4, strategy="dynamic", max_tokens_per_batch=64),
            4,
            10,
            clock,
            clock.sleep,
        )
    )
    assert _ids(got) == [[0], [1]]


def test_dynamic_forms_batches_from_arrived_requests_only() -> None:
    clock = Clock()
    reqs = _requests([5, 5, 5], [0, 0, 1_000])
    got = []
    for batch in batches(reqs, BatchingConfig(batch_size=4, strategy="dynamic"), 4, 10, clock, clock.sleep):
        got.append(([r.id for r in batch], clock.now))
    assert got == [([0, 1], 0), ([2], 1_000)]


def test_static_batch_waits_for_its_last_arrival() -> None:
    clock = Clock()
    reqs = _requests([5, 5, 5], [0, 2_000, 3_000])
    got = [
        ([r.id for r in b], clock.now) for b in batches(reqs, BatchingConfig(batch_size=2), 2, 10, clock, clock.sleep)
    ]
    assert got == [([0, 1], 2_000), ([2], 3_000)]
