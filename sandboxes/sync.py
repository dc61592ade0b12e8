"""The blocking facade: the same names as the async API, for synchronous code.

Calls run on one event loop in a background thread (started by an anyio
blocking portal, reached through ``Portal``), so a plain function, the pytest
fixture or the CLI can use sandboxes without an event loop of their own.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import concurrent.futures
import contextvars
import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar, overload

from anyio.from_thread import start_blocking_portal

from . import judging as _judge
from . import sandbox as _async
from .manager import Manager
from .models import Command, ExecutionResult, OutputChunk, SandboxConfig, SandboxInfo
from .provider import SandboxProvider
from .resilience import RetryPolicy
from .streaming import CommandStream

_T = TypeVar("_T")


class Portal:
    """The shared event loop, called from other threads: ``call(func, *args)`` runs
    ``func(*args)`` on it (awaited when it is a coroutine) and returns its result.

    One hop to the loop's thread and one back. anyio's ``BlockingPortal.call``
    makes two each way (it waits for its task to be spawned, then for its
    result): some 120 µs of CPU more per call, paid several times by every
    test that uses the sandbox fixture. The anyio portal still owns the loop
    and its thread, and stops them at exit. Each call runs in a new task, in
    a copy of the loop thread's context, as a portal's task does.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int, context: contextvars.Context) -> None:
        self._loop, self._thread, self._context = loop, thread, context

    @overload
    def call(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T: ...
    @overload
    def call(self, func: Callable[..., _T], *args: Any) -> _T: ...
    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        if threading.get_ident() == self._thread:
            raise RuntimeError("the blocking API cannot be called from its own event loop's thread: await the async API there")
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()
        task: list[asyncio.Task[Any]] = []

        def start() -> None:
            task.append(asyncio.ensure_future(_awaited(func, args)))
            task[0].add_done_callback(lambda ended: _settle(done, ended))

        self._loop.call_soon_threadsafe(start, context=self._context)
        try:
            return done.result()
        finally:
            if not done.done():  # interrupted while waiting (KeyboardInterrupt): the call is cancelled
                self._loop.call_soon_threadsafe(lambda: task and task[0].cancel())


async def _awaited(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    result = func(*args)
    return await result if inspect.isawaitable(result) else result


def _settle(done: concurrent.futures.Future[_T], task: asyncio.Task[_T]) -> None:
    if task.cancelled():
        done.set_exception(concurrent.futures.CancelledError())
    elif (error := task.exception()) is not None:
        done.set_exception(error)
    else:
        done.set_result(task.result())


_lock = threading.Lock()
_portal: Portal | None = None
_stack = ExitStack()


def portal() -> Portal:
    """The shared portal, started on first use and stopped at exit."""
    global _portal
    with _lock:
        if _portal is None:
            blocking = _stack.enter_context(start_blocking_portal())
            _portal = Portal(*blocking.call(_where))
            atexit.register(_stop)
        return _portal


def _where() -> tuple[asyncio.AbstractEventLoop, int, contextvars.Context]:
    """Run on the loop: the loop, its thread, and that thread's context."""
    return asyncio.get_running_loop(), threading.get_ident(), contextvars.copy_context()


def _stop() -> None:
    global _portal
    with _lock:
        _portal = None
        _stack.close()


def _reset_after_fork() -> None:  # a forked child cannot use the parent's loop thread
    global _portal, _lock, _stack
    _portal, _lock, _stack = None, threading.Lock(), ExitStack()


os.register_at_fork(after_in_child=_reset_after_fork)


_F = TypeVar("_F", bound=Callable[..., Any])


def _twin(original: Callable[..., Any]) -> Callable[[_F], _F]:
    """The blocking method takes its async twin's docstring, so ``help()`` and editors show it (the signature is written out)."""

    def mark(method: _F) -> _F:
        method.__doc__ = original.__doc__
        return method

    return mark


class Sandbox:
    """Blocking twin of :class:`sandboxes.Sandbox`."""

    def __init__(self, inner: _async.Sandbox) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner)

    @property
    def id(self) -> str:
        return self._inner.id

    @property
    def provider(self) -> str:
        return self._inner.provider

    @property
    def labels(self) -> dict[str, str]:
        return self._inner.labels

    @property
    def info(self) -> SandboxInfo:
        return self._inner.info

    @property
    def async_sandbox(self) -> _async.Sandbox:
        return self._inner

    @classmethod
    @_twin(_async.Sandbox.create)
    def create(
        cls,
        provider: str | None = None,
        *,
        fallback: Sequence[str] | bool | None = None,
        config: SandboxConfig | None = None,
        **options: Any,
    ) -> Sandbox:
        creation = _async.Sandbox.create(provider, fallback=fallback, config=config, **options)
        return cls(portal().call(lambda: creation))

    @classmethod
    @_twin(_async.Sandbox.get)
    def get(cls, sandbox_id: str, provider: str | None = None) -> Sandbox:
        return cls(portal().call(_async.Sandbox.get, sandbox_id, provider))

    @classmethod
    @_twin(_async.Sandbox.find)
    def find(cls, labels: Mapping[str, str], provider: str | None = None) -> Sandbox | None:
        found = portal().call(_async.Sandbox.find, labels, provider)
        return cls(found) if found else None

    @classmethod
    @_twin(_async.Sandbox.get_or_create)
    def get_or_create(cls, labels: Mapping[str, str], provider: str | None = None, **options: Any) -> Sandbox:
        return cls(portal().call(lambda: _async.Sandbox.get_or_create(labels, provider, **options)))

    @classmethod
    @_twin(_async.Sandbox.list)
    def list(cls, labels: Mapping[str, str] | None = None, provider: str | None = None) -> builtins.list[SandboxInfo]:
        return portal().call(_async.Sandbox.list, labels, provider)

    @classmethod
    @_twin(_async.Sandbox.configure)
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
        return _async.Sandbox.configure(
            default_provider=default_provider,
            providers=providers,
            retry=retry,
            circuit_breaker=circuit_breaker,
            limits=limits,
            prices=prices,
            **provider_options,
        )

    @_twin(_async.Sandbox.execute)
    def execute(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecutionResult:
        return portal().call(lambda: self._inner.execute(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin))

    @_twin(_async.Sandbox.execute_many)
    def execute_many(self, commands: Sequence[Command], *, stop_on_error: bool = False, **options: Any) -> builtins.list[ExecutionResult]:
        return portal().call(lambda: self._inner.execute_many(commands, stop_on_error=stop_on_error, **options))

    @_twin(_async.Sandbox.stream)
    def stream(
        self,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> BlockingStream:
        return BlockingStream(self._inner.stream(command, env=env, cwd=cwd, timeout=timeout, stdin=stdin))

    @_twin(_async.Sandbox.write_file)
    def write_file(self, path: str | os.PathLike[str], data: bytes | str) -> None:
        portal().call(self._inner.write_file, path, data)

    @_twin(_async.Sandbox.write_files)
    def write_files(self, files: Mapping[str, bytes | str]) -> None:
        portal().call(self._inner.write_files, files)

    @_twin(_async.Sandbox.read_file)
    def read_file(self, path: str | os.PathLike[str]) -> bytes:
        return portal().call(self._inner.read_file, path)

    @_twin(_async.Sandbox.upload)
    def upload(self, local_path: str | os.PathLike[str], remote_path: str | os.PathLike[str]) -> None:
        portal().call(self._inner.upload, local_path, remote_path)

    @_twin(_async.Sandbox.download)
    def download(self, remote_path: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
        portal().call(self._inner.download, remote_path, local_path)

    @_twin(_async.Sandbox.run_code)
    def run_code(
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
        return portal().call(lambda: self._inner.run_code(code, language, stdin=stdin, files=files, args=args, timeout=timeout, deps=deps))

    @_twin(_async.Sandbox.destroy)
    def destroy(self) -> None:
        portal().call(self._inner.destroy)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class BlockingStream(Iterator[OutputChunk]):
    """Blocking twin of :class:`sandboxes.streaming.CommandStream`."""

    def __init__(self, stream: CommandStream) -> None:
        self._stream = stream
        self._chunks = _pull(stream)

    def __repr__(self) -> str:
        return repr(self._stream)

    def __iter__(self) -> BlockingStream:
        return self

    def __next__(self) -> OutputChunk:
        return next(self._chunks)

    def close(self) -> None:
        """Stop reading; the command is ended if it still runs."""
        self._chunks.close()

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self) -> ExecutionResult:
        """Read the rest of the output (kept, not shown) and return the result."""
        for _ in self:
            pass
        return self.result

    @property
    def ended(self) -> bool:
        return self._stream.ended

    @property
    def exit_code(self) -> int | None:
        return self._stream.exit_code

    @property
    def timed_out(self) -> bool | None:
        return self._stream.timed_out

    @property
    def success(self) -> bool:
        return self._stream.success

    @property
    def result(self) -> ExecutionResult:
        return self._stream.result


def _pull(stream: CommandStream) -> Generator[OutputChunk, None, None]:
    """The chunks, one portal call each.

    A generator that holds the stream but not its BlockingStream (no cycle):
    dropping the BlockingStream part-way runs this finally at once, which
    ends the command.
    """
    try:
        while True:
            try:
                yield portal().call(stream.__anext__)
            except StopAsyncIteration:
                return
    finally:
        if not stream.ended and _portal is not None:
            portal().call(stream.aclose)


@_twin(_async.run)
def run(command: Command, provider: str | None = None, **options: Any) -> ExecutionResult:
    return portal().call(lambda: _async.run(command, provider, **options))


@_twin(_async.run_many)
def run_many(commands: Sequence[Command], provider: str | None = None, **options: Any) -> list[ExecutionResult]:
    return portal().call(lambda: _async.run_many(commands, provider, **options))


@_twin(_judge.judge)
def judge(
    sandbox: Sandbox,
    program: str,
    language: str,
    *,
    tests: str | None = None,
    stdin: str | bytes | None = None,
    expected_stdout: str | None = None,
    cases: Sequence[tuple[str | bytes, str]] | None = None,
    compare: _judge.Compare = "exact",
    timeout: float = _judge.DEFAULT_TIMEOUT,
    files: Mapping[str, str | bytes] | None = None,
    edition: str | None = None,
) -> _judge.Judgement:
    return portal().call(
        lambda: _judge.judge(
            sandbox.async_sandbox, program, language, tests=tests, stdin=stdin, expected_stdout=expected_stdout,
            cases=cases, compare=compare, timeout=timeout, files=files, edition=edition,
        )
    )  # fmt: skip
