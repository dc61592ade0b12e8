"""GovernedDriver: a middleware that creates a sandbox only when the provider's governor allows it.

It sits outside the ``ResilientDriver``: a creation first takes its slots
from the ``Governor`` (shared by every process on the machine), then goes
through the retry policy. A provider's "slow down" (a 429, or a resource
limit reached) is not retried by the policy but comes back here: the
governor lowers the shared concurrency and pauses every process for the
Retry-After, and the creation waits for a slot again. Waiting is never an
error; only waiting past ``acquire_timeout`` is (``AcquireTimeout``).
A sandbox's alive slot is held until this process destroys it.
"""

from __future__ import annotations

import contextvars
import time

from .driver import Driver, Layer
from .errors import RateLimitError, SandboxNotFoundError
from .governor import AcquireTimeout, Governor
from .models import SandboxConfig, SandboxInfo
from .trace import Trace

WAITED: contextvars.ContextVar[float] = contextvars.ContextVar("sandboxes_waited", default=0.0)
"""Seconds the creation in progress (in this task) has waited for its slots: read by the layer above."""
WAIT_TRACED = 0.001
"""A wait for a slot shorter than this is no wait (the files' own cost): not traced."""


class GovernedDriver(Layer):
    """``inner`` (a ``ResilientDriver`` that leaves rate limits to its caller) behind ``governor``."""

    def __init__(self, inner: Driver, governor: Governor, trace: Trace | None = None) -> None:
        super().__init__(inner)
        self.governor = governor
        self.trace = trace

    async def create(self, config: SandboxConfig) -> SandboxInfo:
        """Create once the governor gives a slot; a refusal for load gives it back and waits again."""
        deadline = time.monotonic() + self.governor.limits.acquire_timeout
        refused: RateLimitError | None = None
        while True:
            asked = time.monotonic()
            try:
                ticket = await self.governor.acquire(deadline)
                waited = time.monotonic() - asked
                WAITED.set(WAITED.get() + waited)
                if self.trace is not None and waited >= WAIT_TRACED:
                    self.trace.emit("waited", self.name, seconds=round(waited, 6))
            except AcquireTimeout:
                if refused is None:
                    raise
                raise AcquireTimeout(
                    f"{self.name} kept refusing new sandboxes for {self.governor.limits.acquire_timeout:g} s (the last time: {refused}); "
                    "lower the concurrency (--sandbox-max-concurrency, limits=) or raise acquire_timeout",
                    provider=self.name,
                ) from refused
            try:
                info = await self.inner.create(config)
            except RateLimitError as error:
                ticket.release()
                self.governor.throttled(error.retry_after)
                if self.trace is not None:
                    self.trace.emit("throttled", self.name, retry_after=error.retry_after, message=str(error))
                refused = error
                continue
            except BaseException:
                ticket.release()
                raise
            self.governor.keep(info.id, ticket)
            self.governor.succeeded()
            return info

    async def destroy(self, sandbox_id: str) -> bool:
        """Destroy; the slot is free once the sandbox is gone (kept while a failed destroy may have left it)."""
        try:
            existed = await self.inner.destroy(sandbox_id)
        except SandboxNotFoundError:
            self.governor.release(sandbox_id)
            raise
        self.governor.release(sandbox_id)
        return existed
