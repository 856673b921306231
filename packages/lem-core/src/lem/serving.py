"""The traffic schedule for engines that take requests one at a time.

vLLM's ``AsyncLLM``, TensorRT-LLM's ``generate_async`` and an HTTP server all
accept a request whenever it arrives and stream its tokens back. A backend for
such an engine supplies one function, ``submit(request)``, returning an async
iterator of :class:`Delta` (what the engine streamed for that request at one
instant), and calls :func:`stream` from its ``generate_stream`` hook. This
module does the rest, the same way for every engine:

- **The engine's life.** :class:`EngineHandle` owns what every such engine
  needs around it: an :class:`EventLoop` (an asyncio loop on its own daemon
  thread, because ``generate_stream`` is a plain function returning an
  iterator that the core consumes on its own thread; engines bind to the loop
  they are built on: ``handle.loop.call(make_engine())``), one idempotent,
  locked :meth:`~EngineHandle.close` that ``atexit`` also calls, and the close
  order: cancel the requests in flight (so the engine aborts them while it is
  still up), the backend's ``shutdown``, close the loop, then the backend's
  ``release`` (what can only be freed once nothing on the loop holds the
  engine). A backend writes only its ``shutdown`` (and ``release``).
- **Arrivals.** Open loop (``poisson``, ``constant``, ``offline``): a request
  is submitted at its ``arrival_ns``, never before. Closed loop
  (``concurrency``): ``traffic.concurrency`` requests in flight, the next one
  submitted when one finishes. A request that carries no arrival time (closed
  loop always) gets a zero-token event stamped when it is submitted: that is
  when it arrived, and latencies count from it.
- **Events.** Every :class:`Delta` becomes one :class:`~lem.types.TokenEvent`
  stamped with ``time.monotonic_ns()`` on the loop when the delta arrives (or
  with the delta's own ``t_ns``, taken where its bytes arrived), and
  is handed to the consumer at once (a thread-safe queue, no batching), with
  the token ids carried over. Every request ends with exactly one
  ``finished=True`` event; if the engine's iterator ends without saying so,
  the driver adds one.
- **Failures.** :class:`RequestFailed` raised by ``submit`` (an HTTP error, an
  engine abort) fails that request only: its last event carries
  ``error=str(exc)`` and the others go on. A request still running
  ``request_timeout_s`` after it was submitted is cancelled and fails with
  ``"timed out after X s"``, followed by the key that sets it when the backend
  names one (``"timed out after X s (server.request_timeout_s)"``). Any other exception means the engine is gone:
  everything in flight is cancelled and the exception is re-raised to the
  consumer.
- **The collector.** While the events flow, the objects that existed when
  serving started are frozen out of Python's cyclic garbage collector
  (:func:`frozen_heap`): a process that has loaded transformers holds
  hundreds of thousands of objects, and one full collection of them stopped
  the loop for 170-430 ms in the middle of a cycle, so every token that
  arrived meanwhile was stamped that much late (issue 31). They are handed
  back to the collector when the cycle ends.
- **Stopping early.** When the consumer stops iterating (``close()`` on the
  iterator, an exception, Ctrl-C), what is in flight is cancelled and the
  iterator waits (up to :data:`CANCEL_WAIT_S`) until it is: cancelling the
  engine's async iterator is how engines abort a request (vLLM's ``generate``
  aborts it in the engine core).

Serving starts on the first ``next()`` of the returned iterator.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import gc
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from lem.config import TrafficConfig
from lem.types import Request, TokenEvent

T = TypeVar("T")

#: How close (ns) to a request's arrival the driver stops sleeping and yields to the loop until it is reached.
SPIN_NS = 1_500_000

#: Seconds the iterator waits, when the consumer stops early, for what was in flight to be cancelled.
CANCEL_WAIT_S = 10.0


@attrs.frozen
class Delta:
    """What an engine streamed for one request at one instant.

    :param token_ids: the output token ids added, when the engine gives them.
    :param n_tokens: tokens added, when the engine reports a count but not the
        ids (``None``: ``len(token_ids)``).
    :param finished: this is the request's last delta.
    :param t_ns: when the delta reached lem (``time.monotonic_ns()``), for a backend that stamps it where
        the bytes arrive, before parsing them (``None``: the driver stamps it when the delta is yielded).
    :param text: the output text added, when the engine streams text (``None``: lem decodes the ids).
    """

    token_ids: tuple[int, ...] = ()
    n_tokens: int | None = None
    finished: bool = False
    t_ns: int | None = None
    text: str | None = None

    @property
    def count(self) -> int:
        """Tokens this delta adds."""
        return len(self.token_ids) if self.n_tokens is None else self.n_tokens


class RequestFailed(Exception):
    """Raised by a submit function for ONE request (an HTTP error, an engine abort).

    The request counts as failed with ``str(exc)`` as its reason (its final
    :class:`~lem.types.TokenEvent` has ``error`` set) and the other requests go
    on. Any other exception from a submit function aborts the whole stream
    (the engine is gone).
    """


#: A backend's way of serving one request: its deltas as the engine streams them.
Submit = Callable[[Request], AsyncIterator[Delta]]


@attrs.frozen
class _Timeout:
    """How long a request may run, and the config key that says so (named in the failure)."""

    seconds: float
    key: str | None = None


class EventLoop:
    """An asyncio event loop running on its own daemon thread.

    :param name: the thread's name (shown in stack dumps: say which engine).
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._closed = False
        #: The driver's serving tasks (one per :func:`stream` being consumed): what is in flight.
        self._streams: set[asyncio.Task[None]] = set()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()
        ready.wait()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a future for its result (thread-safe)."""
        if self._closed:
            coro.close()
            raise RuntimeError(f"event loop {self.thread.name!r} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result; after ``timeout`` s it is cancelled (TimeoutError)."""
        future = self.run(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if not future.done():
                future.cancel()
                name = getattr(coro, "__qualname__", "coroutine")
                raise TimeoutError(f"{name} did not finish within {timeout:g} s") from None
            raise

    def cancel_streams(self, timeout: float = 10.0) -> None:
        """Cancel what :func:`stream` has in flight on this loop and wait (up to ``timeout`` s) until it is."""
        if self._closed or not self.thread.is_alive():
            return
        try:
            self.call(_cancel_streams(self._streams), timeout)
        except TimeoutError:
            pass  # the engine ignored cancellation: its shutdown ends the rest

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the tasks left on the loop, stop it and join its thread (safe to call twice)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.thread.is_alive() and self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass  # a task that ignores cancellation must not keep the process from ending
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


async def _cancel_streams(streams: set[asyncio.Task[None]]) -> None:
    # Runs on the loop: the set is only touched there.
    tasks = list(streams)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _cancel_all() -> None:
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class EngineHandle:
    """The life of an engine that takes requests one at a time: its event loop and its one close.

    Made before the engine (which is then built on :attr:`loop`); the backend
    sets :attr:`shutdown` (and :attr:`release`) once the engine is up, and
    calls :meth:`close` if building it fails. ``atexit`` calls :meth:`close`
    too, so an error or Ctrl-C that skips the backend's close leaves no engine
    behind.

    :param name: the loop thread's name (shown in stack dumps: say which engine).
    :param loop: start an event loop; ``False`` for an engine served without
        one (an offline ``LLM.generate``), which still gets the one close.
    """

    def __init__(self, name: str, *, loop: bool = True) -> None:
        self.name = name
        self.loop: EventLoop | None = EventLoop(name) if loop else None
        #: The backend's own shutdown: runs on the closing thread while the loop still runs
        #: (``loop.call(...)`` for what must run on it), after what was in flight is cancelled.
        self.shutdown: Callable[[], None] | None = None
        #: What the backend frees once the loop is closed and nothing on it holds the engine
        #: (processes to reap, objects to collect).
        self.release: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float = CANCEL_WAIT_S) -> None:
        """Cancel what is in flight, the backend's shutdown, close the loop, the backend's release (safe to call twice).

        Each step runs even when one before it failed; the first failure is raised at the end.

        :param timeout: seconds to wait for cancelled requests, and for the loop's thread to end.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        shutdown, release, loop = self.shutdown, self.release, self.loop
        self.shutdown = self.release = None  # the handle must not keep the engine alive once it is closed
        try:
            try:
                if loop is not None:
                    loop.cancel_streams(timeout)  # aborted in the engine while it is still up
            finally:
                try:
                    if shutdown is not None:
                        shutdown()
                finally:
                    if loop is not None:
                        loop.close(timeout)
        finally:
            if release is not None:
                release()


class _FrozenHeap:
    """Counts the :func:`frozen_heap` blocks open in this process (streams may overlap on several loops)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.unfreeze = False


