"""DaytonaDriver: Daytona sandboxes through the official SDK's async client.

What Daytona gives and what it does not (the spec's capabilities say so):

- stdout and stderr come back merged: Daytona's ``process/execute`` answers
  one ``result`` string, so every ``Output`` is ``stdout``.
- No streaming and no stdin: Daytona streams only through sessions, which
  take neither env, cwd nor a timeout; ``exec`` yields the whole output at the end.
- The per-command timeout is enforced inside the sandbox by coreutils
  ``timeout``, which kills the command's process group and keeps the output
  so far; Daytona's own timeout (a 408 that drops the output) is the backstop.
- Labels are Daytona labels, so ``find`` works from any process.

The SDK's aiohttp client is bound to one event loop, so it lives on a
private loop thread (``_loop_thread``) and this driver works from any
asyncio loop and from the blocking facade.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shlex
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import daytona as sdk  # the [daytona] extra; a ModuleNotFoundError names it for the manager

from ..driver import ErrorMap, Event, Exit, Output, map_errors
from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxNotFoundError,
    UnsupportedOperation,
)
from ..models import DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_LIFETIME_SECONDS, SandboxConfig, SandboxInfo
from ..secrets import scrub
from ._loop_thread import LoopThread

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

T = TypeVar("T")

LANGUAGE_LABEL = "code-toolbox-language"  # the SDK adds it to every sandbox it creates
TIMEOUT_GRACE = 2  # seconds between TERM and KILL of a timed-out command
DAEMON_MARGIN = 10  # seconds the daemon's own timeout waits beyond ours
GONE_STATES = {"destroyed", "destroying"}
AT_CAPACITY = re.compile(r"\b(limit|quota)\b.{0,40}\b(reached|exceeded)\b", re.IGNORECASE)
"""Daytona's answers when the organisation's sandboxes or resources are all in use."""
PROVIDER_CONFIG_KEYS = {
    "snapshot",
    "target",
    "os_user",
    "public",
    "name",
    "language",
    "auto_stop_interval",
    "auto_archive_interval",
    "auto_delete_interval",
    "disk_gb",
    "gpu",
}


def _errors(api_key: str, sandbox_id: str | None = None, path: str | None = None) -> ErrorMap:
    """The SDK's errors as this library's, for one call (about ``sandbox_id``, on the file ``path``)."""

    def text(error: BaseException) -> str:
        return scrub(getattr(error, "message", None) or str(error), api_key)

    def failed(error: BaseException) -> Exception:
        status = getattr(error, "status_code", None)
        return ProviderError(f"daytona ({status}): {text(error)}" if status else f"daytona: {text(error)}", provider="daytona")

    def rejected(error: BaseException) -> Exception:
        if not isinstance(error, sdk.DaytonaBadRequestError | sdk.DaytonaUnprocessableEntityError) and getattr(error, "status_code", None) != 400:
            return failed(error)
        lowered = text(error).lower()  # on a file, the daemon names the problem only in its message
        if path is not None and "not a directory" in lowered:
            return NotADirectoryError(errno.ENOTDIR, "not a directory in the Daytona sandbox", path)
        if path is not None and "directory" in lowered:
            return IsADirectoryError(errno.EISDIR, "is a directory in the Daytona sandbox", path)
        if path is not None and ("permission" in lowered or "denied" in lowered):
            return PermissionError(errno.EACCES, "permission denied in the Daytona sandbox", path)
        return ValueError(f"Daytona rejected the request: {text(error)}")

    def timed_out(error: BaseException) -> Exception:
        daemon = isinstance(error, sdk.DaytonaProcessExecutionTimeoutError) or "execution timeout" in text(error)
        return TimeoutError(text(error)) if daemon else failed(error)  # exec turns it into Exit(timed_out=True)

    def missing(error: BaseException) -> Exception:
        if sandbox_id is None:
            return failed(error)
        return SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'daytona' ({text(error)})")

    files: ErrorMap = ()
    if path is not None:
        files = (
            (sdk.DaytonaFileNotFoundError, lambda e: FileNotFoundError(errno.ENOENT, f"no such file in Daytona sandbox {sandbox_id}", path)),
            (sdk.DaytonaFileAccessDeniedError, lambda e: PermissionError(errno.EACCES, "permission denied in the Daytona sandbox", path)),
        )

    def throttled(error: BaseException) -> Exception:
        return RateLimitError(str(failed(error)), provider="daytona", retry_after=_retry_after(getattr(error, "headers", None)))

    def unless_at_capacity(otherwise: Callable[[BaseException], Exception]) -> Callable[[BaseException], Exception]:
        # The organisation's resources are all in use ("Sandbox resource limit reached (16)",
        # "Total CPU limit exceeded"): a 403 or a 400 that is a "slow down", not a bad key or request.
        return lambda error: throttled(error) if AT_CAPACITY.search(text(error)) else otherwise(error)

    return (
        *files,
        (sdk.DaytonaTimeoutError, timed_out),
        (sdk.DaytonaNotFoundError, missing),
        (
            (sdk.DaytonaAuthenticationError, sdk.DaytonaForbiddenError),
            unless_at_capacity(lambda e: AuthenticationError(f"{failed(e)}; check DAYTONA_API_KEY (the key itself is never shown)", provider="daytona")),
        ),
        (sdk.DaytonaRateLimitError, throttled),
        (sdk.DaytonaError, unless_at_capacity(rejected)),  # a 400 (the upload's is a bare DaytonaError), else the provider failed
    )


class DaytonaDriver:
    """Sandboxes on Daytona. Credentials: ``api_key`` (``DAYTONA_API_KEY``); ``api_url`` and ``target``
    default to ``DAYTONA_API_URL`` and ``DAYTONA_TARGET``."""

    name = "daytona"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        target: str | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        create_timeout: float = 120.0,
        use_deprecated_polling: bool | None = None,
    ) -> None:
        if not api_key:
            raise ProviderUnavailable(
                "Daytona needs an API key: set DAYTONA_API_KEY (from https://app.daytona.io/dashboard/keys) "
                "or pass api_key= to DaytonaProvider / Sandbox.configure(daytona_api_key=...)",
                provider=self.name,
            )
        self._api_key = api_key
        self._api_url = api_url or os.environ.get("DAYTONA_API_URL") or os.environ.get("DAYTONA_SERVER_URL")
        self._target = target or os.environ.get("DAYTONA_TARGET")
        if use_deprecated_polling is None:
            flag = os.environ.get("DAYTONA_USE_DEPRECATED_POLLING", "")
            use_deprecated_polling = flag.strip().lower() in ("1", "true", "yes", "on")
        self._polling = use_deprecated_polling
        self.command_timeout = command_timeout
        self.lifetime = lifetime
        self.create_timeout = create_timeout
        self._loop = LoopThread("daytona-sdk")
        self._client: AsyncDaytona | None = None
        self._handles: dict[str, AsyncSandbox] = {}

    def __repr__(self) -> str:
        return f"<DaytonaDriver url={self._api_url or 'default'!r}>"

    # -- the SDK, on its own loop ---------------------------------------------------
    def _sdk_client(self) -> AsyncDaytona:
        """The AsyncDaytona client; only ever called on the private loop."""
        if self._client is None:
            config = sdk.DaytonaConfig(api_key=self._api_key, api_url=self._api_url, target=self._target, use_deprecated_polling=self._polling)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecated_polling.*|.*DAYTONA_USE_DEPRECATED_POLLING.*")
                warnings.filterwarnings("ignore", message="Polling-only mode", category=DeprecationWarning)
                self._client = sdk.AsyncDaytona(config)
        return self._client

    async def _call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, sandbox_id: str | None = None, path: str | None = None) -> T:
        """Run an SDK coroutine on the SDK's loop, its errors mapped by ``_errors``."""
        try:
            with map_errors(_errors(self._api_key, sandbox_id, path)):
                return await self._loop.run(function, *args)
        except SandboxNotFoundError:
            self._handles.pop(sandbox_id or "", None)
            raise

    async def _handle(self, sandbox_id: str) -> AsyncSandbox:
        """The SDK's sandbox object (cached: saves a GET per operation)."""
        handle = self._handles.get(sandbox_id)
        if handle is not None:
            return handle
        if sandbox_id:

            async def get() -> AsyncSandbox:
                return await self._sdk_client().get(sandbox_id)

            handle = await self._call(get, sandbox_id=sandbox_id)
        if handle is None or _state(handle) in GONE_STATES:
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'daytona'")
        self._handles[sandbox_id] = handle
        return handle

    # -- lifecycle -------------------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        params = self._create_params(config)

        async def create() -> AsyncSandbox:
            return await self._sdk_client().create(params, timeout=self.create_timeout)

        handle = await self._call(create)
        self._handles[handle.id] = handle
        return self._info(handle)

    def _create_params(self, config: SandboxConfig) -> Any:
        extra = dict(config.provider_config)
        unknown = set(extra) - PROVIDER_CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown Daytona provider_config keys {sorted(unknown)}: use {', '.join(sorted(PROVIDER_CONFIG_KEYS))}")
        if LANGUAGE_LABEL in config.labels:
            raise ValueError(f"the label {LANGUAGE_LABEL!r} is reserved by Daytona; choose another key")
        lifetime = config.lifetime or self.lifetime
        common: dict[str, Any] = {
            "labels": dict(config.labels),
            "env_vars": dict(config.env),
            "ttl_minutes": max(1, math.ceil(lifetime / 60)),
            "language": extra.pop("language", None),
        }
        if config.network is not None:
            common["network_block_all"] = not config.network
        for key in ("target", "os_user", "public", "name", "auto_stop_interval", "auto_archive_interval", "auto_delete_interval"):
            if key in extra:
                common[key] = extra[key]
        resources = {
            "cpu": math.ceil(config.cpus) if config.cpus else None,
            "memory": math.ceil(config.memory_mb / 1024) if config.memory_mb else None,
            "disk": extra.get("disk_gb"),
            "gpu": extra.get("gpu"),
        }
        if config.image:
            wanted = {k: v for k, v in resources.items() if v is not None}
            return sdk.CreateSandboxFromImageParams(
                image=config.image,
                resources=sdk.Resources(**wanted) if wanted else None,  # type: ignore[arg-type]  # the SDK types gpu as an enum; we pass its count
                **common,
            )
        if any(v is not None for v in resources.values()):
            raise UnsupportedOperation(
                self.name,
                "cpu/memory/disk/gpu without an image",
                "a Daytona snapshot fixes its resources; give image=... (for example 'python:3.12') to choose them",
            )
        return sdk.CreateSandboxFromSnapshotParams(snapshot=extra.get("snapshot"), **common)

    def _info(self, handle: Any) -> SandboxInfo:
        labels = dict(handle.labels or {})
        labels.pop(LANGUAGE_LABEL, None)
        state = _state(handle)
        return SandboxInfo(
            id=handle.id,
            provider=self.name,
            labels=labels,
            state="running" if state == "started" else state,
            created_at=_timestamp(getattr(handle, "created_at", None)),
            expires_at=_timestamp(getattr(handle, "auto_destroy_at", None)),
            image=getattr(handle, "snapshot", None),
            metadata={
                "target": getattr(handle, "target", None),
                "cpu": getattr(handle, "cpu", None),
                "memory_gb": getattr(handle, "memory", None),
                "disk_gb": getattr(handle, "disk", None),
                "network_block_all": getattr(handle, "network_block_all", None),
            },
        )

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        self._handles.pop(sandbox_id, None)  # always ask: another process may have destroyed it
        try:
            return self._info(await self._handle(sandbox_id))
        except SandboxNotFoundError:
            return None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        wanted = dict(labels)

        async def collect() -> list[Any]:
            query = sdk.ListSandboxesQuery(labels=wanted or None)
            return [handle async for handle in self._sdk_client().list(query)]  # follows every cursor

        found = [self._info(handle) for handle in await self._call(collect) if _state(handle) not in GONE_STATES]
        return [info for info in found if all(info.labels.get(k) == v for k, v in wanted.items())]

    async def destroy(self, sandbox_id: str) -> bool:
        self._handles.pop(sandbox_id, None)
        try:
            handle = await self._handle(sandbox_id)
            await self._call(handle.delete, sandbox_id=sandbox_id)
        except SandboxNotFoundError:
            return False
        finally:
            self._handles.pop(sandbox_id, None)
        return True

    async def health_check(self) -> bool:
        """Reads one page of the sandbox list: creates nothing, costs nothing."""

        async def first_page() -> None:
            async for _ in self._sdk_client().list(sdk.ListSandboxesQuery(limit=1)):
                break

        try:
            await self._call(first_page)
        except (ProviderError, ValueError):
            return False
        return True

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        """Close the SDK client and stop its loop thread (blocking; idempotent)."""

        async def close_client() -> None:
            if self._client is not None:
                await self._client.close()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
                self._client = None

        self._handles.clear()
        self._loop.close(close_client)

    # -- commands ------------------------------------------------------------------------
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
        """Run ``argv`` under coreutils ``timeout``; its output (stderr merged into stdout) comes whole at the end."""
        if stdin is not None:
            raise UnsupportedOperation(self.name, "stdin", "Daytona's execute API takes no input")
        handle = await self._handle(sandbox_id)
        wrapped = shlex.join(["timeout", "-k", str(TIMEOUT_GRACE), f"{timeout:g}", *argv])
        daemon_timeout = math.ceil(timeout) + TIMEOUT_GRACE + DAEMON_MARGIN
        started = time.monotonic()
        try:
            response = await self._call(handle.process.exec, wrapped, cwd, dict(env) or None, daemon_timeout, sandbox_id=sandbox_id)
        except TimeoutError:  # the daemon's own timeout fired: the output is lost
            yield Exit(-1, timed_out=True, duration_ms=(time.monotonic() - started) * 1000)
            return
        elapsed = time.monotonic() - started
        if response.result:
            yield Output("stdout", response.result.encode())
        exit_code = response.exit_code if response.exit_code is not None else -1
        yield Exit(exit_code, timed_out=exit_code in (124, 137) and elapsed >= timeout * 0.95, duration_ms=elapsed * 1000)

    # -- files -------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        handle = await self._handle(sandbox_id)
        await self._call(handle.fs.upload_file, bytes(data), path, sandbox_id=sandbox_id, path=path)

    async def write_files(self, sandbox_id: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Every file in one multipart request to the toolbox (a round trip each, otherwise)."""
        handle = await self._handle(sandbox_id)
        uploads = [sdk.FileUpload(source=bytes(data), destination=path) for path, data in files]
        await self._call(handle.fs.upload_files, uploads, sandbox_id=sandbox_id, path=files[0][0] if files else None)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        """The whole file (``limit`` is left to the engine: Daytona sends a file in one piece)."""
        handle = await self._handle(sandbox_id)
        data = await self._call(handle.fs.download_file, path, sandbox_id=sandbox_id, path=path)
        return bytes(data or b"")


def _state(handle: Any) -> str:
    state = getattr(handle, "state", None)
    return str(getattr(state, "value", state) or "unknown")


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, Any] | None) -> float | None:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None
