"""lem.serving: the traffic schedule for engines that take requests one at a time.

The engine here is a scripted async generator on the driver's real event loop (the driver knows engines
only through ``submit``); real engines drive it in their backends' tests (vLLM on the CPU).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from lem.config import TrafficConfig
from lem.serving import Delta, EngineHandle, EventLoop, RequestFailed, frozen_heap, stream
from lem.types import Request, TokenEvent

MS = 1_000_000


@pytest.fixture()
def loop() -> Iterator[EventLoop]:
    ev = EventLoop("lem-test-serving")
    yield ev
    ev.close()


def _requests(n: int, arrivals: list[int] | None = None) -> list[Request]:
    return [Request(i, f"p{i}", 3, arrival_ns=None if arrivals is None else arrivals[i]) for i in range(n)]


class Engine:
    """Streams ``tokens`` deltas per request, ``gap_s`` apart, and records what happened."""

    def __init__(self, tokens: int = 3, gap_s: float = 0.005) -> None:
        self.tokens = tokens
        self.gap_s = gap_s
        self.started: dict[int, int] = {}
        self.produced: dict[int, list[int]] = {}
        self.cancelled: set[int] = set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def submit(self, req: Request) -> AsyncIterator[Delta]:
        self.started[req.id] = time.monotonic_ns()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for i in range(self.tokens):
                await asyncio.sleep(self.gap_s)
                self.produced.setdefault(req.id, []).append(time.monotonic_ns())
                yield Delta((100 + i,), finished=i == self.tokens - 1)
        except asyncio.CancelledError:
            self.cancelled.add(req.id)
            raise
        finally:
            self.in_flight -= 1


def _per_request(events: list[TokenEvent]) -> dict[int, list[TokenEvent]]:
    out: dict[int, list[TokenEvent]] = {}
    for e in events:
        out.setdefault(e.request_id, []).append(e)
    return out


def test_closed_loop_keeps_concurrency_in_flight_with_submission_events(loop: EventLoop) -> None:
    engine = Engine()
    events = list(stream(loop, _requests(7), TrafficConfig("concurrency", concurrency=3), engine.submit))
    assert engine.most_in_flight == 3
    per = _per_request(events)
    assert sorted(per) == list(range(7))
    for rid, mine in per.items():
        assert mine[0].n_tokens == 0 and not mine[0].finished  # submission: the request arrived then
        assert mine[0].t_ns <= engine.started[rid]
        assert [e.token_ids for e in mine[1:]] == [(100,), (101,), (102,)]
        assert [e.finished for e in mine] == [False, False, False, True]
        assert all(e.error is None for e in mine)
        assert [e.t_ns for e in mine] == sorted(e.t_ns for e in mine)


def test_open_loop_never_starts_a_request_before_it_arrives(loop: EventLoop) -> None:
    engine = Engine(tokens=2, gap_s=0.001)
    t0 = time.monotonic_ns() + 20 * MS
    arrivals = [t0 + k * 15 * MS for k in (3, 0, 2, 1)]  # out of order on purpose
    events = list(stream(loop, _requests(4, arrivals), TrafficConfig("poisson", rate=60.0), engine.submit))
    for req_id, arrival in enumerate(arrivals):
        assert engine.started[req_id] >= arrival
        assert engine.started[req_id] - arrival < 500 * MS  # and not long after (a loaded 2-core machine)
    assert sorted(engine.started, key=engine.started.__getitem__) == [1, 3, 2, 0]
    per = _per_request(events)
    assert all(e.n_tokens > 0 for mine in per.values() for e in mine)  # arrival known: no submission event
    assert all(e.t_ns >= arrivals[rid] for rid, mine in per.items() for e in mine)


def test_open_loop_starts_requests_within_a_fraction_of_a_millisecond(loop: EventLoop) -> None:
    # Timers alone wake to the millisecond (0.5 ms late on average); the driver yields its way to the arrival.
    engine = Engine(tokens=1, gap_s=0.0)
    t0 = time.monotonic_ns() + 20 * MS
    arrivals = [t0 + k * 7 * MS + k * 137_000 for k in range(30)]
    list(stream(loop, _requests(30, arrivals), TrafficConfig("poisson", rate=100.0), engine.submit))
    late = sorted(engine.started[i] - arrivals[i] for i in range(30))
    assert late[0] >= 0
    assert late[15] < 0.2 * MS, late  # the median; single ones may be late on a loaded machine


def test_a_delta_keeps_the_stamp_its_engine_gave_it(loop: EventLoop) -> None:
    # A backend that stamps bytes where they arrive (before parsing) hands that time over, not the yield's.
    async def submit(req: Request) -> AsyncIterator[Delta]:
        arrived = time.monotonic_ns()
        await asyncio.sleep(0.01)
        yield Delta((5,), t_ns=arrived)
        yield Delta(finished=True)

    events = list(stream(loop, _requests(1), TrafficConfig("concurrency", concurrency=1), submit))
    token, last = events[1], events[2]
    assert token.token_ids == (5,) and last.finished
    assert last.t_ns - token.t_ns >= 10 * MS  # the token kept its earlier stamp; the unstamped delta got the yield's


def test_requests_without_arrival_get_a_submission_event_in_open_loop(loop: EventLoop) -> None:
    engine = Engine(tokens=1)
    events = list(stream(loop, _requests(2), TrafficConfig("offline"), engine.submit))
    assert [(e.request_id, e.n_tokens, e.finished) for e in events if e.n_tokens == 0] == [(0, 0, False), (1, 0, False)]


def test_each_delta_reaches_the_consumer_when_it_is_produced(loop: EventLoop) -> None:
    engine = Engine(tokens=5, gap_s=0.05)
    received = [(time.monotonic_ns(), e) for e in stream(loop, _requests(1), TrafficConfig(), engine.submit)]
    tokens = [(seen, e) for seen, e in received if e.n_tokens]
    produced = engine.produced[0]
    assert len(tokens) == 5
    for k, (seen, event) in enumerate(tokens):
        assert produced[k] <= event.t_ns <= seen  # stamped when the delta arrived, handed over after
        if k + 1 < len(produced):
            assert seen < produced[k + 1]  # not held back until the next delta (no batching)


def test_counts_without_ids_and_empty_deltas(loop: EventLoop) -> None:
    async def submit(req: Request) -> AsyncIterator[Delta]:
        yield Delta(n_tokens=4)  # a server that reports counts only
        yield Delta()  # nothing new: no event (a zero-token event would mean "submitted")
        yield Delta((7, 8))
        yield Delta(finished=True)  # the end, with no tokens

    events = list(stream(loop, _requests(1), TrafficConfig(), submit))
    assert [(e.n_tokens, e.token_ids, e.finished) for e in events] == [
        (0, (), False),
        (4, (), False),
        (2, (7, 8), False),
        (0, (), True),
    ]


def test_an_iterator_ending_without_finished_still_finishes_once(loop: EventLoop) -> None:
    async def submit(req: Request) -> AsyncIterator[Delta]:
        yield Delta((1,))
        if req.id == 1:
            yield Delta((2,), finished=True)
            yield Delta((3,))  # after the end: not counted

    per = _per_request(list(stream(loop, _requests(2), TrafficConfig(), submit)))
    assert [(e.n_tokens, e.finished) for e in per[0]] == [(0, False), (1, False), (0, True)]
    assert [(e.n_tokens, e.finished) for e in per[1]] == [(0, False), (1, False), (1, True)]
    assert sum(e.n_tokens for e in per[1]) == 2


def test_request_failed_fails_that_request_only(loop: EventLoop) -> None:
    engine = Engine(tokens=3)

    async def submit(req: Request) -> AsyncIterator[Delta]:
        if req.id == 1:
            yield Delta((9,))
            raise RequestFailed("HTTP 503: overloaded")
        async for d in engine.submit(req):
            yield d

    per = _per_request(list(stream(loop, _requests(3), TrafficConfig("concurrency", concurrency=3), submit)))
    assert [(e.n_tokens, e.finished, e.error) for e in per[1]] == [
        (0, False, None),
        (1, False, None),  # tokens made before the failure still count
        (0, True, "HTTP 503: overloaded"),
    ]
    for ok in (0, 2):
        assert per[ok][-1].finished and per[ok][-1].error is None and sum(e.n_tokens for e in per[ok]) == 3


def test_a_request_past_its_timeout_is_cancelled_and_fails(loop: EventLoop) -> None:
    engine = Engine(tokens=3, gap_s=0.01)

    async def submit(req: Request) -> AsyncIterator[Delta]:
        engine.gap_s = 10.0 if req.id == 0 else 0.01  # request 0 hangs after its submission
        async for d in engine.submit(req):
            yield d

    t = time.monotonic()
    events = list(
        stream(loop, _requests(2), TrafficConfig("concurrency", concurrency=1), submit, request_timeout_s=0.2)
    )
    assert time.monotonic() - t < 5
    per = _per_request(events)
    assert per[0][-1] == TokenEvent(0, per[0][-1].t_ns, 0, True, error="timed out after 0.2 s")
    assert per[0][-1].t_ns - per[0][0].t_ns >= 200 * MS
    assert engine.cancelled == {0}  # the engine saw the cancellation (that is how engines abort)
    assert per[1][-1].finished and per[1][-1].error is None  # the next request went on


def test_an_engine_failure_is_raised_at_once_and_cancels_the_rest(loop: EventLoop) -> None:
    engine = Engine(tokens=100, gap_s=0.01)

    async def submit(req: Request) -> AsyncIterator[Delta]:
        if req.id == 1:
            await asyncio.sleep(0.05)
            raise ConnectionResetError("engine died")
        async for d in engine.submit(req):
            yield d

    now = time.monotonic_ns()
    arrivals = [now, now, now + 60_000 * MS]  # the third would arrive in a minute
    t = time.monotonic()
    with pytest.raises(ConnectionResetError, match="engine died"):
        list(stream(loop, _requests(3, arrivals), TrafficConfig("constant", rate=1.0), submit))
    assert time.monotonic() - t < 5
    assert engine.cancelled == {0} and engine.in_flight == 0
    assert 2 not in engine.started


def test_stopping_early_cancels_what_is_in_flight_before_returning(loop: EventLoop) -> None:
    engine = Engine(tokens=1000, gap_s=0.005)
    events = stream(loop, _requests(3), TrafficConfig("concurrency", concurrency=3), engine.submit)
    for e in events:
        if e.n_tokens:
            break
    events.close()  # type: ignore[attr-defined]
    assert engine.cancelled == {0, 1, 2} and engine.in_flight == 0


def test_serving_starts_on_first_next_and_no_requests_is_no_events(loop: EventLoop) -> None:
    engine = Engine()
    events = stream(loop, _requests(1), TrafficConfig(), engine.submit)
    time.sleep(0.05)
    assert engine.started == {}
    assert len(list(events)) == 4
    assert list(stream(loop, [], TrafficConfig(), engine.submit)) == []
    with pytest.raises(ValueError, match="request_timeout_s"):
        stream(loop, [], TrafficConfig(), engine.submit, request_timeout_s=0)


class _Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_the_heap_is_kept_from_the_collector_while_serving_and_handed_back_after(loop: EventLoop) -> None:
    # A full collection of a big heap stopped the loop for hundreds of ms mid-cycle (issue 31).
    assert gc.get_freeze_count() == 0
    garbage = weakref.ref(_Node())  # unreachable, in a cycle, made before serving
    frozen_while_serving: list[int] = []
    collected_while_serving: list[bool] = []
    engine = Engine(tokens=2, gap_s=0.001)

    async def submit(req: Request) -> AsyncIterator[Delta]:
        frozen_while_serving.append(gc.get_freeze_count())
        async for delta in engine.submit(req):
            yield delta

    for e in stream(loop, _requests(2), TrafficConfig("concurrency", concurrency=2), submit):
        if e.finished and not collected_while_serving:
            gc.collect()
            collected_while_serving.append(garbage() is None)
    assert min(frozen_while_serving) > 0 and collected_while_serving == [False]
    assert gc.get_freeze_count() == 0  # handed back: nothing stays out of the collector's reach
    gc.collect()
    assert garbage() is None


def test_a_stream_stopped_early_hands_the_heap_back_too(loop: EventLoop) -> None:
    events = stream(loop, _requests(2), TrafficConfig("concurrency", concurrency=2), Engine(tokens=100).submit)
    next(events)
    assert gc.get_freeze_count() > 0
    events.close()  # type: ignore[attr-defined]
    assert gc.get_freeze_count() == 0


def test_frozen_heap_nests_and_leaves_a_heap_frozen_by_others_frozen() -> None:
    with frozen_heap():
        inner = gc.get_freeze_count()
        with frozen_heap():
            assert gc.get_freeze_count() >= inner > 0
        assert gc.get_freeze_count() > 0  # the outer block still holds it
    assert gc.get_freeze_count() == 0
    gc.freeze()  # someone else's (vLLM freezes its heap after start-up)
    try:
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_event_loop_runs_calls_and_closes_once() -> None:
    ev = EventLoop("lem-test-loop")
    assert ev.thread.name == "lem-test-loop" and ev.thread.daemon and ev.thread.is_alive()

    async def where() -> str:
        return threading.current_thread().name

    assert ev.call(where()) == "lem-test-loop"
    assert ev.run(where()).result(timeout=5) == "lem-test-loop"
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        ev.call(asyncio.sleep(5), timeout=0.05)
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    ev.run(forever())
    ev.close()
    ev.close()  # idempotent
    assert cancelled.is_set() and not ev.thread.is_alive() and ev.loop.is_closed() and ev.closed
    with pytest.raises(RuntimeError, match="closed"):
        ev.run(where())


def test_engine_handle_closes_in_order_once_even_from_many_threads() -> None:
    handle = EngineHandle("lem-test-engine")
    assert handle.loop is not None and handle.loop.thread.name == "lem-test-engine"
    engine = Engine(tokens=1000, gap_s=0.005)
    order: list[str] = []

    def shutdown() -> None:
        # The requests in flight were cancelled first, and the loop still runs for the backend's own calls.
        assert handle.loop is not None
        order.append(f"shutdown: cancelled {sorted(engine.cancelled)}, in flight {engine.in_flight}")

        async def on_loop() -> str:
            return threading.current_thread().name

        order.append(f"on {handle.loop.call(on_loop())}")

    def release() -> None:
        assert handle.loop is not None
        order.append(f"release: loop closed {handle.loop.loop.is_closed()}")

    handle.shutdown, handle.release = shutdown, release
    events = stream(handle.loop, _requests(2), TrafficConfig("concurrency", concurrency=2), engine.submit)
    assert next(events).n_tokens == 0  # serving has started; the consumer now leaves it mid-cycle
    closers = [threading.Thread(target=handle.close) for _ in range(4)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(10)
    handle.close()
    assert order == ["shutdown: cancelled [0, 1], in flight 0", "on lem-test-engine", "release: loop closed True"]
    assert handle.closed and not handle.loop.thread.is_alive()
    assert handle.shutdown is None and handle.release is None  # nothing of the engine is kept past its close
    events.close()  # type: ignore[attr-defined]  # the abandoned iterator ends quietly on a closed loop


def test_engine_handle_is_closed_at_exit_until_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[Callable[[], None]] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", registered.remove)
    handle = EngineHandle("lem-test-atexit", loop=False)
    assert registered == [handle.close] and handle.loop is None
    calls: list[str] = []
    handle.shutdown = lambda: calls.append("shutdown")
    registered[0]()  # what atexit does when the backend never closed it
    assert calls == ["shutdown"] and registered == [] and handle.closed


def test_engine_handle_runs_every_step_when_one_fails() -> None:
    handle = EngineHandle("lem-test-failing")
    released: list[bool] = []

    def shutdown() -> None:
        raise RuntimeError("the engine would not stop")

    handle.shutdown = shutdown
    handle.release = lambda: released.append(True)
    with pytest.raises(RuntimeError, match="would not stop"):
        handle.close()
    assert handle.loop is not None and handle.loop.loop.is_closed() and released == [True]
    handle.close()  # closed is closed, failure or not
    assert released == [True]
