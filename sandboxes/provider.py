"""SandboxProvider: the engine. One provider's policy, written once, over its driver.

A driver (``sandboxes.driver``) does only the wire; middlewares wrap it
(retry and circuit breaker, record and replay); this engine sits on top and
owns what a caller sees, the same on every provider:

- inputs checked before anything runs (``_validate``);
- setup commands, run once after creation; a failure destroys the sandbox;
- ``working_dir``: absolute, created, every command's default cwd;
- per-sandbox settings (working dir, output cap, command timeout) stored with
  the sandbox under a reserved label, so they hold from another process;
- ``execute`` as the drained stream, output capped head and tail, decoded once;
- exit code 124 for a timeout, whatever the provider reported;
- commands too long for one argument spilled to a file, with one threshold;
- ``download`` of a directory through the driver's tar stream when it has one,
  else through ``tar`` in the sandbox, written by the host's own rules.

The low-level names are those of the reference library (``create_sandbox``,
``execute_command``...), which users already call. ``LocalProvider``,
``E2BProvider``... are this class bound to a driver class (``specs``).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import io
import json
import math
import os
import posixpath
import secrets
import shlex
import stat
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from . import _validate as check
from . import leases
from ._extract import extract_tar, process_umask
from .driver import RESERVED_LABEL_PREFIX, WIRE_METHODS, Driver, Event, Exit, FilesUpload, Output, TreeDownload, cold_argv
from .errors import SandboxNotFoundError, SetupFailed, UnsupportedOperation
from .models import (
    DEFAULT_COMMAND_TIMEOUT_SECONDS,
    DEFAULT_LIFETIME_SECONDS,
    DEFAULT_MAX_OUTPUT_BYTES,
    Capabilities,
    Command,
    ExecutionResult,
    OutputBuffer,
    SandboxConfig,
    SandboxInfo,
)
from .streaming import ChunkDecoder, CommandStream, ExitStatus, StreamItem

if TYPE_CHECKING:
    from .specs import ProviderSpec

TIMED_OUT_EXIT_CODE = 124
SPILL_BYTES = 60_000
"""A command whose arguments pass this many bytes runs from a file: below the kernel's 128 KiB
per-argument limit and Modal's 64 KiB argument list, so one threshold serves every provider."""
SETTINGS_LABEL = RESERVED_LABEL_PREFIX + "settings"
DEFAULT_MAX_FILE_BYTES = 1 << 30
_SPILL_RUNNER = 'script=$(cat -- "$1") && rm -f -- "$1" && shift && eval "$script"'
"""Reads the spilled script, removes the file before anything runs (so nothing is left, whatever the
script does), and evaluates it as ``sh -c`` would; ``$0`` stays ``/bin/sh``."""
_STDIN_RUNNER = 'exec 0<"$1" || exit 126; rm -f -- "$1"; shift; exec "$@"'
"""Where a provider has no stdin stream: the input file becomes the command's fd 0 and is gone before
the command starts (only that open file holds it)."""
MAX_OUTPUT_CAP = 1 << 40


@dataclass(frozen=True)
class Settings:
    """What the engine keeps per sandbox, stored with it under ``SETTINGS_LABEL``."""

    working_dir: str | None = None
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    command_timeout: float | None = None

    @classmethod
    def of(cls, config: SandboxConfig) -> Settings:
        return cls(config.working_dir, config.max_output_bytes, config.command_timeout)

    def label(self) -> dict[str, str]:
        stored: dict[str, Any] = {}
        if self.working_dir:
            stored["cwd"] = self.working_dir
        if self.max_output_bytes != DEFAULT_MAX_OUTPUT_BYTES:
            stored["max_output"] = self.max_output_bytes
        if self.command_timeout is not None:
            stored["timeout"] = self.command_timeout
        return {SETTINGS_LABEL: json.dumps(stored, separators=(",", ":"))} if stored else {}

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Settings:
        """The settings a label holds; each value that is not what the engine writes is left at its default."""
        try:
            stored = json.loads(labels.get(SETTINGS_LABEL) or "{}")
        except ValueError:
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        cwd, cap, timeout = stored.get("cwd"), stored.get("max_output"), stored.get("timeout")
        return cls(
            cwd if isinstance(cwd, str) and cwd.startswith("/") and "\0" not in cwd else None,
            cap if type(cap) is int and 2 <= cap <= MAX_OUTPUT_CAP else DEFAULT_MAX_OUTPUT_BYTES,
            float(timeout) if isinstance(timeout, int | float) and not isinstance(timeout, bool) and math.isfinite(timeout) and timeout > 0 else None,
        )


