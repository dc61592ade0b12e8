"""MeteredDriver: a middleware that counts a run's sandboxes in its ledger and writes their lifecycle to its trace.

It is the outermost layer of a provider's driver stack while a run keeps a
``Ledger`` or a ``Trace`` (``Manager.meter``): a creation is refused once the
run's budget is spent, before it waits for any slot; a sandbox's seconds
count from its creation to its destroy.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import anyio

from .budget import BudgetExhausted, Ledger
from .driver import Driver, Layer
from .errors import SandboxNotFoundError
from .governed import WAITED
from .models import SandboxConfig, SandboxInfo
from .trace import Trace


class MeteredDriver(Layer):
    """``inner`` with its creations and destroys in ``ledger`` and ``trace`` (either may be None)."""

    def __init__(self, inner: Driver, ledger: Ledger | None, trace: Trace | None) -> None:
        super().__init__(inner)
        self.ledger = ledger
        self.trace = trace

    def _emit(self, event: str, **fields: Any) -> None:
        if self.trace is not None:
            self.trace.emit(event, self.name, **fields)

    async def create(self, config: SandboxConfig) -> SandboxInfo:
        self._emit("create")
        per_second = 0.0
        if self.ledger is not None:
            per_second = self.ledger.price(self.name, config)
            try:
                self.ledger.check()
            except BudgetExhausted as error:
                self._emit("budget_refused", message=str(error))
                raise
        started = time.monotonic()
        counting = WAITED.set(0.0)
        try:
            info = await self.inner.create(config)
        except BaseException as error:
            self._emit("create_failed", error=type(error).__name__, message=str(error))
            raise
        finally:
            waited = WAITED.get()
            WAITED.reset(counting)
        if self.ledger is not None:
            try:
                self.ledger.opened(self.name, info.id, per_second)
            except BaseException:  # never a sandbox that no one knows of: it goes, and the error is said
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self.inner.destroy(info.id)
                raise
        self._emit("created", sandbox=info.id, seconds=round(time.monotonic() - started, 6), waited=round(waited, 6))
        return info

    async def destroy(self, sandbox_id: str) -> bool:
        """Destroy; its seconds stop counting once it is gone (a failed destroy may have left it billing)."""
        try:
            existed = await self.inner.destroy(sandbox_id)
        except SandboxNotFoundError:
            self._closed(sandbox_id)
            raise
        self._closed(sandbox_id)
        return existed

    def _closed(self, sandbox_id: str) -> None:
        lived = self.ledger.closed(self.name, sandbox_id) if self.ledger is not None else None
        self._emit("destroyed", sandbox=sandbox_id, lived=None if lived is None else round(lived, 6))
