"""The driver protocol: the wire of one provider, and nothing else.

A driver creates, finds, lists and destroys sandboxes, runs one argument
vector as a stream of events, and reads and writes files. It is the smallest
interface the providers share. Everything a caller would call policy (setup
commands, ``working_dir``, output caps and decoding, one exit code for a
timeout, long commands, input checks) is written once, in the engine
(``sandboxes.provider.SandboxProvider``), above the middlewares that wrap
drivers (retry and circuit breaker in ``resilient``, record and replay in
``cassette``).

Drivers import this module, ``models`` and ``errors``; nothing above them.
What only some drivers can do is an optional protocol, tied to a capability
in the provider's spec: ``TreeDownload`` (``tree_download``). A driver that
can tell a memory kill sets ``Exit.oom_killed`` (``oom_reporting``). A driver
with ``warm_python`` takes an argv that begins with ``WARM_PYTHON`` as the
Python command line after it, to be run from an interpreter that has
already started where it can (the local one forks a zygote); the engine and
the languages add it to every Python run, the engine takes it off for any
other driver (``cold_argv``), and cassettes leave it out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from .errors import ProviderError, RateLimitError
from .models import SandboxConfig, SandboxInfo

WARM_PYTHON = "sandboxes:warm-python"
"""First in an argv: run the Python command line that follows warm (capability ``warm_python``)."""

TOOLCHAINS = "toolchains"
"""A ``SandboxInfo.metadata`` key: the driver's word that every sandbox it made with that value has
the same tools, so a tool found in one is not looked for again in the next (``languages``)."""


def warm_marker(shared_sha256: str | None = None) -> str:
    """``WARM_PYTHON``; with ``shared_sha256``, also: the script is code that is the same in every run
    (the judge's harness, whose bytes hash to it), whose compiled code the interpreter may keep."""
    return WARM_PYTHON if shared_sha256 is None else f"{WARM_PYTHON}:{shared_sha256}"


def warm_of(argv: Sequence[str]) -> tuple[bool, str | None]:
    """(asked to run warm, the shared script's sha256 if any) of an argv."""
    if not argv or not (argv[0] == WARM_PYTHON or argv[0].startswith(WARM_PYTHON + ":")):
        return False, None
    return True, argv[0][len(WARM_PYTHON) + 1 :] or None


def cold_argv(argv: Sequence[str]) -> list[str]:
    """The command line itself, without the ``WARM_PYTHON`` marker (a cold start, or a cassette's record)."""
    return list(argv[1:]) if warm_of(argv)[0] else list(argv)


RESERVED_LABEL_PREFIX = "sandboxes."
"""Labels under this prefix are the library's own bookkeeping (settings, creation tokens, driver metadata):
stored with the sandbox, never shown in ``labels`` nor matched by ``find``, refused from callers."""


WIRE_METHODS = frozenset({"create", "get", "list", "destroy", "exec", "read_file", "write_file", "write_files", "download_tree", "health_check", "aclose"})
"""The protocol's methods: a middleware implements them itself and never forwards them by ``__getattr__``
(which forwards a driver's options), or a layer would be skipped without a sound."""


@dataclass(frozen=True)
class Output:
    """Bytes a command wrote to one of its streams."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How a command ended: the last event of ``Driver.exec``.

    ``timed_out`` says the driver killed it at its timeout (the engine reports
    exit code 124 then, whatever the driver saw). ``dropped`` names the streams
    of which a layer kept only the head and tail (a cassette past its cap).
    """

    exit_code: int
    timed_out: bool = False
    duration_ms: float | None = None
    oom_killed: bool = False
    dropped: tuple[str, ...] = ()
    cpu_ms: float | None = None
    """User plus system CPU time of the command and the processes it waited for, where the provider measures it."""


Event = Output | Exit


class Driver(Protocol):
    """One provider's wire. Errors: ``ProviderError`` for its own failures (mapped once, with ``map_errors``),
    ``SandboxNotFoundError`` for a sandbox that is gone, the ``OSError`` family for a sandbox's content."""

    name: str

    async def create(self, config: SandboxConfig) -> SandboxInfo:
        """Create a sandbox (no setup commands: the engine runs them). Its labels include the reserved ones."""

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        """The sandbox, or None when there is none."""

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        """Every live sandbox whose labels include ``labels``, all pages."""

    async def destroy(self, sandbox_id: str) -> bool:
        """Destroy it; True when it existed. Nothing of it keeps running."""

    def exec(
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
        """Run ``argv`` (no shell); yield ``Output`` as it comes, then one ``Exit``.

        At ``timeout`` seconds the command's whole process tree is killed and
        ``Exit.timed_out`` is set. A ``RateLimitError`` means the provider refused
        to start it (it may be sent again); once it has started, a driver raises
        anything else (``after_start``), since it may have run. ``output_limit`` is how many bytes of each
        stream the caller keeps (head and tail): a driver may drop the middle
        beyond it and say so with ``Exit.dropped``. Closing the iterator early
        ends the command.
        """
        ...

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        """A regular file's bytes; past ``limit`` bytes, ``OSError(EFBIG)`` (or more bytes, which the engine refuses)."""

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Write ``data`` to ``path``, creating parent directories."""

    async def health_check(self) -> bool:
        """True when the provider answers; creates nothing."""

    async def aclose(self) -> None:
        """Release clients and connections."""


class Layer:
    """A middleware over another driver that takes over some of its calls (create, destroy);
    every other call, and every option, is the inner driver's."""

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.name = inner.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.inner!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


@runtime_checkable
class TreeDownload(Protocol):
    """A driver that sends a directory as a tar stream itself (capability ``tree_download``)."""

    async def download_tree(self, sandbox_id: str, path: str, sink: Callable[[bytes], object], limit: int) -> None:
        """Feed a tar of the directory ``path`` to ``sink``; ``NotADirectoryError`` when it is not one."""


@runtime_checkable
class FilesUpload(Protocol):
    """A driver that writes several files in one exchange (capability ``files_upload``)."""

    async def write_files(self, sandbox_id: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Write each ``(path, data)`` in order, creating parent directories; the first that fails raises."""


ErrorMap = Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[BaseException], BaseException | None]]]
"""(exception types, translation): the first row whose types match translates; a translation that
returns None lets the error through unchanged."""


@contextlib.contextmanager
def map_errors(table: ErrorMap) -> Iterator[None]:
    """Translate an SDK's exceptions into this library's, from one declared table (httpx's ``map_exceptions``)."""
    try:
        yield
    except Exception as error:
        for kinds, translate in table:
            if isinstance(error, kinds):
                mapped = translate(error)
                if mapped is None or mapped is error:
                    raise
                raise mapped from None
        raise


@contextlib.contextmanager
def after_start() -> Iterator[None]:
    """Around what follows a command's start: a rate limit then is no refusal (it may have run), so never resent."""
    try:
        yield
    except RateLimitError as error:
        raise ProviderError(f"{error} (after the command had started, so it is not sent again)", provider=error.provider) from None
