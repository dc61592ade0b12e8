"""ModalProvider: Modal sandboxes through the official SDK's async interface.

Only the ``.aio`` methods of the SDK are used (never its blocking facade inside
async code). Labels are Modal sandbox tags, so ``find`` works from any
process; env and working directory go to the SDK's own ``env``/``workdir``
parameters; files go through ``Sandbox.filesystem``. The SDK runs its calls on
its own event loop; one SDK client is still opened per calling event loop, so
that no client outlives the loop of the code that uses it.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import posixpath
import time
import tomllib
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modal
import modal.exception as modal_errors
from grpclib import GRPCError
from grpclib.exceptions import StreamTerminatedError

from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
    SandboxNotFoundError,
    SetupFailed,
)
from ..models import (
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
from ..provider import SandboxProvider, argv_command, as_bytes, shell_command, validate_command
from ..secrets import scrub
from ..streaming import ChunkDecoder, ExitStatus, StreamItem, streaming

DEFAULT_APP = "pytest-sandboxes"
DEFAULT_WORKDIR = "/workspace"
META_TAG = "sandboxes.meta"  # created-at, lifetime and workdir, for other processes
MAX_INLINE_COMMAND = 60_000  # the SDK refuses argument lists over 64 KiB
STDIN_CHUNK = 4 * 1024 * 1024
TIMED_OUT_EXIT_CODE = 124


class _Credentials:
    """A Modal token pair that never shows itself in a repr or a message."""

    __slots__ = ("token_id", "token_secret")

    def __init__(self, token_id: str, token_secret: str) -> None:
        self.token_id = token_id
        self.token_secret = token_secret

    def __repr__(self) -> str:
        return "<Modal credentials>"

    def scrub(self, text: str) -> str:
        return scrub(text, self.token_secret, self.token_id)


def _load_credentials(token_id: str | None, token_secret: str | None) -> _Credentials:
    """Explicit values, else MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, else the active profile of ~/.modal.toml."""
    token_id = token_id or os.environ.get("MODAL_TOKEN_ID")
    token_secret = token_secret or os.environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        return _Credentials(token_id, token_secret)
    path = Path(os.environ.get("MODAL_CONFIG_PATH") or "~/.modal.toml").expanduser()
    profile: dict[str, Any] = {}
    if path.is_file():
        try:
            profiles = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ProviderUnavailable(f"cannot read the Modal config file {path}: {error}", provider="modal") from None
        wanted = os.environ.get("MODAL_PROFILE")
        candidates = [p for p in profiles.values() if isinstance(p, dict)]
        if wanted:
            profile = profiles.get(wanted) or {}
        else:
            active = [p for p in candidates if p.get("active")]
            profile = active[0] if active else (candidates[0] if len(candidates) == 1 else {})
    token_id = token_id or profile.get("token_id")
    token_secret = token_secret or profile.get("token_secret")
    if token_id and token_secret:
        return _Credentials(str(token_id), str(token_secret))
    raise ProviderUnavailable(
        f"Modal credentials are missing: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, or run `modal token new` to write {path}",
        provider="modal",
    )


@dataclass
class _Session:
    """One SDK client (and the app it creates sandboxes in) per calling event loop."""

    loop: weakref.ref[asyncio.AbstractEventLoop]
    client: Any
    app: Any
    handles: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Meta:
    created_at: float | None = None
    lifetime: float | None = None
    workdir: str = DEFAULT_WORKDIR


class ModalProvider(SandboxProvider):
    """Sandboxes on Modal (https://modal.com), created in one Modal app."""

    name = "modal"
    capabilities = Capabilities(
        streaming=True,
        stdin=True,
        files=True,
        background_processes=True,
        network_control=True,
        native_labels=True,
        cross_process_reuse=True,
        snapshots=False,  # the SDK can snapshot, but this library has no snapshot API yet
        gpu=False,  # GPUs need Modal's V1 sandboxes; this provider creates V2 ones
    )

    def __init__(
        self,
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        app_name: str = DEFAULT_APP,
        working_dir: str = DEFAULT_WORKDIR,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        if not working_dir.startswith("/"):
            raise ValueError(f"working_dir must be an absolute path, not {working_dir!r}")
        self._credentials = _load_credentials(token_id, token_secret)
        self.app_name = app_name
        self.working_dir = working_dir
        self.lifetime = lifetime
        self.command_timeout = command_timeout
        self._sessions: dict[int, _Session] = {}
        self._max_output: dict[str, int] = {}
        self._meta: dict[str, _Meta] = {}

    def __repr__(self) -> str:
        return f"<ModalProvider app={self.app_name!r}>"

    # -- SDK clients -------------------------------------------------------------
    async def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is not None and session.loop() is loop:
            return session
        await self._close_stale()
        with self._errors():
            client = await modal.Client.from_credentials.aio(self._credentials.token_id, self._credentials.token_secret)
            try:
                app = await modal.App.lookup.aio(self.app_name, create_if_missing=True, client=client)
            except BaseException:
                await client.close.aio()
                raise
        session = _Session(weakref.ref(loop), client, app)
        self._sessions[id(loop)] = session
        return session

    async def _close_stale(self) -> None:
        for key, session in list(self._sessions.items()):
            loop = session.loop()
            if loop is None or loop.is_closed():
                del self._sessions[key]
                await _close_quietly(session)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await _close_quietly(session)

    async def health_check(self) -> bool:
        try:
            session = await self._session()
            with self._errors():
                await session.client.hello.aio()
        except SandboxError:
            return False
        return True

    # -- errors ------------------------------------------------------------------
    @contextmanager
    def _errors(self, sandbox_id: str | None = None, path: str | None = None) -> Iterator[None]:
        """Turn SDK and transport errors into this library's taxonomy, without credentials."""
        try:
            yield
        except (SandboxError, OSError, ValueError, TypeError) as error:
            if isinstance(error, (ConnectionError, TimeoutError)):  # builtin: the transport broke or hung
                raise ProviderError(self._say("connection to Modal failed", error), provider=self.name) from None
            raise
        except modal_errors.SandboxFilesystemNotFoundError:
            raise FileNotFoundError(f"no such file in the sandbox: {path}") from None
        except modal_errors.SandboxFilesystemIsADirectoryError:
            raise IsADirectoryError(f"is a directory in the sandbox: {path}") from None
        except modal_errors.SandboxFilesystemNotADirectoryError:
            raise NotADirectoryError(f"a parent of {path} is not a directory in the sandbox") from None
        except modal_errors.SandboxFilesystemPermissionError:
            raise PermissionError(f"permission denied in the sandbox: {path}") from None
        except modal_errors.SandboxFilesystemError as error:
            raise ProviderError(self._say(f"file operation on {path} failed", error), provider=self.name) from None
        except modal_errors.NotFoundError as error:
            if sandbox_id is not None:
                self._forget(sandbox_id)
                raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'modal'") from None
            raise ProviderError(self._say("Modal could not find it", error), provider=self.name) from None
        except (modal_errors.AuthError, modal_errors.PermissionDeniedError) as error:
            raise AuthenticationError(
                self._say("Modal rejected the credentials (check MODAL_TOKEN_ID/MODAL_TOKEN_SECRET)", error),
                provider=self.name,
            ) from None
        except modal_errors.ResourceExhaustedError as error:
            raise RateLimitError(self._say("Modal asked to slow down", error), provider=self.name, retry_after=_retry_after(error)) from None
        except modal_errors.ConflictError as error:
            if sandbox_id is not None:  # the sandbox has finished: it is gone for commands and files
                self._forget(sandbox_id)
                raise SandboxNotFoundError(f"sandbox {sandbox_id!r} has ended on provider 'modal'") from None
            raise SandboxError(self._say("Modal refused the request", error)) from None
        except modal_errors.InvalidError as error:
            raise SandboxError(self._say("Modal refused the request as invalid", error)) from None
        except modal_errors.ClientClosed as error:
            raise ProviderError(self._say("the Modal client was closed", error), provider=self.name) from None
        except (TimeoutError, modal_errors.Error, GRPCError, StreamTerminatedError) as error:
            raise ProviderError(self._say("Modal failed", error), provider=self.name) from None

    def _say(self, what: str, error: BaseException) -> str:
        detail = str(error).strip() or type(error).__name__
        return self._credentials.scrub(f"{what}: {detail}")

    def _forget(self, sandbox_id: str) -> None:
        for session in self._sessions.values():
            session.handles.pop(sandbox_id, None)

    # -- lifecycle ---------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        reserved = [key for key in config.labels if key == META_TAG]
        if reserved:
            raise ValueError(f"the label {META_TAG!r} is reserved by pytest-sandboxes; choose another name")
        workdir = config.working_dir or self.working_dir
        if not workdir.startswith("/"):
            raise ValueError(f"working_dir must be an absolute path on Modal, not {workdir!r}")
        lifetime = config.lifetime or self.lifetime
        meta = _Meta(created_at=time.time(), lifetime=lifetime, workdir=workdir)
        tags = {**config.labels, META_TAG: json.dumps({"c": meta.created_at, "l": lifetime, "w": workdir})}
        session = await self._session()
        options: dict[str, Any] = dict(config.provider_config)
        if config.cpus is not None:
            options.setdefault("cpu", config.cpus)
        if config.memory_mb is not None:
            options.setdefault("memory", config.memory_mb)
        if config.network is False:
            options.setdefault("block_network", True)
        image = modal.Image.from_registry(config.image) if config.image else None
        with self._errors():
            try:
                sandbox = await modal.Sandbox.create.aio(
                    app=session.app,
                    client=session.client,
                    image=image,
                    tags=tags,
                    env=dict(config.env) or None,
                    timeout=max(1, math.ceil(lifetime)),
                    workdir=workdir,
                    **options,
                )
            except TypeError as error:
                raise ValueError(f"unsupported Modal option in provider_config: {error}") from None
        sandbox_id = sandbox.object_id
        session.handles[sandbox_id] = sandbox
        self._max_output[sandbox_id] = config.max_output_bytes
        self._meta[sandbox_id] = meta
        try:
            for command in config.setup_commands:
                result = await self.execute_command(sandbox_id, command)
                if not result.success:
                    raise SetupFailed(result, self.name)
        except BaseException:
            await asyncio.shield(self.destroy_sandbox(sandbox_id))
            raise
        return SandboxInfo(
            id=sandbox_id,
            provider=self.name,
            labels=dict(config.labels),
            created_at=meta.created_at,
            expires_at=meta.created_at + lifetime if meta.created_at else None,
            image=config.image,
        )

    async def _handle(self, session: _Session, sandbox_id: str) -> Any:
        """A live SDK handle of the sandbox; SandboxNotFoundError when it is gone or finished."""
        handle = session.handles.get(sandbox_id)
        if handle is not None:
            return handle
        with self._errors(sandbox_id):
            handle = await modal.Sandbox.from_id.aio(sandbox_id, client=session.client)
        if handle.returncode is not None:
            raise self._not_found(sandbox_id)
        session.handles[sandbox_id] = handle
        return handle

    async def _info(self, handle: Any) -> SandboxInfo:
        with self._errors(handle.object_id):
            tags = await handle.get_tags.aio()
        meta = _parse_meta(tags.pop(META_TAG, None))
        self._meta.setdefault(handle.object_id, meta)
        expires = meta.created_at + meta.lifetime if meta.created_at and meta.lifetime else None
        return SandboxInfo(id=handle.object_id, provider=self.name, labels=tags, created_at=meta.created_at, expires_at=expires)

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        session = await self._session()
        session.handles.pop(sandbox_id, None)  # ask the service, not a cached handle
        try:
            handle = await self._handle(session, sandbox_id)
            return await self._info(handle)
        except SandboxNotFoundError:
            return None

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        session = await self._session()
        found: list[SandboxInfo] = []
        with self._errors():
            handles = [
                handle async for handle in modal.Sandbox.list.aio(app_id=session.app.app_id, tags=dict(labels) if labels else None, client=session.client)
            ]
        for handle in handles:
            try:
                found.append(await self._info(handle))
            except SandboxNotFoundError:
                continue  # ended between the listing and the look-up
        return found

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        session = await self._session()
        self._forget(sandbox_id)
        try:
            handle = await self._handle(session, sandbox_id)
        except SandboxNotFoundError:
            return False
        session.handles.pop(sandbox_id, None)
        with self._errors(sandbox_id):
            await handle.terminate.aio()
            await handle.detach.aio()
        self._max_output.pop(sandbox_id, None)
        return True

    # -- commands ----------------------------------------------------------------
    async def _workdir(self, session: _Session, sandbox_id: str) -> str:
        meta = self._meta.get(sandbox_id)
        if meta is None:
            await self._info(await self._handle(session, sandbox_id))
            meta = self._meta.get(sandbox_id, _Meta())
        return meta.workdir

    async def _events(
        self,
        sandbox_id: str,
        command: Command,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        stdin: bytes | str | None,
    ) -> AsyncIterator[tuple[str, bytes | int]]:
        """Start a command and yield ("stdout"|"stderr", bytes) as it runs, then ("exit", code)."""
        validate_command(command)
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        workdir = await self._workdir(session, sandbox_id)
        directory = posixpath.normpath(posixpath.join(workdir, cwd)) if cwd else workdir
        argv = argv_command(command)
        script: str | None = None
        if sum(len(part.encode()) for part in argv) > MAX_INLINE_COMMAND:
            # Too long for an exec argument list: ship it as a script that deletes itself.
            script = f"/tmp/.sandboxes-command-{uuid.uuid4().hex}.sh"
            body = f'rm -f -- "$0"\n{shell_command(command)}\n'
            await self.write_file(sandbox_id, script, body.encode())
            argv = ["sh", script]
        seconds = max(1, math.ceil(timeout if timeout is not None else self.command_timeout))
        with self._errors(sandbox_id):
            process = await handle.exec.aio(*argv, workdir=directory, env=dict(env) if env else None, timeout=seconds, text=False)
        queue: asyncio.Queue[tuple[str, bytes | BaseException | None]] = asyncio.Queue(maxsize=64)

        async def pump(name: str, reader: Any) -> None:
            try:
                async for part in reader:
                    if part:
                        await queue.put((name, part))
                await queue.put((name, None))
            except BaseException as error:
                await queue.put((name, error))

        async def feed(data: bytes) -> None:
            writer = process.stdin
            try:
                for start in range(0, len(data), STDIN_CHUNK):
                    writer.write(data[start : start + STDIN_CHUNK])
                    await writer.drain.aio()
                writer.write_eof()
                await writer.drain.aio()
            except (modal_errors.ConflictError, modal_errors.InvalidError, ValueError):
                pass  # the command exited or closed its stdin: it did not want the rest

        tasks = [
            asyncio.ensure_future(pump("stdout", process.stdout)),
            asyncio.ensure_future(pump("stderr", process.stderr)),
            asyncio.ensure_future(feed(as_bytes(stdin) or b"")),
        ]
        try:
            open_streams = 2
            while open_streams:
                name, item = await queue.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    with self._errors(sandbox_id):
                        raise item
                else:
                    yield name, item
            with self._errors(sandbox_id):
                code = await process.wait.aio()
            yield "exit", code
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
        limit = self._max_output.get(sandbox_id, DEFAULT_MAX_OUTPUT_BYTES)
        buffers = {"stdout": OutputBuffer(limit), "stderr": OutputBuffer(limit)}
        result = ExecutionResult(command=command)
        limit_seconds = max(1, math.ceil(timeout if timeout is not None else self.command_timeout))
        started = time.monotonic()
        code = 0
        async for kind, payload in self._events(sandbox_id, command, env, cwd, timeout, stdin):
            if kind == "exit":
                assert isinstance(payload, int)
                code = payload
            else:
                assert isinstance(payload, bytes)
                buffers[kind].write(payload)
        elapsed = time.monotonic() - started
        result.duration_ms = elapsed * 1000
        result.timed_out = _timed_out(code, elapsed, limit_seconds)
        result.exit_code = TIMED_OUT_EXIT_CODE if result.timed_out else code
        result.stdout, result.stderr = buffers["stdout"].text(), buffers["stderr"].text()
        result.truncated = buffers["stdout"].truncated or buffers["stderr"].truncated
        return result

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
        decoder = ChunkDecoder()
        limit_seconds = max(1, math.ceil(timeout if timeout is not None else self.command_timeout))
        started = time.monotonic()
        code: int | None = None
        async for kind, payload in self._events(sandbox_id, command, env, cwd, timeout, stdin):
            if kind == "exit" and isinstance(payload, int):
                code = payload
            elif kind in ("stdout", "stderr") and isinstance(payload, bytes) and (chunk := decoder.decode(kind, payload)):
                yield chunk
        for chunk in decoder.flush():
            yield chunk
        if code is not None:  # as execute_command reads it
            elapsed = time.monotonic() - started
            timed_out = _timed_out(code, elapsed, limit_seconds)
            yield ExitStatus(TIMED_OUT_EXIT_CODE if timed_out else code, timed_out, elapsed * 1000)

    # -- files -------------------------------------------------------------------
    async def _absolute(self, session: _Session, sandbox_id: str, path: str) -> str:
        if not path:
            raise ValueError("empty path: give a file path in the sandbox")
        if path.startswith("/"):
            return posixpath.normpath(path)
        return posixpath.normpath(posixpath.join(await self._workdir(session, sandbox_id), path))

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        target = await self._absolute(session, sandbox_id, path)
        with self._errors(sandbox_id, path):
            await handle.filesystem.write_bytes.aio(bytes(data), target)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        target = await self._absolute(session, sandbox_id, path)
        with self._errors(sandbox_id, path):
            data: bytes = await handle.filesystem.read_bytes.aio(target)
        return data


def _timed_out(code: int, elapsed: float, limit_seconds: int) -> bool:
    """Modal reports a command killed at its deadline as -1 (client deadline) or by SIGKILL."""
    return code == -1 or (code != 0 and elapsed >= limit_seconds)


def _parse_meta(value: str | None) -> _Meta:
    try:
        raw = json.loads(value) if value else {}
        return _Meta(created_at=float(raw["c"]), lifetime=float(raw["l"]), workdir=str(raw["w"]))
    except (ValueError, KeyError, TypeError):
        return _Meta()


def _retry_after(error: BaseException) -> float | None:
    for detail in getattr(error, "_grpc_details", None) or []:
        seconds = getattr(detail, "retry_after_secs", None)
        if seconds:
            return float(seconds)
    return None


async def _close_quietly(session: _Session) -> None:
    for handle in list(session.handles.values()):
        try:
            await handle.detach.aio()
        except Exception:
            pass
    try:
        await session.client.close.aio()
    except Exception:
        pass
