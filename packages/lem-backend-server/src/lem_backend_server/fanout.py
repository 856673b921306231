"""``[server] client_processes = N``: the cycle's requests sent from N client processes, past one core.

One client (:mod:`lem_backend_server.client` on one event loop) uses at most one core. With N > 1 the
backend starts N worker processes when the model loads (``spawn``: the parent has threads), each with
its own event loop and aiohttp session, and keeps them for every cycle until the model closes:

- **Sharing a cycle.** The requests, in arrival order (the order given when they carry none), are
  dealt round-robin: worker ``i`` gets requests ``i, i + N, ...``. Open loop: each worker sends its
  requests at their ``arrival_ns``, absolute ``CLOCK_MONOTONIC`` times (``time.monotonic_ns()`` is
  system-wide on Linux, so the runner's schedule, every worker's stamps and the parent's agree).
  Closed loop: concurrency C is split C // N per worker, and the first C % N workers take one more;
  only min(N, C) workers serve a closed-loop cycle (a worker with no slot would take no request).
- **Events.** Each worker runs lem-core's own driver (:func:`lem.serving.stream`) with the same
  client, so every token is stamped in the worker where its bytes arrived, before parsing, and the
  driver's rules hold in each worker (one finished event per request, ``request_timeout_s``). The
  events go to the parent over a pipe as plain tuples; the parent yields them from
  ``generate_stream`` as one process would (their order across workers is the order they reached
  the parent; every event carries its own stamp). The parent keeps its heap from the garbage
  collector while it reads them, as the driver does (:func:`lem.serving.frozen_heap`).
- **Failures.** A request's HTTP error fails that request, in the worker, with its reason. A worker
  that dies (or goes silent longer than ``request_timeout_s`` plus :data:`SILENCE_MARGIN_S` with
  requests unfinished, counted from its last message or its share's last arrival, whichever is
  later: before that it may be waiting for an arrival) fails each of its unfinished requests with
  the reason, and the pool is restarted for the next cycle. A worker whose driver ended with an
  engine failure (the server refused the connection) ends the cycle with that error, as one
  process would.
- **Cleanup.** When the consumer stops early (``close()``, an exception, Ctrl-C) the workers are
  stopped (SIGTERM, then SIGKILL after :data:`STOP_WAIT_S`), which drops their connections: the
  server aborts those requests. The pool restarts on the next cycle. Closing the model stops them
  the same way after asking them to exit; ``daemon`` workers also end with the parent.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from lem.config import TrafficConfig
from lem.serving import EngineHandle, frozen_heap, stream
from lem.types import Request, TokenEvent
from lem_backend_server import client

#: Seconds to wait for a new worker to say it is ready (it imports lem, aiohttp and builds its session).
START_WAIT_S = 120.0
#: Seconds a worker may be silent beyond the request timeout, with requests unfinished, before it is given up.
SILENCE_MARGIN_S = 30.0
#: Seconds between SIGTERM and SIGKILL when workers are stopped, and to wait for a clean exit.
STOP_WAIT_S = 5.0
#: The parent's longest single wait on the pipes (it then checks that every worker is alive).
POLL_S = 1.0


def split(n_items: int, n_workers: int) -> list[int]:
    """How ``n_items`` (closed-loop concurrency) is split over ``n_workers``: C // N each, the first C % N one more."""
    base, extra = divmod(n_items, n_workers)
    return [base + (1 if i < extra else 0) for i in range(n_workers)]


def deal(requests: Sequence[Request], n_workers: int) -> list[list[Request]]:
    """The requests in arrival order (given order when none carries one), dealt round-robin over the workers."""
    ordered = sorted(requests, key=lambda r: r.arrival_ns or 0)
    return [ordered[i::n_workers] for i in range(n_workers)]


@attrs.define(eq=False)
class _Worker:
    index: int
    process: Any  # multiprocessing.Process (spawn context)
    conn: multiprocessing.connection.Connection


