"""SandboxProvider: the contract every provider fulfils.

Low-level names are those of the reference library (``create_sandbox``,
``execute_command``, ...), which users already call. Everything is async
(anyio-compatible). Upload and download of local paths are built here, once,
on top of ``write_file``/``read_file``/``execute_command``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import secrets
import shlex
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import ClassVar

import anyio

from ._extract import extract_tar, process_umask
from .errors import SandboxNotFoundError, UnsupportedOperation
from .models import Capabilities, Command, ExecutionResult, SandboxConfig, SandboxInfo
from .streaming import StreamItem, streaming


class SandboxProvider(ABC):
    """Abstract base of all providers."""

    name: ClassVar[str] = "abstract"
    capabilities: Capabilities = Capabilities()
    max_file_bytes: int = 1 << 30
    """Most bytes ``download_file`` brings onto the host at once (a file, or a directory's archive)."""

    # -- lifecycle -----------------------------------------------------------
    @abstractmethod
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        """Create a sandbox; a half-created one is destroyed before raising."""

    @abstractmethod
    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        """The sandbox with that id, or None when there is none."""

    @abstractmethod
    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        """Every live sandbox whose labels include ``labels`` (all pages)."""

    @abstractmethod
    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        """Destroy it; True when it existed. Nothing of it keeps running."""

    async def find_sandbox(self, labels: Mapping[str, str]) -> SandboxInfo | None:
        """The oldest live sandbox carrying all ``labels``, or None."""
        found = await self.list_sandboxes(labels)
        found.sort(key=lambda info: (info.created_at or 0.0, info.id))
        return found[0] if found else None

    async def get_or_create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        """Reuse a sandbox with the config's labels, or create one."""
        if config.labels:
            existing = await self.find_sandbox(config.labels)
            if existing is not None:
                return existing
        return await self.create_sandbox(config)

    async def health_check(self) -> bool:
        """True when the provider answers; must not create anything."""
        return True

    async def aclose(self) -> None:  # noqa: B027 - optional: a provider with nothing to close does not override it
        """Release clients and connections held by the provider."""

    # -- commands ------------------------------------------------------------
    @abstractmethod
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
        """Run a command to the end; a non-zero exit is a result."""

    @streaming
    async def stream_execution(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Output as the command produces it, then how it ended.

        An implementation is an async generator decorated with ``@streaming``
        (``sandboxes.streaming``): it yields ``OutputChunk``s and, last, one
        ``ExitStatus``; callers get a ``CommandStream`` that iterates the
        chunks and then knows ``exit_code`` and ``timed_out``.
        """
        raise UnsupportedOperation(self.name, "streaming")
        yield  # pragma: no cover - makes this an async generator

    # -- files ---------------------------------------------------------------
    @abstractmethod
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Write ``data`` to ``path``, creating parent directories."""

    @abstractmethod
    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        """The bytes of ``path``; FileNotFoundError/IsADirectoryError as Python does."""

    async def upload_file(self, sandbox_id: str, local_path: str | os.PathLike[str], remote_path: str) -> None:
        """Copy a local file or directory tree into the sandbox."""
        local = Path(local_path)
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    relative = path.relative_to(local).as_posix()
                    await self.write_file(sandbox_id, str(PurePosixPath(remote_path) / relative), path.read_bytes())
        elif local.is_file():
            await self.write_file(sandbox_id, remote_path, local.read_bytes())
        else:
            raise FileNotFoundError(f"no such local file or directory: {local}")

    async def download_file(self, sandbox_id: str, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file or directory tree out of the sandbox.

        Nothing the sandbox sends is trusted (see ``sandboxes._extract``): only
        regular files and directories are written, with modes 0o644/0o755 less
        the umask, owned by the caller, never through a symbolic link; other
        members are skipped (logged at debug level on the "sandboxes" logger).
        More than ``max_file_bytes`` raises ``OSError(EFBIG)``.
        """
        local = Path(local_path)
        probe = await self.execute_command(sandbox_id, ["test", "-d", remote_path])
        if probe.exit_code != 0:
            data = await self.read_file(sandbox_id, remote_path)
            if len(data) > self.max_file_bytes:
                raise _too_big(remote_path, len(data), self.max_file_bytes)
            local.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(_write_new_file, local, data)
            return
        archive = f"/tmp/.sandboxes-download-{secrets.token_hex(16)}.tar"
        packed = await self.execute_command(sandbox_id, ["tar", "-cf", archive, "-C", remote_path, "."])
        if packed.exit_code != 0:
            raise PermissionError(f"cannot read directory {remote_path} in the sandbox: {packed.stderr.strip()}")
        try:
            data = await self.read_file(sandbox_id, archive)
        finally:
            await self.execute_command(sandbox_id, ["rm", "-f", archive])
        if len(data) > self.max_file_bytes:
            raise _too_big(remote_path, len(data), self.max_file_bytes)
        await anyio.to_thread.run_sync(functools.partial(extract_tar, io.BytesIO(data), local, max_bytes=self.max_file_bytes))

    # -- helpers for subclasses ------------------------------------------------
    def _not_found(self, sandbox_id: str) -> SandboxNotFoundError:
        return SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider {self.name!r}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _too_big(remote_path: str, size: int, cap: int) -> OSError:
    return OSError(
        errno.EFBIG,
        f"{remote_path} in the sandbox is {size} bytes, past the download cap of {cap} bytes; "
        f"raise it with the provider's max_file_bytes (provider.max_file_bytes = <bytes>)",
    )


def _write_new_file(local: Path, data: bytes) -> None:
    """Write ``data`` to ``local`` as a plain file of the caller's, mode 0o644 less the umask.

    A symbolic link (or anything but a regular file) at ``local`` is refused,
    not followed; the file is truncated only once it is known to be regular.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(local, flags, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(error.errno, f"refusing to write {local}: it is a symbolic link") from None
        if error.errno == errno.ENXIO:
            raise OSError(error.errno, f"refusing to write {local}: it is not a regular file") from None
        raise
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise OSError(errno.EEXIST, f"refusing to write {local}: it is not a regular file")
        os.ftruncate(fd, 0)
        # Also clears setuid/setgid of a file that was there. Someone else's file we may
        # write to refuses: the kernel drops those bits on our write then.
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o644 & ~process_umask())
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def shell_command(command: Command) -> str:
    """A command as one shell string (for providers that only take strings)."""
    if isinstance(command, str):
        return command
    return shlex.join(command)


def argv_command(command: Command) -> list[str]:
    """A command as an argument vector (a string goes through ``sh -c``)."""
    if isinstance(command, str):
        return ["sh", "-c", command]
    if not command:
        raise ValueError("empty command: give a string or a non-empty list of arguments")
    return [str(part) for part in command]


def as_bytes(data: bytes | str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    return data.encode()


def validate_command(command: Command) -> None:
    if isinstance(command, str):
        if not command.strip():
            raise ValueError("empty command: nothing to run")
    elif isinstance(command, Sequence):
        if not command:
            raise ValueError("empty command: give a non-empty list of arguments")
    else:
        raise TypeError(f"a command is a string or a list of arguments, not {type(command).__name__}")
