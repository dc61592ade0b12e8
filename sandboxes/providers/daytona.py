"""DaytonaProvider: Daytona sandboxes through the official SDK's async client.

What Daytona gives and what it does not (see ``capabilities``):

- stdout and stderr come back merged: Daytona's ``process/execute`` answers
  one ``result`` string, so ``ExecutionResult.stdout`` holds both streams and
  ``stderr`` is always empty. Nothing here pretends to separate them.
- No streaming and no stdin: Daytona streams only through sessions, which
  take neither env, cwd nor a timeout, so ``stream_execution`` raises
  ``UnsupportedOperation`` rather than fall back to ``export ... &&`` strings.
- The per-command timeout is enforced inside the sandbox by coreutils
  ``timeout``, which kills the command's process group and keeps the output
  so far; Daytona's own timeout (a 408 that drops the output) is the backstop.
- Labels are Daytona labels, so ``find`` works from any process.

The SDK's aiohttp client is bound to one event loop, so it lives on a
private loop thread (``_loop_thread``) and this provider works from any
asyncio loop and from the blocking facade.
"""

from __future__ import annotations

import math
import os
import shlex
import time
import uuid
import warnings
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import daytona as sdk  # the [daytona] extra; a ModuleNotFoundError names it for the manager

from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxNotFoundError,
    SetupFailed,
    UnsupportedOperation,
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
from ..provider import SandboxProvider, validate_command
from ..secrets import scrub
from ._loop_thread import LoopThread

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox

T = TypeVar("T")

LANGUAGE_LABEL = "code-toolbox-language"  # the SDK adds it to every sandbox it creates
MAX_INLINE_COMMAND = 100_000  # bytes; longer commands go through a script file
TIMEOUT_GRACE = 2  # seconds between TERM and KILL of a timed-out command
DAEMON_MARGIN = 10  # seconds the daemon's own timeout waits beyond ours
GONE_STATES = {"destroyed", "destroying"}
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


