"""Starting and stopping vLLM engines.

Streaming mode runs ``AsyncLLM`` (the engine core in its own process) on
the event loop of a :class:`lem.serving.EngineHandle`, because the
``generate_stream`` hook is a plain function returning an iterator. Offline mode runs
``LLM`` (``LLM.generate``) under a handle without a loop. Either way vLLM owns CUDA in
its own processes: nothing here touches ``torch.cuda``.

The handle gives the close its order, its idempotence and its ``atexit``
registration (so an error or Ctrl-C does not leave orphaned engine processes
or shared-memory segments behind); this module supplies only vLLM's part:
the shutdown (:data:`SHUTDOWN_GRACE_S` for vLLM to end its processes), and,
once the loop is closed and nothing holds the engine, the release: wait until
its processes have exited and unlink the ``/dev/shm`` segments they mapped
and left (see :mod:`lem_backend_vllm.processes` for why they can be left).
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from lem.errors import BackendError
from lem.serving import EngineHandle
from lem_backend_vllm import processes, startup

log = logging.getLogger(__name__)

Mode = Literal["stream", "offline"]


#: Seconds vLLM may take to end its engine processes before it kills them (vLLM's own default, 5 s,
#: is about what their teardown takes on an idle 2-core machine; killed, they leave /dev/shm segments).
SHUTDOWN_GRACE_S = 60


@attrs.define
class Engine:
    """A running vLLM engine and the handle that serves and closes it (with an event loop when streaming)."""

    mode: Mode
    engine: Any
    serving: EngineHandle
    #: The engine's own processes (``psutil.Process``: engine core, workers), found when it started.
    processes: list[Any] = attrs.field(factory=list)
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
    shm: set[str] = set()

    def shutdown() -> None:
        procs = processes.with_descendants(engine.processes)
        shm.update(name for p in procs for name in processes.shm_mapped(p.pid))
        engine.processes = procs
        if engine.mode == "stream":
            assert engine.serving.loop is not None

            async def on_loop() -> None:
                _shutdown(engine.engine)

            engine.serving.loop.call(on_loop(), timeout=SHUTDOWN_GRACE_S + 30)
        else:
            llm_engine = getattr(engine.engine, "llm_engine", None)
            core = getattr(llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                _shutdown(core)

    def release() -> None:
        # After the loop closed: its cancelled tasks (AsyncLLM's output handler) no longer hold the engine.
        engine.engine = None
        # Finalize vLLM's objects now, while the interpreter is whole (their __del__ shuts down again).
        gc.collect()
        killed = processes.wait_gone(engine.processes, timeout=SHUTDOWN_GRACE_S)
        unlinked = processes.unlink_left(shm)
        engine.closing.update(killed=[p.pid for p in killed], unlinked=unlinked)
        if killed or unlinked:
            log.warning("vLLM engine close: killed %s, unlinked shared memory %s", killed, unlinked)

    engine.serving.shutdown, engine.serving.release = shutdown, release
    return engine


def _start(mode: Mode, args: Mapping[str, Any]) -> Engine:
    if mode == "offline":
        from vllm import LLM

        handle = EngineHandle("lem-vllm", loop=False)
        try:
            return Engine("offline", LLM(**args), handle)
        except BaseException:
            handle.close()
            raise
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    handle = EngineHandle("lem-vllm-loop")
    assert handle.loop is not None

    async def make() -> Any:
        # Built on the loop's thread: AsyncLLM binds its output handler to the running loop.
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    try:
        return Engine("stream", handle.loop.call(make()), handle)
    except BaseException:
        handle.close(timeout=5)
        raise


def _shutdown(client: Any) -> None:
    # AsyncLLM.shutdown / an engine-core client's shutdown: with a grace where this vLLM takes one.
    if "timeout" in inspect.signature(client.shutdown).parameters:
        client.shutdown(timeout=SHUTDOWN_GRACE_S)
    else:
        client.shutdown()


def close(engine: Engine) -> None:
    """Shut the engine down, wait until its processes have exited and unlink what they left (safe to call twice)."""
    engine.serving.close()
