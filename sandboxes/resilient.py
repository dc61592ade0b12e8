"""ResilientProvider: a provider as the Manager hands it out.

Every call goes through the provider's ``CircuitBreaker`` (fail fast while
it is down) and, where repeating it is safe, through the ``RetryPolicy``.
The Manager wraps each provider once; ``Sandbox`` objects hold the wrapper,
so their calls follow the same policy with no code of their own.

Creation is where a retry can leak: a request that reached the provider and
lost its answer (dropped connection, timeout) may have made a sandbox.
Each creation therefore carries a label with a fresh token; after a failed
attempt the sandboxes carrying the token, other than the one returned, are
destroyed. Where the SDK itself resends a creation (Modal's does, after a
dropped connection) the Manager never sees the failure, so for those
providers the token is checked after every creation. Setup commands run after the sandbox exists, are never retried
(they are the user's commands), and a failure destroys the sandbox.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio

from .errors import ProviderError, RateLimitError, SetupFailed
from .models import Capabilities, Command, ExecutionResult, SandboxConfig, SandboxInfo
from .provider import SandboxProvider
from .resilience import CircuitBreaker, RetryPolicy, is_outage, is_transient
from .streaming import CommandStream

T = TypeVar("T")
log = logging.getLogger("sandboxes.resilience")

ATTEMPT_LABEL = "sandboxes_attempt"  # a token per creation, to find what a lost answer left behind
CLEANUP_SECONDS = 30.0  # the most a clean-up after a failed creation may take


def _rejected(error: BaseException) -> bool:
    """The provider refused the request without acting on it: safe to send again."""
    return isinstance(error, RateLimitError)


class ResilientProvider(SandboxProvider):
    """``inner`` behind a retry policy and a circuit breaker; same contract, same name."""

    def __init__(
        self,
        inner: SandboxProvider,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        sdk_resends_creation: bool = False,
    ) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # a ClassVar on providers; a wrapper takes its inner one's name
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker(inner.name)
        self.sdk_resends_creation = sdk_resends_creation

    def __repr__(self) -> str:
        return f"<ResilientProvider {self.inner!r} circuit={self.breaker.state}>"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # the inner provider's
        return self.inner.capabilities

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

    @staticmethod
    def _public(info: SandboxInfo) -> SandboxInfo:
        """The info without this wrapper's bookkeeping label."""
        if ATTEMPT_LABEL in info.labels:
            info.labels = {k: v for k, v in info.labels.items() if k != ATTEMPT_LABEL}
        return info

    # -- lifecycle -------------------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        """Create (retried), destroy whatever failed attempts left, then run the setup commands once."""
        token = uuid.uuid4().hex
        attempt_config = config.replace(labels={**config.labels, ATTEMPT_LABEL: token}, setup_commands=[])
        lost: list[BaseException] = []  # failures after which a sandbox may exist that we never heard of

        async def attempt() -> SandboxInfo:
            try:
                return await self._once(lambda: self.inner.create_sandbox(attempt_config))
            except BaseException as error:
                if not isinstance(error, Exception) or (is_transient(error) and not _rejected(error)):
                    lost.append(error)
                raise

        try:
            info = await self.retry.run(attempt, what=f"{self.name}: create a sandbox")
        except BaseException:
            if lost:
                await self._clean_up(token, keep=None)
            raise
        if lost or self.sdk_resends_creation:
            await self._clean_up(token, keep=info.id)
        try:
            for command in config.setup_commands:
                result = await self.execute_command(info.id, command)
                if not result.success:
                    raise SetupFailed(result, self.name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._destroy_quietly(info.id)
            raise
        return self._public(info)

    async def _clean_up(self, token: str, keep: str | None) -> None:
        """Destroy the sandboxes a creation's failed attempts may have made (best effort, bounded)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
            try:
                left = await self.inner.list_sandboxes({ATTEMPT_LABEL: token})
            except Exception as error:
                log.warning("%s: could not look for sandboxes a failed creation left behind: %s", self.name, error)
                return
            for info in left:
                if info.id != keep:
                    log.info("%s: destroying sandbox %s left by a failed creation attempt", self.name, info.id)
                    await self._destroy_quietly(info.id)

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        try:
            await self.inner.destroy_sandbox(sandbox_id)
        except Exception as error:
            log.warning("%s: could not destroy sandbox %s: %s", self.name, sandbox_id, error)

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        info = await self._retried(f"get sandbox {sandbox_id}", lambda: self.inner.get_sandbox(sandbox_id))
        return self._public(info) if info is not None else None

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        found = await self._retried("list sandboxes", lambda: self.inner.list_sandboxes(labels))
        return [self._public(info) for info in found]

    async def find_sandbox(self, labels: Mapping[str, str]) -> SandboxInfo | None:
        info = await self._retried("find a sandbox", lambda: self.inner.find_sandbox(labels))
        return self._public(info) if info is not None else None

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        """Retried, but never refused by an open circuit: a refused destroy would leak the sandbox."""

        return await self.retry.run(
            lambda: self._once(lambda: self.inner.destroy_sandbox(sandbox_id), guarded=False),
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
    async def execute_command(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecutionResult:
        """Run a command; retried only when the provider refused it (429), never once it may have run.

        A command is not idempotent (it may append to a file, charge a card,
        start a daemon): after a dropped connection or a 5xx we cannot know
        whether it ran, so running it again could run it twice. A 429 is a
        refusal before anything ran, so that one is waited out and resent.
        """
        return await self._retried(
            f"run a command in {sandbox_id}",
            lambda: self.inner.execute_command(sandbox_id, command, env=env, cwd=cwd, timeout=timeout, stdin=stdin),
            retry_if=_rejected,
            bounded=False,  # the command's own timeout bounds it
        )

    def stream_execution(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> CommandStream:
        """Stream a command; like ``execute_command``, resent only after a refusal before any output."""
        options = {"env": env, "cwd": cwd, "timeout": timeout, "stdin": stdin}
        return CommandStream(self._stream(sandbox_id, command, options), command=command)

    async def _stream(self, sandbox_id: str, command: Command, options: dict[str, Any]) -> AsyncIterator[Any]:
        attempt = 1
        while True:
            self.breaker.before_call()
            source = self.inner.stream_execution(sandbox_id, command, **options)
            flowing = False
            try:
                async for item in source:
                    if not flowing:
                        flowing = True
                        self.breaker.record_success()  # output is coming: the provider works
                    yield item
                status = getattr(source, "status", None)  # a CommandStream keeps the exit status
                if status is not None:
                    yield status
                if not flowing:
                    self.breaker.record_success()
                return
            except Exception as error:
                self._judge(error)
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
            log.info("%s: streaming a command was refused; retrying in %.2fs", self.name, wait)
            await self.retry.sleep(wait)
            attempt += 1

    def _judge(self, error: BaseException) -> None:
        if is_outage(error):
            self.breaker.record_failure(error)
        else:
            self.breaker.record_success()

    # -- files -----------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Retried: writing the same bytes twice leaves the same file."""
        await self._retried(f"write {path}", lambda: self.inner.write_file(sandbox_id, path, data))

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        return await self._retried(f"read {path}", lambda: self.inner.read_file(sandbox_id, path))
