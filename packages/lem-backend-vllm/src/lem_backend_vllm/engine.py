"""Starting and stopping vLLM engines.

Streaming mode runs ``AsyncLLM`` (the engine core in its own process) on
lem's shared event loop thread (:class:`lem.serving.EventLoop`), because the
``generate_stream`` hook is a plain function returning an iterator. Offline mode runs
``LLM`` (``LLM.generate``). Either way vLLM owns CUDA in its own processes:
nothing here touches ``torch.cuda``.

:func:`close` ends the engine and its processes; it is idempotent and is
also registered with ``atexit`` so an error or Ctrl-C does not leave orphaned
engine processes or shared-memory segments behind. It is deterministic: it
gives vLLM :data:`SHUTDOWN_GRACE_S` to end its processes, waits until they
have exited, and unlinks the ``/dev/shm`` segments they mapped and left
(see :mod:`lem_backend_vllm.processes` for why they can be left).
"""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from lem.errors import BackendError
from lem.serving import EventLoop
from lem_backend_vllm import processes, startup

log = logging.getLogger(__name__)

Mode = Literal["stream", "offline"]


#: Seconds vLLM may take to end its engine processes before it kills them (vLLM's own default, 5 s,
#: is about what their teardown takes on an idle 2-core machine; killed, they leave /dev/shm segments).
SHUTDOWN_GRACE_S = 60


@attrs.define
class Engine:
    """A running vLLM engine and, in streaming mode, the event loop that drives it."""

    mode: Mode
    engine: Any
    loop: EventLoop | None = None
    #: The engine's own processes (``psutil.Process``: engine core, workers), found when it started.
    processes: list[Any] = attrs.field(factory=list)
    closed: bool = False
    #: The ``atexit`` registration, kept so :func:`close` can drop exactly this one.
    on_exit: Any = None
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    #: What :func:`close` found and did (processes killed, shared memory unlinked), for the record.
    closing: dict[str, Any] = attrs.field(factory=dict)


def start(mode: Mode, args: Mapping[str, Any]) -> Engine:
    """Start an engine with the given ``EngineArgs`` keyword arguments."""
    # Read by the engine core for its own workers' exit (default 5 s): the same reasoning as SHUTDOWN_GRACE_S.
    os.environ.setdefault("VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS", str(SHUTDOWN_GRACE_S))
    before = [p.pid for p in processes.children()]
    try:
        with startup.watch_output() as output:
            engine = _start(mode, args)
    except BaseException as exc:
        # vLLM stops what it started; make sure it has ended before the error goes on.
        processes.wait_gone(processes.started_since(before), timeout=SHUTDOWN_GRACE_S)
        cause = startup.root_cause(exc, output.text())
        if cause is not None:
            raise BackendError(
                f"vLLM could not start the engine: {cause} (the engine's log above has the traceback)"
            ) from exc
        raise
    engine.processes = processes.started_since(before)
    engine.on_exit = functools.partial(close, engine)
    atexit.register(engine.on_exit)
    return engine


def _start(mode: Mode, args: Mapping[str, Any]) -> Engine:
    if mode == "offline":
        from vllm import LLM

        return Engine("offline", LLM(**args))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    loop = EventLoop("lem-vllm-loop")

    async def make() -> Any:
        # Built on the loop's thread: AsyncLLM binds its output handler to the running loop.
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    try:
        return Engine("stream", loop.call(make()), loop)
    except BaseException:
        loop.close(timeout=5)
        raise


def _shutdown(client: Any) -> None:
    # AsyncLLM.shutdown / an engine-core client's shutdown: with a grace where this vLLM takes one.
    if "timeout" in inspect.signature(client.shutdown).parameters:
        client.shutdown(timeout=SHUTDOWN_GRACE_S)
    else:
        client.shutdown()


def close(engine: Engine) -> None:
    """Shut the engine down, wait until its processes have exited and unlink what they left (safe to call twice)."""
    with engine.lock:
        if engine.closed:
            return
        engine.closed = True
    if engine.on_exit is not None:
        atexit.unregister(engine.on_exit)
    procs = processes.with_descendants(engine.processes)
    shm = {name for p in procs for name in processes.shm_mapped(p.pid)}
    try:
        if engine.mode == "stream":
            assert engine.loop is not None

            async def shutdown() -> None:
                _shutdown(engine.engine)

            try:
                engine.loop.call(shutdown(), timeout=SHUTDOWN_GRACE_S + 30)
            finally:
                # Cancels what is left (AsyncLLM's output handler), so nothing keeps the AsyncLLM alive.
                engine.loop.close()
        else:
            llm_engine = getattr(engine.engine, "llm_engine", None)
            core = getattr(llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                _shutdown(core)
    finally:
        engine.engine = None
        # Finalize vLLM's objects now, while the interpreter is whole (their __del__ shuts down again).
        gc.collect()
        killed = processes.wait_gone(procs, timeout=SHUTDOWN_GRACE_S)
        unlinked = processes.unlink_left(shm)
        engine.closing.update(killed=[p.pid for p in killed], unlinked=unlinked)
        if killed or unlinked:
            log.warning("vLLM engine close: killed %s, unlinked shared memory %s", killed, unlinked)
