"""Starting and stopping vLLM engines.

Streaming mode runs ``AsyncLLM`` (the engine core in its own process) on an
asyncio event loop in a background thread, because the ``generate_stream``
hook is a plain function returning an iterator. Offline mode runs
``LLM`` (``LLM.generate``). Either way vLLM owns CUDA in its own processes:
nothing here touches ``torch.cuda``.

:func:`close` ends the engine and its processes; it is idempotent and is
also registered with ``atexit`` so an error or Ctrl-C does not leave orphaned
engine processes or shared-memory segments behind.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import gc
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, Literal

import attrs

Mode = Literal["stream", "offline"]


@attrs.define
class Engine:
    """A running vLLM engine and, in streaming mode, the event loop that drives it."""

    mode: Mode
    engine: Any
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    closed: bool = False
    #: The ``atexit`` registration, kept so :func:`close` can drop exactly this one.
    on_exit: Any = None
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the engine's event loop; returns a ``concurrent.futures.Future``."""
        assert self.loop is not None, "offline engines have no event loop"
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="lem-vllm-loop", daemon=True)
    thread.start()
    ready.wait()
    return loop, thread


def start(mode: Mode, args: Mapping[str, Any]) -> Engine:
    """Start an engine with the given ``EngineArgs`` keyword arguments."""
    if mode == "offline":
        from vllm import LLM

        engine = Engine("offline", LLM(**args))
    else:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        loop, thread = _start_loop()

        async def make() -> Any:
            # Built on the loop's thread: AsyncLLM binds its output handler to the running loop.
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        try:
            async_llm = asyncio.run_coroutine_threadsafe(make(), loop).result()
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            raise
        engine = Engine("stream", async_llm, loop, thread)
    engine.on_exit = functools.partial(close, engine)
    atexit.register(engine.on_exit)
    return engine


def close(engine: Engine) -> None:
    """Shut the engine down and end its processes (safe to call twice)."""
    with engine.lock:
        if engine.closed:
            return
        engine.closed = True
    if engine.on_exit is not None:
        atexit.unregister(engine.on_exit)
    if engine.mode == "stream":
        assert engine.loop is not None and engine.thread is not None

        async def shutdown() -> None:
            engine.engine.shutdown()
            # Let the cancelled output handler (and anything else left) finish, so nothing keeps AsyncLLM alive.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            if engine.loop.is_running():
                asyncio.run_coroutine_threadsafe(shutdown(), engine.loop).result(timeout=60)
        finally:
            engine.loop.call_soon_threadsafe(engine.loop.stop)
            engine.thread.join(timeout=10)
            engine.loop.close()
    else:
        llm_engine = getattr(engine.engine, "llm_engine", None)
        core = getattr(llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    engine.engine = None
    # Finalize vLLM's objects now, while the interpreter is whole (their __del__ shuts down again).
    gc.collect()
