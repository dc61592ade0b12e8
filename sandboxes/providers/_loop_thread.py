"""An asyncio event loop on a thread of its own, for SDKs tied to one loop.

Clients such as aiohttp's bind their sessions and pooled connections to the
loop they were first used on. A provider outlives loops (pytest runs each
async test on a fresh one; the sync facade has its own), so such a client
lives on a private loop thread, and callers on any asyncio loop, or on none
(the blocking facade), await its results. asyncio is the supported loop. The client is created, used and closed on that one loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on a private asyncio loop; started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def run(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Await ``function(*args)`` run on the private loop, from any loop or thread."""

        async def call() -> T:
            return await function(*args)  # the coroutine is made and run on the private loop

        future = asyncio.run_coroutine_threadsafe(call(), self._ensure())
        try:
            if _on_asyncio():
                return await asyncio.wrap_future(future)
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except BaseException:
            future.cancel()  # a cancelled caller cancels the work (no-op once it is done)
            raise

    def close(self, final: Callable[[], Awaitable[None]] | None = None, timeout: float = 10.0) -> None:
        """Run ``final`` on the loop (closing the client), then stop the thread. Blocking."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if final is not None:
            try:
                asyncio.run_coroutine_threadsafe(_call(final), loop).result(timeout)
            except (concurrent.futures.TimeoutError, Exception):
                pass  # closing is best effort; the loop is stopped regardless
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not loop.is_running():
            loop.close()

    @property
    def started(self) -> bool:
        return self._loop is not None


async def _call(final: Callable[[], Awaitable[None]]) -> None:
    await final()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # no asyncio loop running
    return True
