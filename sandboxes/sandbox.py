"""Sandbox: the async handle most code uses, plus run() and run_many()."""

from __future__ import annotations

import builtins
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio

from . import specs
from .errors import SandboxNotFoundError
from .manager import Manager, current_manager, get_manager, reset_manager
from .models import Command, ExecutionResult, SandboxConfig, SandboxInfo
from .provider import SandboxProvider
from .resilience import RetryPolicy
from .streaming import CommandStream

_CONFIG_KEYS = frozenset(inspect.signature(SandboxConfig).parameters)


def make_config(config: SandboxConfig | None = None, **options: Any) -> SandboxConfig:
    """A SandboxConfig from keyword options, on top of ``config`` when given."""
    unknown = set(options) - _CONFIG_KEYS
    if unknown:
        raise TypeError(f"unknown sandbox option(s): {', '.join(sorted(unknown))}; valid: {', '.join(sorted(_CONFIG_KEYS))}")
    given = {k: v for k, v in options.items() if v is not None}
    if config is None:
        return SandboxConfig(**given)
    return config.replace(**given)


class Sandbox:
    """One sandbox on one provider.

    ``await Sandbox.create()`` gives a handle you destroy yourself;
    ``async with Sandbox.create() as sb`` destroys it on exit, also on error.
    """

    def __init__(self, provider: SandboxProvider, info: SandboxInfo, *, command_timeout: float | None = None) -> None:
        self._provider = provider
        self.info = info
        self.command_timeout = command_timeout
        self._destroyed = False

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} on {self.provider}>"

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def provider(self) -> str:
        return self._provider.name

    @property
    def _provider_name(self) -> str:  # the reference library's name
        return self._provider.name

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.info.labels)

    @property
    def provider_instance(self) -> SandboxProvider:
        return self._provider

    # -- class-level entry points ---------------------------------------------
    @classmethod
    def _ensure_manager(cls) -> Manager:
        return get_manager()

    @classmethod
    def configure(
        cls,
        *,
        default_provider: str | None = None,
        providers: Sequence[SandboxProvider] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | bool | None = None,
        circuit_breaker: Mapping[str, Any] | None = None,
        limits: Mapping[str, Any] | None = None,
        prices: Mapping[str, float] | None = None,
        **provider_options: Any,
    ) -> Manager:
        """Set the default provider, register instances, pass provider options, tune resilience.

        ``local={"memory_mb": 1024}`` passes options to a provider by name;
        cloud credentials such as ``e2b_api_key=...`` are handed to that provider.
        ``retry=RetryPolicy(max_attempts=5)`` (or a dict of its fields, or
        ``False`` for none) and ``circuit_breaker={"failure_threshold": 3,
        "reset_timeout": 10}`` set how every provider's calls are retried and
        when a provider that keeps failing is failed fast; they apply to the
        sandboxes created from then on. ``limits={"alive": 6}`` (every cloud
        provider) or ``limits={"e2b": {"alive": 6, "acquire_timeout": 300}}``
        override the published limits that every process here keeps together
        (``sandboxes.governor``). ``prices={"e2b": 0.00003}`` (USD per
        sandbox-second) replaces the published price in the cost estimates and
        dollar budgets of runs (``sandboxes.budget``).
        """
        manager = cls._ensure_manager()
        if limits is not None:
            manager.set_limits(limits)
        if prices is not None:
            manager.set_prices(prices)
        if retry is not None or circuit_breaker is not None:
            manager.set_resilience(retry=retry, circuit_breaker=circuit_breaker)
        if default_provider is not None:
            manager.default_provider = default_provider
        for provider in providers or ():
            manager.register(provider)
        for key, value in provider_options.items():
            if isinstance(value, Mapping):
                name, options = key.removesuffix("_config"), dict(value)
            else:
                name, _, option = key.partition("_")
                options = {option: value}
            if name not in specs.specs():
                raise TypeError(f"unknown configure option {key!r}: name a provider ({', '.join(specs.names())})")
            manager.provider_options.setdefault(name, {}).update(options)
            manager.retire(name)  # rebuilt with the new options on next use; the old one is closed with the manager
        return manager

    @classmethod
    def create(
        cls,
        provider: str | None = None,
        *,
        fallback: Sequence[str] | bool | None = None,
        config: SandboxConfig | None = None,
        **options: Any,
    ) -> _Creation:
        """Create a sandbox: ``await`` it, or use it as ``async with``."""
        return _Creation(cls, provider, fallback, make_config(config, **options))

    @classmethod
    async def _create(cls, provider: str | None, fallback: Sequence[str] | bool | None, config: SandboxConfig) -> Sandbox:
        instance, info = await cls._ensure_manager().create_sandbox(config, provider, fallback)
        return cls(instance, info, command_timeout=config.command_timeout)

    @classmethod
    async def get(cls, sandbox_id: str, provider: str | None = None) -> Sandbox:
        """Attach to an existing sandbox by id (from another process, say)."""
        instance = cls._ensure_manager().get_provider(cls._ensure_manager().resolve(provider))
        info = await instance.get_sandbox(sandbox_id)
        if info is None:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider {instance.name!r}")
        return cls(instance, info)

    @classmethod
    async def find(cls, labels: Mapping[str, str], provider: str | None = None) -> Sandbox | None:
        """The oldest live sandbox carrying all these labels, or None."""
        instance = cls._ensure_manager().get_provider(cls._ensure_manager().resolve(provider))
        info = await instance.find_sandbox(labels)
        return cls(instance, info) if info else None

    @classmethod
    async def get_or_create(cls, labels: Mapping[str, str], provider: str | None = None, **options: Any) -> Sandbox:
        """Reuse the sandbox with these labels, or create one that carries them."""
        found = await cls.find(labels, provider)
        if found is not None:
            return found
        return await cls.create(provider, labels=dict(labels), **options)

    @classmethod
    async def list(cls, labels: Mapping[str, str] | None = None, provider: str | None = None) -> list[SandboxInfo]:
        """Every live sandbox on the provider whose labels include ``labels``."""
        instance = cls._ensure_manager().get_provider(cls._ensure_manager().resolve(provider))
        return await instance.list_sandboxes(labels)

    # -- using it -------------------------------------------------------------------
    async def execute(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecutionResult:
        """Run a command to its end. A string goes through ``sh -c``; a list runs as is."""
        return await self._provider.execute_command(
            self.id, command, env=env, cwd=cwd, timeout=timeout if timeout is not None else self.command_timeout, stdin=stdin
        )

    async def execute_many(self, commands: Sequence[Command], *, stop_on_error: bool = False, **options: Any) -> builtins.list[ExecutionResult]:
        """Run commands one after another in this sandbox."""
        results: builtins.list[ExecutionResult] = []
        for command in commands:
            result = await self.execute(command, **options)
            results.append(result)
            if stop_on_error and not result.success:
                break
        return results

    def stream(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> CommandStream:
        """Output chunks as the command produces them (each knows its stream).

        After the loop the stream knows how the command ended:
        ``stream = sb.stream(cmd); async for chunk in stream: ...; stream.exit_code``
        (also ``timed_out`` and ``result``).
        """
        return self._provider.stream_execution(
            self.id, command, env=env, cwd=cwd, timeout=timeout if timeout is not None else self.command_timeout, stdin=stdin
        )

    async def run_code(
        self,
        code: str | bytes,
        language: str,
        *,
        stdin: bytes | str | None = None,
        files: Mapping[str, str | bytes] | None = None,
        args: Sequence[str] = (),
        timeout: float | None = None,
        deps: bool = False,
    ) -> ExecutionResult:
        """Build (when the language needs it) and run source code; see ``sandboxes.languages``."""
        from .languages import run_code

        return await run_code(self, code, language, stdin=stdin, files=files, args=args, timeout=timeout, deps=deps)

    async def write_file(self, path: str | os.PathLike[str], data: bytes | str) -> None:
        """Write bytes (or text, as UTF-8) to ``path``, creating parent directories."""
        await self._provider.write_file(self.id, path, data)

    async def write_files(self, files: Mapping[str, bytes | str]) -> None:
        """Write several files (path -> bytes, or text as UTF-8): in one exchange where the provider can."""
        await self._provider.write_files(self.id, files)

    async def read_file(self, path: str | os.PathLike[str]) -> bytes:
        """A regular file's bytes (at most the provider's ``max_file_bytes``)."""
        return await self._provider.read_file(self.id, path)

    async def upload(self, local_path: str | os.PathLike[str], remote_path: str | os.PathLike[str]) -> None:
        """Copy a local file or directory into the sandbox."""
        await self._provider.upload_file(self.id, local_path, remote_path)

    async def download(self, remote_path: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
        """Copy a file or directory out of the sandbox."""
        await self._provider.download_file(self.id, remote_path, local_path)

    async def destroy(self) -> None:
        """Destroy the sandbox; safe to call twice, and again after a failed attempt.

        The handle counts as destroyed only once the provider has destroyed it.
        """
        if not self._destroyed:
            await self._provider.destroy_sandbox(self.id)
            self._destroyed = True

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.destroy()


class _Creation:
    """What ``Sandbox.create()`` returns: awaitable, and an async context manager."""

    def __init__(self, cls: type[Sandbox], provider: str | None, fallback: Sequence[str] | bool | None, config: SandboxConfig) -> None:
        self._args = (provider, fallback, config)
        self._cls = cls
        self._sandbox: Sandbox | None = None

    def __await__(self) -> Generator[Any, None, Sandbox]:
        return self._cls._create(*self._args).__await__()

    async def __aenter__(self) -> Sandbox:
        self._sandbox = await self._cls._create(*self._args)
        return self._sandbox

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._sandbox is not None:
            with anyio.CancelScope(shield=True):
                await self._sandbox.destroy()


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[Manager]:
    """``async with sandboxes.session():`` closes every provider client it used on exit.

    Cloud SDKs keep HTTP sessions open; without this, an asyncio program that
    used one sees "Unclosed client session" at exit. The next call after the
    block starts afresh.
    """
    manager = Sandbox._ensure_manager()
    try:
        yield manager
    finally:
        with anyio.CancelScope(shield=True):
            await manager.aclose()
        if current_manager() is manager:
            reset_manager()


async def run(command: Command, provider: str | None = None, **options: Any) -> ExecutionResult:
    """Run one command in a fresh sandbox that is destroyed afterwards."""
    exec_options = {k: options.pop(k) for k in ("cwd", "stdin", "timeout") if k in options}
    async with Sandbox.create(provider, **options) as sandbox:
        return await sandbox.execute(command, **exec_options)


async def run_many(commands: Sequence[Command], provider: str | None = None, **options: Any) -> list[ExecutionResult]:
    """Run commands in order in one fresh sandbox that is destroyed afterwards."""
    async with Sandbox.create(provider, **options) as sandbox:
        return await sandbox.execute_many(commands)