class Pool:
    """N worker processes that send requests to one server (see the module doc).

    :param target: where the requests go (picklable).
    :param n: worker processes.
    :param request_timeout_s: each request's bound, in the worker; the parent's silence bound builds on it.
    """

    def __init__(self, target: client.Target, n: int, request_timeout_s: float) -> None:
        self.target = target
        self.n = n
        self.request_timeout_s = request_timeout_s
        self.workers: list[_Worker] = []

    def start(self) -> None:
        """Start the workers and wait until each has its loop and session (bounded by :data:`START_WAIT_S`)."""
        ctx = multiprocessing.get_context("spawn")
        try:
            for i in range(self.n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child, self.target, self.request_timeout_s),
                    name=f"lem-server-client-{i}",
                    daemon=True,
                )
                proc.start()
                child.close()
                self.workers.append(_Worker(i, proc, parent))
            deadline = time.monotonic() + START_WAIT_S
            for w in self.workers:
                left = deadline - time.monotonic()
                if not w.conn.poll(max(0.0, left)):
                    raise RuntimeError(f"client process {w.index} did not start within {START_WAIT_S:g} s")
                msg = w.conn.recv()
                if msg[0] != "ready":
                    raise RuntimeError(f"client process {w.index} failed to start: {msg[1]}")
        except (EOFError, OSError) as exc:
            self.stop()
            raise RuntimeError(f"a client process died while starting ({type(exc).__name__}: {exc})") from None
        except BaseException:
            self.stop()
            raise

    @property
    def alive(self) -> bool:
        """Whether every worker is running."""
        return bool(self.workers) and all(w.process.is_alive() for w in self.workers)

    def stop(self, ask: bool = False) -> None:
        """Stop the workers: ask them to exit (``ask``), then SIGTERM, then SIGKILL (safe to call twice)."""
        workers, self.workers = self.workers, []
        if ask:
            for w in workers:
                try:
                    w.conn.send(("exit",))
                except (OSError, ValueError):
                    pass
            deadline = time.monotonic() + STOP_WAIT_S
            for w in workers:
                w.process.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + STOP_WAIT_S
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(STOP_WAIT_S)
            w.conn.close()
        if ask and workers:
            _stop_resource_tracker()

    def serve(
        self, requests: Sequence[Request], payloads: Mapping[int, Mapping[str, Any]], traffic: TrafficConfig
    ) -> Iterator[TokenEvent]:
        """The cycle's events from every worker, as they reach the parent (see the module doc)."""
        if not self.alive:
            self.stop()
            self.start()
        closed_loop = traffic.mode == "concurrency"
        # Closed loop: a worker with no slot could take no request, so only min(N, C) workers serve.
        active = min(self.n, traffic.concurrency or 1) if closed_loop else self.n
        shares = deal(requests, active)
        slots: list[int | None] = list(split(traffic.concurrency or 1, active)) if closed_loop else [None] * active
        busy: dict[multiprocessing.connection.Connection, _Worker] = {}
        unfinished: dict[_Worker, set[int]] = {}
        last_arrival: dict[_Worker, float] = {}
        for w, share, cap in zip(self.workers[:active], shares, slots, strict=True):
            if not share:
                continue
            mine = attrs.evolve(traffic, concurrency=cap) if cap is not None else traffic
            w.conn.send(("cycle", share, {r.id: payloads[r.id] for r in share}, mine))
            busy[w.conn] = w
            unfinished[w] = {r.id for r in share}
            arrivals = [r.arrival_ns for r in share if r.arrival_ns is not None]
            # A worker may be silent, waiting for its next arrival, until its last arrival (monotonic seconds).
            last_arrival[w] = max(arrivals) / 1e9 if arrivals else 0.0
        ended = False
        try:
            # A full garbage collection here would leave the pipes unread and block the workers' loops.
            with frozen_heap():
                yield from self._collect(busy, unfinished, last_arrival)
            ended = True
        finally:
            if not ended:
                self.stop()  # the consumer stopped early, or a worker's engine failure: drop what is in flight

    def _collect(
        self,
        busy: dict[multiprocessing.connection.Connection, _Worker],
        unfinished: dict[_Worker, set[int]],
        last_arrival: Mapping[_Worker, float],
    ) -> Iterator[TokenEvent]:
        heard = {w: time.monotonic() for w in busy.values()}
        silence = self.request_timeout_s + SILENCE_MARGIN_S
        while busy:
            ready = multiprocessing.connection.wait(list(busy), timeout=POLL_S)
            now = time.monotonic()
            for conn in ready:
                assert isinstance(conn, multiprocessing.connection.Connection)
                w = busy[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    del busy[conn]
                    w.process.join(STOP_WAIT_S)
                    yield from _fail(unfinished.pop(w), f"client process {w.index} died (exit {w.process.exitcode})")
                    continue
                heard[w] = now
                if msg[0] == "events":
                    for rid, t_ns, n, fin, ids, text, error in msg[1]:
                        if fin:
                            unfinished[w].discard(rid)
                        yield TokenEvent(rid, t_ns, n, fin, ids, text=text, error=error)
                elif msg[0] == "end":
                    del busy[conn]
                    left = unfinished.pop(w)
                    if msg[1] is not None:
                        raise ConnectionError(f"client process {w.index}: {msg[1]}")
                    yield from _fail(left, f"client process {w.index} ended its share without finishing it")
            for conn, w in list(busy.items()):
                if not w.process.is_alive() and not conn.poll():
                    del busy[conn]
                    yield from _fail(unfinished.pop(w), f"client process {w.index} died (exit {w.process.exitcode})")
                elif now - max(heard[w], last_arrival[w]) > silence:
                    del busy[conn]
                    w.process.kill()
                    yield from _fail(
                        unfinished.pop(w), f"client process {w.index} was silent for {silence:g} s and was stopped"
                    )
        if any(not w.process.is_alive() for w in self.workers):
            self.stop()  # started afresh for the next cycle


def _stop_resource_tracker() -> None:
    """End the helper process that ``spawn`` starts (multiprocessing's resource tracker), once the workers are gone.

    It tracks shared memory and semaphores, which the workers do not use (pipes only); left running it
    would outlive the experiment as a process of lem's own (and lem's worker reports such leftovers).
    multiprocessing starts it again if anything needs it later.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # private; present in CPython 3.8-3.13
    if stop is not None:
        stop()


def _fail(ids: set[int], reason: str) -> Iterator[TokenEvent]:
    now = time.monotonic_ns()
    for rid in sorted(ids):
        yield TokenEvent(rid, now, 0, True, error=reason)


#: A worker sends its events in batches: at most this many, and no older than :data:`BATCH_NS`, and at the
#: end of every request (the stamps were taken where the bytes arrived; the batch only delays the hand-over).
BATCH = 64
BATCH_NS = 2_000_000


def _worker_main(conn: multiprocessing.connection.Connection, target: client.Target, timeout_s: float) -> None:
    """A worker: its own loop and aiohttp session; serves each cycle it is sent until told to exit."""
    try:
        serving = EngineHandle("lem-server-client")
        assert serving.loop is not None
        http = serving.loop.call(client.session())
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    try:
        while True:
            msg = conn.recv()
            if msg[0] != "cycle":
                break
            _, share, payloads, traffic = msg

            def submit(req: Request, payloads: Mapping[int, Any] = payloads) -> Any:
                return client.complete(http, target, payloads[req.id])

            error = None
            try:
                events = stream(
                    serving.loop,
                    share,
                    traffic,
                    submit,
                    request_timeout_s=timeout_s,
                    timeout_key="server.request_timeout_s",
                )
                batch: list[tuple[Any, ...]] = []
                since = 0
                for e in events:
                    if not batch:
                        since = time.monotonic_ns()
                    batch.append((e.request_id, e.t_ns, e.n_tokens, e.finished, e.token_ids, e.text, e.error))
                    if len(batch) >= BATCH or e.finished or time.monotonic_ns() - since > BATCH_NS:
                        conn.send(("events", batch))
                        batch = []
                if batch:
                    conn.send(("events", batch))
            except Exception as exc:  # the server is gone: the parent ends the cycle with this
                error = f"{type(exc).__name__}: {exc}"
            conn.send(("end", error))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent is gone or stopping us
    finally:
        try:
            serving.loop.call(http.close(), timeout=STOP_WAIT_S)
        except Exception:  # a session on a broken connection may not close cleanly; the process ends anyway
            pass
        serving.close()