class DaytonaProvider(SandboxProvider):
    """Sandboxes on Daytona. Credentials: ``DAYTONA_API_KEY`` (and optionally
    ``DAYTONA_API_URL``, ``DAYTONA_TARGET``), or the constructor's arguments.

    ``execute_command`` returns stdout and stderr merged in ``stdout`` (Daytona's
    execute API merges them); ``stderr`` is empty.
    """

    name = "daytona"
    merges_stderr = True
    capabilities = Capabilities(
        streaming=False,  # only through sessions, which take no env/cwd/timeout
        stdin=False,  # process/execute takes no input
        files=True,
        background_processes=True,
        network_control=True,  # networkBlockAll
        native_labels=True,
        cross_process_reuse=True,
    )

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
        key = api_key or os.environ.get("DAYTONA_API_KEY")
        if not key:
            raise ProviderUnavailable(
                "Daytona needs an API key: set DAYTONA_API_KEY (from https://app.daytona.io/dashboard/keys) "
                "or pass api_key= to DaytonaProvider / Sandbox.configure(daytona_api_key=...)",
                provider=self.name,
            )
        self._api_key = key
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
        self._max_output: dict[str, int] = {}
        self._working_dir: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<DaytonaProvider url={self._api_url or 'default'!r}>"

    # -- the SDK, on its own loop ---------------------------------------------------
    def _sdk_client(self) -> AsyncDaytona:
        """The AsyncDaytona client; only ever called on the private loop."""
        if self._client is None:
            config = sdk.DaytonaConfig(
                api_key=self._api_key,
                api_url=self._api_url,
                target=self._target,
                use_deprecated_polling=self._polling,
            )
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*deprecated_polling.*|.*DAYTONA_USE_DEPRECATED_POLLING.*")
                warnings.filterwarnings("ignore", message="Polling-only mode", category=DeprecationWarning)
                self._client = sdk.AsyncDaytona(config)
        return self._client

    async def _call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, sandbox_id: str | None = None) -> T:
        """Run an SDK coroutine on the SDK's loop and map its errors to the taxonomy."""
        try:
            return await self._loop.run(function, *args)
        except sdk.DaytonaError as error:
            if sandbox_id is not None and _is_not_found(error):
                self._handles.pop(sandbox_id, None)
            raise self._map_error(error, sandbox_id) from None

    async def _handle(self, sandbox_id: str) -> AsyncSandbox:
        """The SDK's sandbox object (cached: saves a GET per operation)."""
        handle = self._handles.get(sandbox_id)
        if handle is not None:
            return handle
        if not sandbox_id:
            raise self._not_found(sandbox_id)

        async def get() -> AsyncSandbox:
            return await self._sdk_client().get(sandbox_id)

        handle = await self._call(get, sandbox_id=sandbox_id)
        if _state(handle) in GONE_STATES:
            raise self._not_found(sandbox_id)
        self._handles[sandbox_id] = handle
        return handle

    def _map_error(self, error: Exception, sandbox_id: str | None) -> Exception:
        message = self._scrub(getattr(error, "message", None) or str(error))
        status = getattr(error, "status_code", None)
        where = f"daytona ({status}): {message}" if status else f"daytona: {message}"
        if isinstance(error, sdk.DaytonaFileNotFoundError):
            return FileNotFoundError(message)
        if isinstance(error, sdk.DaytonaNotFoundError) and sandbox_id is not None:
            return SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'daytona' ({message})")
        if isinstance(error, sdk.DaytonaAuthenticationError | sdk.DaytonaForbiddenError):
            return AuthenticationError(f"{where}; check DAYTONA_API_KEY (the key itself is never shown)", provider=self.name)
        if isinstance(error, sdk.DaytonaRateLimitError) or status == 429:
            return RateLimitError(where, provider=self.name, retry_after=_retry_after(getattr(error, "headers", {})))
        if isinstance(error, sdk.DaytonaBadRequestError | sdk.DaytonaUnprocessableEntityError):
            return ValueError(f"Daytona rejected the request: {message}")
        return ProviderError(where, provider=self.name)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._api_key)

    # -- lifecycle -------------------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        params = self._create_params(config)

        async def create() -> AsyncSandbox:
            return await self._sdk_client().create(params, timeout=self.create_timeout)

        handle = await self._call(create)
        self._handles[handle.id] = handle
        self._max_output[handle.id] = config.max_output_bytes
        try:
            if config.working_dir:
                await self._checked(handle.id, ["mkdir", "-p", config.working_dir])
                self._working_dir[handle.id] = config.working_dir
            for command in config.setup_commands:
                await self._checked(handle.id, command)
        except BaseException:
            await self.destroy_sandbox(handle.id)  # never leave a half-created sandbox
            raise
        return self._info(handle)

    async def _checked(self, sandbox_id: str, command: Command) -> None:
        result = await self.execute_command(sandbox_id, command)
        if not result.success:
            raise SetupFailed(result, self.name)

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

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        self._handles.pop(sandbox_id, None)  # always ask: another process may have destroyed it
        try:
            return self._info(await self._handle(sandbox_id))
        except SandboxNotFoundError:
            return None

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        wanted = {str(k): str(v) for k, v in (labels or {}).items()}

        async def collect() -> list[Any]:
            query = sdk.ListSandboxesQuery(labels=wanted or None)
            return [handle async for handle in self._sdk_client().list(query)]  # follows every cursor

        found = []
        for handle in await self._call(collect):
            if _state(handle) in GONE_STATES:
                continue
            info = self._info(handle)
            if all(info.labels.get(k) == v for k, v in wanted.items()):
                found.append(info)
        return found

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        self._handles.pop(sandbox_id, None)
        try:
            handle = await self._handle(sandbox_id)
        except SandboxNotFoundError:
            return False
        try:
            await self._call(handle.delete, sandbox_id=sandbox_id)
        except SandboxNotFoundError:
            return False
        finally:
            self._handles.pop(sandbox_id, None)
            self._max_output.pop(sandbox_id, None)
            self._working_dir.pop(sandbox_id, None)
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
        """Run a command; stdout and stderr come back merged in ``stdout``."""
        validate_command(command)
        if stdin is not None:
            raise UnsupportedOperation(self.name, "stdin", "Daytona's execute API takes no input: write it with write_file and redirect from it")
        limit = timeout if timeout is not None else self.command_timeout
        handle = await self._handle(sandbox_id)
        script = shlex.join(command) if not isinstance(command, str) else command
        cleanup = None
        if len(script.encode()) > MAX_INLINE_COMMAND:
            cleanup = f"/tmp/.sandboxes-cmd-{uuid.uuid4().hex}.sh"
            await self.write_file(sandbox_id, cleanup, script.encode())
            script = f"trap 'rm -f {cleanup}' EXIT; . {cleanup}"
        if isinstance(command, str) or cleanup:
            inner = ["sh", "-c", script]
        else:
            inner = [str(part) for part in command]
        seconds = max(1, math.ceil(limit))
        wrapped = shlex.join(["timeout", "-k", str(TIMEOUT_GRACE), f"{limit:g}", *inner])
        workdir = cwd or self._working_dir.get(sandbox_id)
        started = time.monotonic()
        try:
            response = await self._call(
                handle.process.exec, wrapped, workdir, dict(env) if env else None, seconds + TIMEOUT_GRACE + DAEMON_MARGIN,
                sandbox_id=sandbox_id,
            )  # fmt: skip
        except ProviderError as error:
            if "PROCESS_EXECUTION_TIMEOUT" in str(error) or "execution timeout" in str(error):
                return ExecutionResult(exit_code=-1, timed_out=True, duration_ms=_ms(started), command=command)
            raise
        elapsed = time.monotonic() - started
        buffer = OutputBuffer(self._max_output.get(sandbox_id, DEFAULT_MAX_OUTPUT_BYTES))
        buffer.write((response.result or "").encode())
        exit_code = response.exit_code if response.exit_code is not None else -1
        timed_out = exit_code in (124, 137) and elapsed >= limit * 0.95
        return ExecutionResult(
            stdout=buffer.text(),
            stderr="",
            exit_code=exit_code,
            duration_ms=elapsed * 1000,
            timed_out=timed_out,
            truncated=buffer.truncated,
            command=command,
        )

    # -- files -------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        handle = await self._handle(sandbox_id)
        try:
            await self._call(handle.fs.upload_file, bytes(data), path, sandbox_id=sandbox_id)
        except ValueError as error:
            raise _file_error(str(error), path) from None

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        handle = await self._handle(sandbox_id)
        try:
            data = await self._call(handle.fs.download_file, path, sandbox_id=sandbox_id)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file in Daytona sandbox {sandbox_id}: {path}") from None
        except (ValueError, ProviderError) as error:
            raise _file_error(str(error), path) from None
        return bytes(data or b"")


def _file_error(message: str, path: str) -> Exception:
    lowered = message.lower()
    if "directory" in lowered:
        return IsADirectoryError(f"is a directory in the sandbox: {path}")
    if "permission" in lowered or "denied" in lowered:
        return PermissionError(f"permission denied in the sandbox: {path}")
    return ProviderError(f"daytona: file operation on {path} failed: {message}", provider="daytona")


def _is_not_found(error: Exception) -> bool:
    return isinstance(error, sdk.DaytonaNotFoundError) and not isinstance(error, sdk.DaytonaFileNotFoundError)


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


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
