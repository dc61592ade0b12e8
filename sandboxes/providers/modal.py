"""ModalDriver: Modal sandboxes through the official SDK's async interface.

Only the ``.aio`` methods of the SDK are used (never its blocking facade inside
async code). Labels are Modal sandbox tags, so ``find`` works from any
process; files go through ``Sandbox.filesystem``. One SDK client is opened per
calling event loop, so that no client outlives the loop of the code that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import posixpath
import time
import tomllib
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import modal
import modal.exception as modal_errors
from grpclib import GRPCError
from grpclib.exceptions import StreamTerminatedError

from ..driver import ErrorMap, Event, Exit, Output, after_start, map_errors
from ..errors import AuthenticationError, ProviderError, ProviderUnavailable, RateLimitError, SandboxError, SandboxNotFoundError
from ..models import DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_LIFETIME_SECONDS, SandboxConfig, SandboxInfo
from ..secrets import Secret, scrub

DEFAULT_APP = "pytest-sandboxes"
DEFAULT_WORKDIR = "/workspace"
META_TAG = "sandboxes.meta"  # created-at, lifetime and Modal workdir, for other processes
EXEC_TAG = "SANDBOXES_EXEC_ID"  # in each command's environment, inherited by its whole process tree
CHECK_TOKENS = "check MODAL_TOKEN_ID/MODAL_TOKEN_SECRET"
STDIN_CHUNK = 4 * 1024 * 1024
REAP_SECONDS = 10
# Kills every process whose environment holds "$0" (EXEC_TAG=token): the tree of a command that did not end.
_REAPER = (
    "for round in 1 2 3; do pids=; for f in /proc/[0-9]*/environ; do "
    'if tr "\\000" "\\n" <"$f" 2>/dev/null | grep -qxF -- "$0"; then p=${f#/proc/}; pids="$pids ${p%/environ}"; fi; done; '
    '[ -n "$pids" ] || exit 0; kill -9 $pids 2>/dev/null; done'
)
Stream = Literal["stdout", "stderr"]


def _load_credentials(token_id: str | None, token_secret: str | None) -> tuple[str, str]:
    """The given tokens, else those of the active profile of the Modal config file (``~/.modal.toml``)."""
    if token_id and token_secret:
        return token_id, token_secret
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
        return str(token_id), str(token_secret)
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


class ModalDriver:
    """Sandboxes on Modal (https://modal.com), created in one Modal app."""

    name = "modal"

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
        token_id, token_secret = _load_credentials(token_id, token_secret)
        self._token_id, self._token_secret = Secret(token_id), Secret(token_secret)
        self.app_name = app_name
        self.working_dir = working_dir  # the Modal workdir of new sandboxes: where relative paths start
        self.lifetime = lifetime
        self.command_timeout = command_timeout
        self._sessions: dict[int, _Session] = {}
        self._modal_workdirs: dict[str, str] = {}
        self.resends_creation = True
        """Whether the SDK may have resent the last creation by itself after a dropped connection
        (read by the ``ResilientDriver``: then a stray may exist that no failure told it of)."""
        self._send_creations_once = False

    def __repr__(self) -> str:
        return f"<ModalDriver app={self.app_name!r}>"

    def caller_retries_creations(self) -> None:
        """A caller above (the ``ResilientDriver``) retries a failed creation itself, clearing what it
        left first: the SDK sends each creation once, so that every failure reaches that caller."""
        self._send_creations_once = True

    # -- SDK clients -------------------------------------------------------------
    async def _session(self) -> _Session:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is not None and session.loop() is loop:
            return session
        await self._close_stale()
        with map_errors(self._errors()):
            client = await modal.Client.from_credentials.aio(self._token_id.value, self._token_secret.value)
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
            with map_errors(self._errors()):
                await session.client.hello.aio()
        except SandboxError:
            return False
        return True

    # -- errors ------------------------------------------------------------------
    def _errors(self, sandbox_id: str | None = None, path: str | None = None) -> ErrorMap:
        """SDK and transport errors in this library's taxonomy, without credentials; ``sandbox_id`` and ``path`` name what failed."""

        def fail(what: str, kind: type[ProviderError] = ProviderError) -> Callable[[BaseException], BaseException]:
            return lambda error: kind(self._say(what, error), provider=self.name)

        def gone(how: str, otherwise: Callable[[BaseException], BaseException]) -> Callable[[BaseException], BaseException]:
            def translate(error: BaseException) -> BaseException:
                if sandbox_id is None:
                    return otherwise(error)
                self._forget(sandbox_id)
                return SandboxNotFoundError(f"sandbox {sandbox_id!r} {how} on provider 'modal'")

            return translate

        def file_error(kind: type[OSError], code: int, what: str) -> Callable[[BaseException], BaseException]:
            return lambda _: kind(code, what + " in the sandbox", path)

        def throttled(error: BaseException) -> BaseException:
            return RateLimitError(self._say("Modal asked to slow down", error), provider=self.name, retry_after=_retry_after(error))

        return (
            ((ConnectionError, TimeoutError), fail("connection to Modal failed")),  # the builtins: the transport broke or hung
            ((SandboxError, OSError, ValueError, TypeError), lambda _: None),  # already this library's, or a caller's mistake
            (modal_errors.SandboxFilesystemNotFoundError, file_error(FileNotFoundError, errno.ENOENT, "no such file")),
            (modal_errors.SandboxFilesystemIsADirectoryError, file_error(IsADirectoryError, errno.EISDIR, "is a directory")),
            (modal_errors.SandboxFilesystemNotADirectoryError, file_error(NotADirectoryError, errno.ENOTDIR, "a parent is not a directory")),
            (modal_errors.SandboxFilesystemPermissionError, file_error(PermissionError, errno.EACCES, "permission denied")),
            (modal_errors.SandboxFilesystemError, fail(f"file operation on {path} failed")),
            (modal_errors.NotFoundError, gone("does not exist", fail("Modal could not find it"))),
            ((modal_errors.AuthError, modal_errors.PermissionDeniedError), fail(f"Modal rejected the credentials ({CHECK_TOKENS})", AuthenticationError)),
            (modal_errors.ResourceExhaustedError, throttled),
            # A finished sandbox refuses commands and files with a conflict: it is gone.
            (modal_errors.ConflictError, gone("has ended", lambda e: SandboxError(self._say("Modal refused the request", e)))),
            (modal_errors.InvalidError, lambda e: SandboxError(self._say("Modal refused the request as invalid", e))),  # never retried
            (modal_errors.ClientClosed, fail("the Modal client was closed")),
            ((modal_errors.Error, GRPCError, StreamTerminatedError), fail("Modal failed")),
        )

    def _say(self, what: str, error: BaseException) -> str:
        detail = str(error).strip() or type(error).__name__
        return scrub(f"{what}: {detail}", self._token_secret, self._token_id)

    def _forget(self, sandbox_id: str) -> None:
        self._modal_workdirs.pop(sandbox_id, None)
        for session in self._sessions.values():
            session.handles.pop(sandbox_id, None)

    # -- lifecycle ---------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        lifetime = config.lifetime or self.lifetime
        created = time.time()
        tags = {**config.labels, META_TAG: json.dumps({"c": created, "l": lifetime, "w": self.working_dir})}
        options: dict[str, Any] = dict(config.provider_config)
        if config.cpus is not None:
            options.setdefault("cpu", config.cpus)
        if config.memory_mb is not None:
            options.setdefault("memory", config.memory_mb)
        if config.network is False:
            options.setdefault("block_network", True)
        image = modal.Image.from_registry(config.image) if config.image else None
        session = await self._session()
        if self._send_creations_once:
            self.resends_creation = not _send_once(session.client)
        bad_option = (TypeError, lambda error: ValueError(f"unsupported Modal option in provider_config: {error}"))
        with map_errors((bad_option, *self._errors())):
            sandbox = await modal.Sandbox.create.aio(
                app=session.app,
                client=session.client,
                image=image,
                tags=tags,
                env=dict(config.env) or None,
                timeout=max(1, math.ceil(lifetime)),
                workdir=self.working_dir,
                **options,
            )
        session.handles[sandbox.object_id] = sandbox
        self._modal_workdirs[sandbox.object_id] = self.working_dir
        return SandboxInfo(id=sandbox.object_id, provider=self.name, labels=tags, created_at=created, expires_at=created + lifetime, image=config.image)

    async def _handle(self, session: _Session, sandbox_id: str) -> Any:
        """A live SDK handle of the sandbox; SandboxNotFoundError when it is gone or finished."""
        handle = session.handles.get(sandbox_id)
        if handle is None:
            with map_errors(self._errors(sandbox_id)):
                handle = await modal.Sandbox.from_id.aio(sandbox_id, client=session.client)
            if handle.returncode is not None:
                raise SandboxNotFoundError(f"sandbox {sandbox_id!r} has ended on provider 'modal'")
            session.handles[sandbox_id] = handle
        return handle

    async def _info(self, handle: Any) -> SandboxInfo:
        with map_errors(self._errors(handle.object_id)):
            tags: dict[str, str] = dict(await handle.get_tags.aio())
        meta = _parse_meta(tags.get(META_TAG))
        self._modal_workdirs.setdefault(handle.object_id, meta.workdir)
        expires = meta.created_at + meta.lifetime if meta.created_at and meta.lifetime else None
        return SandboxInfo(id=handle.object_id, provider=self.name, labels=tags, created_at=meta.created_at, expires_at=expires)

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        session = await self._session()
        session.handles.pop(sandbox_id, None)  # ask the service, not a cached handle
        try:
            return await self._info(await self._handle(session, sandbox_id))
        except SandboxNotFoundError:
            return None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        session = await self._session()
        with map_errors(self._errors()):
            handles = [handle async for handle in modal.Sandbox.list.aio(app_id=session.app.app_id, tags=dict(labels) or None, client=session.client)]
        found = []
        for handle in handles:
            with contextlib.suppress(SandboxNotFoundError):  # ended between the listing and the look-up
                found.append(await self._info(handle))
        return found

    async def destroy(self, sandbox_id: str) -> bool:
        session = await self._session()
        self._forget(sandbox_id)
        try:
            handle = await self._handle(session, sandbox_id)
        except SandboxNotFoundError:
            return False
        self._forget(sandbox_id)
        with map_errors(self._errors(sandbox_id)):
            await handle.terminate.aio()
            await handle.detach.aio()
        return True

    # -- commands ----------------------------------------------------------------
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
        """Modal kills a command at its (whole-second) timeout; a command that did not end is reaped by its tag."""
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        directory = await self._absolute(session, sandbox_id, cwd) if cwd else None  # None: the sandbox's workdir
        seconds = max(1, math.ceil(timeout))
        token = uuid.uuid4().hex
        errors = self._errors(sandbox_id)
        started = time.monotonic()
        with map_errors(errors):
            process = await handle.exec.aio(*argv, workdir=directory, env={**env, EXEC_TAG: token}, timeout=seconds, text=False)
        queue: asyncio.Queue[tuple[Stream, bytes | BaseException | None]] = asyncio.Queue(maxsize=64)

        async def pump(name: Stream, reader: Any) -> None:
            try:
                async for part in reader:
                    if part:
                        await queue.put((name, part))
                await queue.put((name, None))
            except BaseException as error:
                await queue.put((name, error))

        async def feed(data: bytes) -> None:
            writer = process.stdin
            with contextlib.suppress(modal_errors.ConflictError, modal_errors.InvalidError, ValueError):  # it exited or closed its stdin
                for start in range(0, len(data), STDIN_CHUNK):
                    writer.write(data[start : start + STDIN_CHUNK])
                    await writer.drain.aio()
                writer.write_eof()
                await writer.drain.aio()

        tasks = [
            asyncio.ensure_future(pump("stdout", process.stdout)),
            asyncio.ensure_future(pump("stderr", process.stderr)),
            asyncio.ensure_future(feed(stdin or b"")),
        ]
        ended = False
        try:
            open_streams = 2
            while open_streams:
                name, item = await queue.get()
                if item is None:
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    with after_start(), map_errors(errors):
                        raise item
                else:
                    yield Output(name, item)
            with after_start(), map_errors(errors):
                code = await process.wait.aio()
            elapsed = time.monotonic() - started
            timed_out = _timed_out(code, elapsed, seconds)
            ended = not timed_out
            yield Exit(code, timed_out=timed_out, duration_ms=elapsed * 1000)
        finally:
            for task in tasks:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)
                if not ended:
                    await _reap(handle, token)

    # -- files -------------------------------------------------------------------
    async def _absolute(self, session: _Session, sandbox_id: str, path: str) -> str:
        """``path`` in the sandbox; a relative one starts at the sandbox's Modal workdir."""
        if not path.startswith("/"):
            if sandbox_id not in self._modal_workdirs:
                await self._info(await self._handle(session, sandbox_id))
            path = posixpath.join(self._modal_workdirs.get(sandbox_id, DEFAULT_WORKDIR), path)
        return posixpath.normpath(path)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        target = await self._absolute(session, sandbox_id, path)
        with map_errors(self._errors(sandbox_id, path)):
            await handle.filesystem.write_bytes.aio(bytes(data), target)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        session = await self._session()
        handle = await self._handle(session, sandbox_id)
        target = await self._absolute(session, sandbox_id, path)
        with map_errors(self._errors(sandbox_id, path)):
            data: bytes = await handle.filesystem.read_bytes.aio(target)
        return data


