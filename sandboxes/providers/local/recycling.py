"""The idle sandboxes of this process, reset and waiting for their next lease.

A sandbox goes back here when its holder destroys it and its agent proves a
reset complete (``_reset``); the next creation with the same shape takes it
instead of starting bubblewrap again. It is per process (per pytest-xdist
worker): only the process that started a sandbox recycles it, a forked child
forgets its parent's, and whatever is idle when the process exits is
destroyed. An idle sandbox whose process died without that ends by itself,
``IDLE_SECONDS`` after it was parked (its agent's deadline).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Protocol

IDLE_SECONDS = 60.0
"""How long a reset sandbox lives unleased: its agent's deadline while idle."""
LIFETIMES = 2.0
"""A recyclable sandbox's watchdog outside it is armed for this many lifetimes at creation (see ``LocalDriver``)."""
LEASE_MARGIN = 5.0
"""Seconds that a lease's lifetime must fit before the watchdog, or the sandbox retires."""
MAX_IDLE = 4
"""Idle sandboxes kept per shape; one more is destroyed."""


class _Ender(Protocol):
    def _destroy_state(self, state: Any) -> None: ...


Entry = tuple[_Ender, Any]  # (the driver that made it, its SandboxState)


class IdleSet:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_shape: dict[str, list[Entry]] = {}
        self._exiting = False
        self._hooked = False

    def take(self, shape: str) -> Entry | None:
        """The most recently parked sandbox of this shape (its caches are warmest), or None."""
        with self._lock:
            entries = self._by_shape.get(shape)
            return entries.pop() if entries else None

    def put(self, shape: str, entry: Entry) -> list[Entry] | None:
        """Park it, unless the process is exiting (None: not parked); the oldest ones that no longer
        fit, for the caller to destroy (``end``: it may wait for them, where this may not)."""
        with self._lock:
            if self._exiting:
                return None
            if not self._hooked:
                atexit.register(self.drain, final=True)
                self._hooked = True
            entries = self._by_shape.setdefault(shape, [])
            entries.append(entry)
            evicted = entries[:-MAX_IDLE]
            del entries[:-MAX_IDLE]
        return evicted

    def drain(self, *, final: bool = False) -> None:
        """Destroy every idle sandbox; ``final`` (at exit): and park none afterwards."""
        with self._lock:
            self._exiting = self._exiting or final
            entries = [entry for shape in self._by_shape.values() for entry in shape]
            self._by_shape.clear()
        for entry in entries:
            end(entry)

    def count(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._by_shape.values())

    def _forget(self) -> None:
        """In a forked child: the parent's idle sandboxes are the parent's."""
        self._lock = threading.Lock()
        self._by_shape = {}


def end(entry: Entry) -> None:
    """Destroy an idle sandbox (it waits for its processes to end)."""
    driver, state = entry
    driver._destroy_state(state)


IDLE = IdleSet()
os.register_at_fork(after_in_child=IDLE._forget)
