"""ResilientDriver: a middleware that puts a driver behind a retry policy and a circuit breaker.

Every call goes through the provider's ``CircuitBreaker`` (fail fast while
it is down) and, where repeating it is safe, through the ``RetryPolicy``.
The Manager wraps each provider's driver once; every sandbox on it follows
the same policy with no code of its own.

Creation is where a retry can leak: a request that reached the provider and
lost its answer (dropped connection, timeout) may have made a sandbox.
Each creation therefore carries a reserved label with a fresh token. After a
failed attempt, before the retry (so that a stray never takes the retry's
place under the account's cap), the sandboxes carrying the token are
destroyed, and once more after the creation, all but the one returned. A driver
whose SDK resends a creation by itself is told to send it once
(``caller_retries_creations``); while it may still have resent one (its
``resends_creation``), the failure is hidden, so the token is checked after.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from .driver import RESERVED_LABEL_PREFIX, WIRE_METHODS, Driver, Event, FilesUpload, TreeDownload
from .errors import ProviderError, RateLimitError, SandboxNotFoundError
from .models import SandboxConfig, SandboxInfo
from .resilience import CircuitBreaker, RetryPolicy, is_outage, is_transient
from .trace import Trace

T = TypeVar("T")
log = logging.getLogger("sandboxes.resilience")

ATTEMPT_LABEL = RESERVED_LABEL_PREFIX + "attempt"  # a token per creation, to find what a lost answer left behind
CLEANUP_SECONDS = 30.0  # the most a clean-up after a failed creation may take


def _untagged(info: SandboxInfo) -> SandboxInfo:
    """The info without this middleware's creation token (random: it would make every cassette differ)."""
    info.labels.pop(ATTEMPT_LABEL, None)
    return info


def _rejected(error: BaseException) -> bool:
    """The provider refused the request without acting on it: safe to send again."""
    return isinstance(error, RateLimitError)