async def _reap(handle: Any, token: str) -> None:
    """Kill every process carrying the command's tag (its whole tree, background ones too); best effort."""
    with anyio.move_on_after(REAP_SECONDS), contextlib.suppress(Exception):
        quiet = modal.stream_type.StreamType.DEVNULL
        killer = await handle.exec.aio("/bin/sh", "-c", _REAPER, f"{EXEC_TAG}={token}", stdout=quiet, stderr=quiet, timeout=REAP_SECONDS)
        await killer.wait.aio()


def _timed_out(code: int, elapsed: float, limit_seconds: int) -> bool:
    """Modal reports a command killed at its deadline as -1 (client deadline) or by SIGKILL."""
    return code == -1 or (code != 0 and elapsed >= limit_seconds)


def _parse_meta(value: str | None) -> _Meta:
    try:
        raw = json.loads(value) if value else {}
        return _Meta(created_at=float(raw["c"]), lifetime=float(raw["l"]), workdir=str(raw["w"]))
    except (ValueError, KeyError, TypeError):
        return _Meta()


def _send_once(client: Any) -> bool:
    """Make the SDK send a sandbox's creation once, as its other calls are not; whether it does now.

    Modal's SDK resends a creation by itself after a dropped connection, and Modal does not document
    that it deduplicates one. The first one may have made a sandbox: then two are alive, one unknown
    to the governor's count, until a list finds it. Sent once, a lost creation comes back to the
    ``ResilientDriver``, which destroys what it left before sending it again, while its place under
    the cap is still held. This reaches into the SDK's client (the pinned version's); with another
    version where it cannot, the SDK keeps resending and every creation is checked after."""
    try:
        from modal._grpc_client import UnaryUnaryWrapper
        from modal._utils.async_utils import synchronizer

        stub = synchronizer._translate_in(client)._stub  # type: ignore[no-untyped-call]
        method = stub.SandboxCreateV2
    except (ImportError, AttributeError, AssertionError):
        return False
    if isinstance(method, _SentOnce):
        return True
    if not isinstance(method, UnaryUnaryWrapper):
        return False
    stub.SandboxCreateV2 = _SentOnce(method)
    return True


class _SentOnce:
    """An SDK call sent without the SDK's own retries (``retry=None``): a failure reaches the caller."""

    def __init__(self, method: Any) -> None:
        self.method = method

    async def __call__(self, request: Any, *, metadata: Any = None, **_: Any) -> Any:
        return await self.method(request, retry=None, metadata=metadata)


def _retry_after(error: BaseException) -> float | None:
    for detail in getattr(error, "_grpc_details", None) or []:
        seconds = getattr(detail, "retry_after_secs", None)
        if seconds:
            return float(seconds)
    return None


async def _close_quietly(session: _Session) -> None:
    for handle in list(session.handles.values()):
        with contextlib.suppress(Exception):
            await handle.detach.aio()
    with contextlib.suppress(Exception):
        await session.client.close.aio()