_HEAP = _FrozenHeap()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects that exist now out of the cyclic garbage collector's passes until the block ends.

    ``gc.freeze()`` moves every tracked object to the collector's permanent generation, so the
    collections that the block's own allocations trigger look at the new objects only, not at the
    whole heap of the process (imported modules, a tokenizer: their full pass took 170-430 ms with
    transformers loaded, stopping the event loop that stamps tokens). When the last open block ends
    the objects are handed back (``gc.unfreeze()``): garbage among them is collected as usual
    afterwards, nothing leaks. Blocks may nest or overlap across threads. A heap that something
    else froze first (vLLM freezes its own after start-up) is left frozen.
    """
    with _HEAP.lock:
        if _HEAP.depth == 0:
            _HEAP.unfreeze = gc.get_freeze_count() == 0
        _HEAP.depth += 1
        gc.freeze()
    try:
        yield
    finally:
        with _HEAP.lock:
            _HEAP.depth -= 1
            if _HEAP.depth == 0 and _HEAP.unfreeze:
                gc.unfreeze()


@attrs.frozen
class _End:
    """The last item on the queue: serving ended, with this exception or none."""

    error: BaseException | None = None


def stream(
    loop: EventLoop,
    requests: Sequence[Request],
    traffic: TrafficConfig,
    submit: Submit,
    *,
    request_timeout_s: float | None = None,
    timeout_key: str | None = None,
) -> Iterator[TokenEvent]:
    """Serve ``requests`` on ``loop`` on the traffic schedule; the events, as they happen (see the module doc).

    :param loop: the loop the engine runs on.
    :param requests: the cycle's requests (ids unique).
    :param traffic: ``concurrency`` for closed loop; otherwise arrival times come with the requests.
    :param submit: starts one request on the engine and yields its :class:`Delta` s.
    :param request_timeout_s: a request still unfinished this long after submission fails as timed out.
    :param timeout_key: the config key that sets ``request_timeout_s``, named in the failure.
    :returns: an iterator of :class:`~lem.types.TokenEvent`; serving starts on its first ``next()``.
    """
    if request_timeout_s is not None and request_timeout_s <= 0:
        raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s!r}")
    timeout = None if request_timeout_s is None else _Timeout(request_timeout_s, timeout_key)
    return _events(loop, list(requests), traffic, submit, timeout)


def _events(
    loop: EventLoop, requests: list[Request], traffic: TrafficConfig, submit: Submit, timeout: _Timeout | None
) -> Iterator[TokenEvent]:
    with frozen_heap():
        items: queue.SimpleQueue[TokenEvent | _End] = queue.SimpleQueue()
        task = loop.call(_spawn(_serve(requests, traffic, submit, timeout, items.put), loop._streams))
        ended = False
        try:
            while True:
                item = items.get()
                if isinstance(item, _End):
                    ended = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            if not ended and not loop.closed:
                # The consumer stopped early: abort what is in flight, and return only once it is aborted.
                try:
                    loop.call(_cancel(task), timeout=CANCEL_WAIT_S)
                except TimeoutError:
                    pass  # the engine ignored cancellation; closing it will end the rest


async def _spawn(coro: Coroutine[Any, Any, None], streams: set[asyncio.Task[None]]) -> asyncio.Task[None]:
    task = asyncio.create_task(coro)
    streams.add(task)
    task.add_done_callback(streams.discard)
    return task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _serve(
    requests: list[Request],
    traffic: TrafficConfig,
    submit: Submit,
    timeout: _Timeout | None,
    put: Callable[[TokenEvent | _End], None],
) -> None:
    try:
        await _schedule(requests, traffic, submit, timeout, put)
    except asyncio.CancelledError as exc:
        put(_End(exc))
        raise
    except BaseException as exc:  # handed to the consumer, who re-raises it
        put(_End(exc))
    else:
        put(_End())


async def _schedule(
    requests: list[Request],
    traffic: TrafficConfig,
    submit: Submit,
    timeout: _Timeout | None,
    put: Callable[[TokenEvent], None],
) -> None:
    closed_loop = traffic.mode == "concurrency"
    slots = asyncio.Semaphore(traffic.concurrency or 1) if closed_loop else None
    main = asyncio.current_task()
    assert main is not None
    failures: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    def on_done(task: asyncio.Task[None]) -> None:
        # An engine failure must stop the schedule at once, not when the last request would have arrived.
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            if not failures:
                main.cancel()
            failures.append(exc)

    try:
        # Requests with no arrival time arrive when submitted, in the order given.
        for req in sorted(requests, key=lambda r: r.arrival_ns or 0):
            if slots is not None:
                await slots.acquire()
            if req.arrival_ns is not None:
                await _until(req.arrival_ns)
            if closed_loop or req.arrival_ns is None:
                put(TokenEvent(req.id, time.monotonic_ns(), 0))
            task = asyncio.create_task(_one(req, submit, timeout, put, slots))
            task.add_done_callback(on_done)
            tasks.append(task)
        await asyncio.gather(*tasks)
    except BaseException as exc:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failures and isinstance(exc, asyncio.CancelledError):
            raise failures[0] from None
        raise


async def _until(t_ns: int) -> None:
    """Return at ``t_ns`` (monotonic), never before it, and as little after it as the loop allows.

    The loop's timers wake to the millisecond (epoll rounds its timeout up), so a plain sleep sends
    a request 0-1 ms late, 0.5 ms on average. Timers take it to within :data:`SPIN_NS` of the arrival,
    and then the task yields to the loop (other requests' I/O still runs) until the arrival is reached.
    """
    while (wait_ns := t_ns - time.monotonic_ns()) > SPIN_NS:
        await asyncio.sleep((wait_ns - SPIN_NS) / 1e9)
    while time.monotonic_ns() < t_ns:
        await asyncio.sleep(0)


async def _one(
    req: Request,
    submit: Submit,
    timeout: _Timeout | None,
    put: Callable[[TokenEvent], None],
    slots: asyncio.Semaphore | None,
) -> None:
    """Serve one request: its deltas as events, ending with exactly one finished event."""
    finished = False
    timed_out = False
    this = asyncio.current_task()
    assert this is not None

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        this.cancel()

    timer = asyncio.get_running_loop().call_later(timeout.seconds, expire) if timeout is not None else None
    error: str | None = None
    try:
        async for delta in submit(req):
            t_ns = time.monotonic_ns() if delta.t_ns is None else delta.t_ns
            if finished:
                continue  # nothing counts after the last delta; the engine's iterator is drained, not aborted
            n = delta.count
            if n or delta.finished:
                finished = delta.finished
                put(TokenEvent(req.id, t_ns, n, delta.finished, delta.token_ids, text=delta.text))
    except RequestFailed as exc:
        error = str(exc) or type(exc).__name__
    except asyncio.CancelledError:
        if not timed_out:
            raise
        if hasattr(this, "uncancel"):  # Python 3.11+: this cancellation was ours, and it is handled
            this.uncancel()
        assert timeout is not None
        error = f"timed out after {timeout.seconds:g} s" + (f" ({timeout.key})" if timeout.key else "")
    finally:
        if timer is not None:
            timer.cancel()
        if slots is not None:
            slots.release()
    if not finished:
        put(TokenEvent(req.id, time.monotonic_ns(), 0, True, error=error))