@dataclass(frozen=True)
class _Request:
    """A command as checked at the boundary."""

    sandbox_id: str
    command: Command
    env: dict[str, str]
    cwd: str | None
    timeout: float | None
    stdin: bytes | str | None


def public(info: SandboxInfo) -> SandboxInfo:
    """The info as callers see it: without the library's reserved labels."""
    if any(key.startswith(RESERVED_LABEL_PREFIX) for key in info.labels):
        info.labels = {k: v for k, v in info.labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}
    return info


def caller_labels(labels: Any, what: str = "labels") -> dict[str, str]:
    """Labels a caller gives: checked, and none under the reserved prefix."""
    checked = check.labels(labels, what)
    reserved = [key for key in checked if key.startswith(RESERVED_LABEL_PREFIX)]
    if reserved:
        raise ValueError(f"{what} {reserved[0]!r}: names starting with {RESERVED_LABEL_PREFIX!r} are reserved by pytest-sandboxes; choose another name")
    return checked


class SandboxProvider:
    """The engine over one driver (or a stack of middlewares over it); see the module docstring.

    ``LocalProvider(**options)`` and friends build their driver from the
    options. Attributes the engine does not have are the driver's (its
    options, ``describe_isolation()``...).
    """

    spec: ProviderSpec | None = None  # the class's (LocalProvider...), or an instance's own when given a driver directly
    driver_class: ClassVar[type[Driver] | None] = None

    def __init__(self, driver: Driver | None = None, /, *, spec: ProviderSpec | None = None, **options: Any) -> None:
        if spec is not None:
            self.spec = spec
        if driver is None:
            if self.driver_class is None:
                raise TypeError("SandboxProvider needs a driver: SandboxProvider(driver), or use a provider class such as LocalProvider")
            if self.spec is not None:
                options = {**self.spec.options_from_environment(), **options}
            driver = self.driver_class(**options)
        elif options:
            raise TypeError(f"options ({', '.join(options)}) are for building a driver; this provider was given one")
        self.driver: Driver = driver
        self._settings: dict[str, Settings] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.driver!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("driver", "_settings") or name in WIRE_METHODS:
            raise AttributeError(name)  # the wire stays below the engine: callers go through its policy
        return getattr(self.driver, name)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else self.driver.name

    @property
    def capabilities(self) -> Capabilities:
        return self.spec.capabilities if self.spec is not None else Capabilities()

    @property
    def max_file_bytes(self) -> int:
        """Most bytes ``read_file``/``download_file`` bring onto the host at once (the driver's option)."""
        return int(getattr(self.driver, "max_file_bytes", DEFAULT_MAX_FILE_BYTES))

    @max_file_bytes.setter
    def max_file_bytes(self, value: int) -> None:
        self.driver.max_file_bytes = value  # type: ignore[attr-defined]  # an option of the driver's, which may not declare it

    def with_driver(self, driver: Driver) -> SandboxProvider:
        """The same provider (its class, its overrides) over another driver stack, sharing the settings it knows."""
        clone = copy.copy(self)
        clone.driver = driver
        return clone

    # -- lifecycle -------------------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        """Create a sandbox, make its working directory, run its setup commands; a failure destroys it."""
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, not {type(config).__name__}")
        labels = caller_labels(config.labels)
        workdir = config.working_dir
        if workdir is not None and not workdir.startswith("/"):
            raise ValueError(f"working_dir must be an absolute path inside the sandbox (such as /workspace/app), not {workdir!r}")
        settings = Settings.of(config.replace(working_dir=os.path.normpath(workdir) if workdir else None))
        lifetime = config.lifetime or getattr(self.driver, "lifetime", None) or DEFAULT_LIFETIME_SECONDS
        reserved = {**settings.label(), **leases.labels(lifetime)}
        info = await self.driver.create(config.replace(labels={**labels, **reserved}, setup_commands=[], working_dir=None))
        self._settings[info.id] = settings
        try:
            if settings.working_dir:
                made = await self._run(info.id, ["mkdir", "-p", "--", settings.working_dir], cwd="/")
                if not made.success:
                    raise ValueError(f"working_dir {settings.working_dir!r} cannot be made in the sandbox: {made.stderr.strip() or made.describe()}")
            for command in config.setup_commands:
                result = await self.execute_command(info.id, command)
                if not result.success:
                    raise SetupFailed(result, self.name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await self.destroy_sandbox(info.id)
            raise
        return public(info)

    def _known(self, info: SandboxInfo | None) -> SandboxInfo | None:
        if info is not None:
            self._settings[info.id] = Settings.from_labels(info.labels)
            public(info)
        return info

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        """The sandbox with that id, or None when there is none."""
        return self._known(await self.driver.get(check.sandbox_id(sandbox_id)))

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        """Every live sandbox whose labels include ``labels``."""
        found = await self.driver.list(caller_labels(labels))
        return [public(info) for info in found]

    async def find_sandbox(self, labels: Mapping[str, str]) -> SandboxInfo | None:
        """The oldest live sandbox carrying all ``labels``, or None."""
        found = await self.driver.list(caller_labels(labels))
        found.sort(key=lambda info: (info.created_at or 0.0, info.id))
        return self._known(found[0]) if found else None

    async def get_or_create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        """Reuse a sandbox with the config's labels, or create one."""
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, not {type(config).__name__}")
        if config.labels:
            existing = await self.find_sandbox(config.labels)
            if existing is not None:
                return existing
        return await self.create_sandbox(config)

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        """Destroy it; True when it existed."""
        existed = await self.driver.destroy(check.sandbox_id(sandbox_id))
        self._settings.pop(sandbox_id, None)
        return existed

    async def health_check(self) -> bool:
        """True when the provider answers; creates nothing."""
        return await self.driver.health_check()

    async def aclose(self) -> None:
        """Release the driver's clients and connections."""
        await self.driver.aclose()

    async def _settings_of(self, sandbox_id: str) -> Settings:
        """The sandbox's settings; asks the provider the first time this process sees it."""
        known = self._settings.get(sandbox_id)
        if known is None:
            if await self.get_sandbox(sandbox_id) is None:
                raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider {self.name!r}")
            known = self._settings[sandbox_id]
        return known

    # -- commands ----------------------------------------------------------------------------
    def _request(self, sandbox_id: Any, command: Any, env: Any, cwd: Any, timeout: Any, stdin: Any) -> _Request:
        """A command's arguments, checked before anything is sent anywhere."""
        request = _Request(
            check.sandbox_id(sandbox_id),
            check.command(command),
            check.environment(env),
            check.optional_path(cwd, "cwd"),
            check.seconds(timeout, "timeout"),
            check.stdin(stdin),
        )
        if request.stdin is not None and not (self.capabilities.stdin or self.capabilities.files):
            raise UnsupportedOperation(self.name, "stdin", "write the input to a file and redirect it: sh -c 'cmd < file'")
        return request

    async def _events(self, request: _Request, settings: Settings | None = None) -> AsyncGenerator[Event, None]:
        sandbox_id, command, environment = request.sandbox_id, request.command, request.env
        settings = settings or await self._settings_of(sandbox_id)
        limit = request.timeout or settings.command_timeout or float(getattr(self.driver, "command_timeout", DEFAULT_COMMAND_TIMEOUT_SECONDS))
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        if not self.capabilities.warm_python:
            argv = cold_argv(argv)
        size = sum(len(part.encode()) + 1 for part in argv) + sum(len(k.encode()) + len(v.encode()) + 2 for k, v in environment.items())
        if size > SPILL_BYTES:
            # Too long for one request on some providers: the script goes in a file. A list runs
            # through exec (no builtin, keyword or assignment is ever taken from it), the
            # environment is exported first, and the file is gone before the command starts.
            spilled = f"/tmp/.sandboxes-cmd-{secrets.token_hex(8)}.sh"
            argv = cold_argv(argv)  # a spilled command starts cold
            exports = "".join(f"export {shlex.quote(f'{k}={v}')}\n" for k, v in environment.items())
            script = exports + (command if isinstance(command, str) else "exec " + shlex.join(argv))
            await self.driver.write_file(sandbox_id, spilled, script.encode())
            argv, environment = ["/bin/sh", "-c", _SPILL_RUNNER, "/bin/sh", spilled], {}
        stdin = request.stdin.encode() if isinstance(request.stdin, str) else request.stdin
        if stdin is not None and not self.capabilities.stdin:
            fed = f"/tmp/.sandboxes-stdin-{secrets.token_hex(8)}"
            await self.driver.write_file(sandbox_id, fed, stdin)
            argv, stdin = ["/bin/sh", "-c", _STDIN_RUNNER, "/bin/sh", fed, *argv], None
        events = self.driver.exec(
            sandbox_id,
            argv,
            env=environment,
            cwd=_within(settings.working_dir, request.cwd) or settings.working_dir,
            stdin=stdin,
            timeout=limit,
            output_limit=settings.max_output_bytes,
        )
        try:
            async for event in events:
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()

    async def execute_command(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecutionResult:
        """Run a command to its end; a non-zero exit is a result. A string runs under ``sh -c``."""
        return await self._execute(self._request(sandbox_id, command, env, cwd, timeout, stdin))

    async def _run(self, sandbox_id: str, argv: list[str], cwd: str | None = None) -> ExecutionResult:
        """One of the engine's own commands (mkdir, test, tar): not the caller's, so no subclass hook sees it."""
        return await self._execute(_Request(sandbox_id, argv, {}, cwd, None, None))

    async def _execute(self, request: _Request) -> ExecutionResult:
        """``execute_command`` without the hooks a subclass may add: the engine's own commands (mkdir, tar) come here."""
        settings = await self._settings_of(request.sandbox_id)
        out, err = OutputBuffer(settings.max_output_bytes), OutputBuffer(settings.max_output_bytes)
        started = time.monotonic()
        ended = Exit(-1)
        async with contextlib.aclosing(self._events(request, settings)) as events:
            async for event in events:
                if isinstance(event, Output):
                    (out if event.stream == "stdout" else err).write(event.data)
                else:
                    ended = event
        out.truncated = out.truncated or "stdout" in ended.dropped
        err.truncated = err.truncated or "stderr" in ended.dropped
        return ExecutionResult(
            stdout=out.text(),
            stderr=err.text(),
            exit_code=TIMED_OUT_EXIT_CODE if ended.timed_out else ended.exit_code,
            duration_ms=ended.duration_ms if ended.duration_ms is not None else (time.monotonic() - started) * 1000,
            timed_out=ended.timed_out,
            truncated=out.truncated or err.truncated,
            command=request.command,
            oom_killed=ended.oom_killed,
            cpu_ms=ended.cpu_ms,
        )

    def stream_execution(
        self,
        sandbox_id: str,
        command: Command,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float | None = None,
        stdin: bytes | str | None = None,
    ) -> CommandStream:
        """Output chunks as the command produces them, then how it ended (``CommandStream``)."""
        request = self._request(sandbox_id, command, env, cwd, timeout, stdin)
        if not self.capabilities.streaming:
            raise UnsupportedOperation(self.name, "streaming", "use execute() and read the result's output")
        return CommandStream(self._stream(request), command=request.command)

    async def _stream(self, request: _Request) -> AsyncIterator[StreamItem]:
        decoder = ChunkDecoder()
        started = time.monotonic()
        async with contextlib.aclosing(self._events(request)) as events:
            async for event in events:
                if isinstance(event, Output):
                    if chunk := decoder.decode(event.stream, event.data):
                        yield chunk
                else:
                    for chunk in decoder.flush():
                        yield chunk
                    duration = event.duration_ms if event.duration_ms is not None else (time.monotonic() - started) * 1000
                    yield ExitStatus(TIMED_OUT_EXIT_CODE if event.timed_out else event.exit_code, event.timed_out, duration)

    # -- files ---------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str | os.PathLike[str], data: bytes | str) -> None:
        """Write ``data`` (bytes, or text as UTF-8) to ``path``, creating parent directories."""
        contents = check.data(data)  # checked before anything is opened: a bad type never truncates the file
        where = check.path(path)
        check.sandbox_id(sandbox_id)
        await self.driver.write_file(sandbox_id, _within((await self._settings_of(sandbox_id)).working_dir, where) or where, contents)

    async def write_files(self, sandbox_id: str, files: Mapping[str, bytes | str]) -> None:
        """Write each file (path -> bytes, or text as UTF-8): in one exchange where the provider can
        (capability ``files_upload``), else one by one."""
        contents = [(check.path(path), check.data(data)) for path, data in files.items()]
        check.sandbox_id(sandbox_id)
        working_dir = (await self._settings_of(sandbox_id)).working_dir
        placed = [(_within(working_dir, where) or where, data) for where, data in contents]
        if self.capabilities.files_upload and isinstance(self.driver, FilesUpload):
            await self.driver.write_files(sandbox_id, placed)
            return
        for where, data in placed:
            await self.driver.write_file(sandbox_id, where, data)

    async def read_file(self, sandbox_id: str, path: str | os.PathLike[str]) -> bytes:
        """A regular file's bytes, at most ``max_file_bytes`` (else ``OSError(EFBIG)``)."""
        where = check.path(path)
        check.sandbox_id(sandbox_id)
        where = _within((await self._settings_of(sandbox_id)).working_dir, where) or where
        data = await self.driver.read_file(sandbox_id, where, self.max_file_bytes)
        if len(data) > self.max_file_bytes:
            raise _too_big(where, len(data), self.max_file_bytes)
        return data

    async def upload_file(self, sandbox_id: str, local_path: str | os.PathLike[str], remote_path: str | os.PathLike[str]) -> None:
        """Copy a local file or directory tree into the sandbox."""
        local = Path(check.path(local_path, "local_path"))
        remote = check.path(remote_path, "remote_path")
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    await self.write_file(sandbox_id, str(PurePosixPath(remote) / path.relative_to(local).as_posix()), path.read_bytes())
        elif local.is_file():
            await self.write_file(sandbox_id, remote, local.read_bytes())
        else:
            raise FileNotFoundError(f"no such local file or directory: {local}")

    async def download_file(self, sandbox_id: str, remote_path: str | os.PathLike[str], local_path: str | os.PathLike[str]) -> None:
        """Copy a file or directory tree out of the sandbox.

        Nothing the sandbox sends is trusted (see ``sandboxes._extract``): only
        regular files and directories are written, with modes 0o644/0o755 less
        the umask, owned by the caller, never through a symbolic link; other
        members are skipped (logged at debug level on the "sandboxes" logger).
        More than ``max_file_bytes`` raises ``OSError(EFBIG)``.
        """
        remote = check.path(remote_path, "remote_path")
        local = Path(check.path(local_path, "local_path"))
        check.sandbox_id(sandbox_id)
        remote = _within((await self._settings_of(sandbox_id)).working_dir, remote) or remote
        cap = self.max_file_bytes
        if self.capabilities.tree_download and isinstance(self.driver, TreeDownload):
            with tempfile.SpooledTemporaryFile(max_size=8 << 20) as archive:
                try:
                    await self.driver.download_tree(sandbox_id, remote, archive.write, cap)
                except NotADirectoryError:
                    pass
                else:
                    archive.seek(0)
                    await anyio.to_thread.run_sync(lambda: extract_tar(archive, local, max_bytes=cap))
                    return
        probe = await self._run(sandbox_id, ["test", "-d", remote])
        if probe.exit_code != 0:
            data = await self.read_file(sandbox_id, remote)
            local.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(_write_new_file, local, data)
            return
        archive_path = f"/tmp/.sandboxes-download-{secrets.token_hex(16)}.tar"
        packed = await self._run(sandbox_id, ["tar", "-cf", archive_path, "-C", remote, "."])
        if packed.exit_code != 0:
            raise PermissionError(f"cannot read directory {remote} in the sandbox: {packed.stderr.strip()}")
        try:
            data = await self.read_file(sandbox_id, archive_path)
        finally:
            await self._run(sandbox_id, ["rm", "-f", archive_path])
        await anyio.to_thread.run_sync(functools.partial(extract_tar, io.BytesIO(data), local, max_bytes=cap))


def _within(working_dir: str | None, path: str | None) -> str | None:
    """A relative path (or cwd) starts at the sandbox's working directory, on every provider."""
    if path is not None and working_dir and not path.startswith("/"):
        return posixpath.join(working_dir, path)
    return path


def _too_big(remote_path: str, size: int, cap: int) -> OSError:
    return OSError(
        errno.EFBIG,
        f"{remote_path} in the sandbox is {size} bytes, past the download cap of {cap} bytes; "
        f"raise it with the provider's max_file_bytes option (LocalProvider(max_file_bytes=...))",
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