class ResilientDriver:
    """``inner`` behind a retry policy and a circuit breaker; the same driver protocol."""

    def __init__(
        self,
        inner: Driver,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        governed: bool = False,
        trace: Trace | None = None,
    ) -> None:
        self.inner = inner
        self.trace = trace  # where a stray's destroy is told (``stray_destroyed``)
        self.name = inner.name
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(inner.name)
        self.governed = governed
        """A ``GovernedDriver`` is outside: a creation refused for load goes back to it, not retried here."""
        handover = getattr(inner, "caller_retries_creations", None)
        if handover is not None:  # this layer sees each failed creation, and clears what it left
            handover()

    def __repr__(self) -> str:
        return f"<ResilientDriver {self.inner!r} circuit={self.breaker.state}>"

    def __getattr__(self, name: str) -> Any:  # the driver's options and descriptions
        if name.startswith("__") or name == "inner" or name in WIRE_METHODS:
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- plumbing ------------------------------------------------------------------------
    async def _once(self, function: Callable[[], Awaitable[T]], *, bounded: bool = True, guarded: bool = True) -> T:
        """One attempt through the breaker (unless not ``guarded``); a control-plane call that hangs past ``attempt_timeout`` is lost."""
        limit = self.retry.attempt_timeout if bounded else None
        with self.breaker.guard() if guarded else contextlib.nullcontext():
            if limit is None:
                return await function()
            with anyio.move_on_after(limit):
                return await function()
            raise ProviderError(f"{self.name} did not answer within {limit:g}s", provider=self.name)

    async def _retried(
        self,
        what: str,
        function: Callable[[], Awaitable[T]],
        retry_if: Callable[[BaseException], bool] = is_transient,
        *,
        bounded: bool = True,
    ) -> T:
        return await self.retry.run(lambda: self._once(function, bounded=bounded), retry_if=retry_if, what=f"{self.name}: {what}")

    # -- lifecycle -------------------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        """Create (retried), then destroy whatever failed attempts left."""
        token = uuid.uuid4().hex
        attempt_config = config.replace(labels={**config.labels, ATTEMPT_LABEL: token})
        lost: list[BaseException] = []  # failures after which a sandbox may exist that we never heard of

        async def attempt() -> SandboxInfo:
            try:
                return await self._once(lambda: self.inner.create(attempt_config))
            except BaseException as error:
                if not isinstance(error, Exception) or (is_transient(error) and not _rejected(error)):
                    lost.append(error)
                    # Before the retry: a stray would take a place of the account's cap from the retry.
                    await self._clean_up(token, keep=None)
                raise

        def retried(error: BaseException) -> bool:
            return is_transient(error) and not (self.governed and _rejected(error))

        info = await self.retry.run(attempt, retry_if=retried, what=f"{self.name}: create a sandbox")
        if lost or getattr(self.inner, "resends_creation", False):  # again: a lost attempt's sandbox may show in a list only later
            await self._clean_up(token, keep=info.id)
        return _untagged(info)

    async def _clean_up(self, token: str, keep: str | None) -> None:
        """Destroy the sandboxes a creation's failed attempts may have made (best effort, bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
            try:
                left = await self.retry.run(  # like destroy: never refused by the circuit its failures may have opened
                    lambda: self._once(lambda: self.inner.list({ATTEMPT_LABEL: token}), guarded=False),
                    what=f"{self.name}: look for what a failed creation left",
                )
            except Exception as error:
                log.warning("%s: could not look for sandboxes a failed creation left behind: %s", self.name, error)
                return
            for info in left:
                if info.id != keep:
                    log.info("%s: destroying sandbox %s left by a failed creation attempt", self.name, info.id)
                    if self.trace is not None:
                        self.trace.emit("stray_destroyed", self.name, sandbox=info.id)
                    try:
                        await self.destroy(info.id)
                    except SandboxNotFoundError:
                        pass  # gone meanwhile
                    except Exception as error:
                        log.warning("%s: could not destroy sandbox %s: %s", self.name, info.id, error)

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        info = await self._retried(f"get sandbox {sandbox_id}", lambda: self.inner.get(sandbox_id))
        return _untagged(info) if info is not None else None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        return [_untagged(info) for info in await self._retried("list sandboxes", lambda: self.inner.list(labels))]

    async def destroy(self, sandbox_id: str) -> bool:
        """Retried, but never refused by an open circuit: a refused destroy would leak the sandbox."""
        return await self.retry.run(
            lambda: self._once(lambda: self.inner.destroy(sandbox_id), guarded=False),
            what=f"{self.name}: destroy sandbox {sandbox_id}",
        )

    async def health_check(self) -> bool:
        """False at once while the circuit is open; otherwise the provider's own check, retried."""
        if self.breaker.state == "open":
            return False
        return await self._retried("check health", self.inner.health_check)

    async def aclose(self) -> None:
        await self.inner.aclose()

    # -- commands --------------------------------------------------------------------------
    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stdin: bytes | None,
        timeout: float,
        output_limit: int,
    ) -> AsyncIterator[Event]:
        """Run a command; sent again only when the provider refused it (429) before any output.

        A command is not idempotent (it may append to a file, charge a card,
        start a daemon): after a dropped connection or a 5xx we cannot know
        whether it ran, so running it again could run it twice. A 429 is a
        refusal before anything ran, so that one is waited out and resent.
        """
        attempt = 1
        while True:
            self.breaker.before_call()
            source = self.inner.exec(sandbox_id, argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, output_limit=output_limit)
            flowing = False
            try:
                async for event in source:
                    if not flowing:
                        flowing = True
                        self.breaker.record_success()  # the provider answers: it works
                    yield event
                if not flowing:
                    self.breaker.record_success()
                return
            except Exception as error:
                if is_outage(error):
                    self.breaker.record_failure(error)
                else:
                    self.breaker.record_success()
                if flowing or not _rejected(error) or attempt >= self.retry.max_attempts:
                    raise
                wait = self.retry.delay(attempt, error)
                if wait is None:
                    raise
            except BaseException:
                self.breaker.record_abandoned()
                raise
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            log.info("%s: a command was refused; retrying in %.2fs", self.name, wait)
            await self.retry.sleep(wait)
            attempt += 1

    # -- files -----------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Retried: writing the same bytes twice leaves the same file."""
        await self._retried(f"write {path}", lambda: self.inner.write_file(sandbox_id, path, data))

    async def write_files(self, sandbox_id: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Retried as one, as ``write_file``: the same files twice are the same files."""
        inner = self.inner
        if not isinstance(inner, FilesUpload):
            for path, data in files:
                await self.write_file(sandbox_id, path, data)
            return
        await self._retried(f"write {len(files)} files", lambda: inner.write_files(sandbox_id, files))

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        return await self._retried(f"read {path}", lambda: self.inner.read_file(sandbox_id, path, limit))

    async def download_tree(self, sandbox_id: str, path: str, sink: Callable[[bytes], object], limit: int) -> None:
        """The inner driver's tar stream, through the breaker; not retried (the sink has had part of it)."""
        inner = self.inner
        if not isinstance(inner, TreeDownload):
            raise NotADirectoryError(path)  # the engine then takes the generic path
        await self._once(lambda: inner.download_tree(sandbox_id, path, sink, limit), bounded=False)
