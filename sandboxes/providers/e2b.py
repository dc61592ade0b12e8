"""E2B sandboxes through the official SDK's async client.

The control plane (create, connect, get, list, kill) goes through the SDK's
generated async REST client so that the answer's headers stay visible: a 429's
``Retry-After`` becomes ``RateLimitError.retry_after`` and ``X-Next-Token``
drives paging. Commands and files go through ``AsyncSandbox`` (envd's Connect
RPC and ``/files``). Nothing here is bound to an event loop: SDK objects are
made per call from plain connection data, so one provider serves any loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import anyio
import httpx
from e2b import AsyncSandbox
from e2b.api.client.api.sandboxes import (
    delete_sandboxes_sandbox_id,
    get_sandboxes_sandbox_id,
    get_v2_sandboxes,
    post_v2_sandboxes,
    post_v_2_sandboxes_sandbox_id_connect,
)
from e2b.api.client.models import ConnectSandboxV2, NewSandboxV2, SandboxState
from e2b.api.client.types import UNSET, Response
from e2b.api.client_async import get_api_client
from e2b.connection_config import ConnectionConfig
from e2b.exceptions import (
    AuthenticationException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    ServiceBusyException,
)
from e2b.sandbox.commands.command_handle import CommandExitException
from packaging.version import Version

from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
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
    OutputChunk,
    SandboxConfig,
    SandboxInfo,
)
from ..provider import SandboxProvider, as_bytes, shell_command, validate_command
from ..secrets import Secret, scrub
from ..streaming import ExitStatus, StreamItem, streaming

API_KEY_VARIABLE = "E2B_API_KEY"
MAX_ARG = 100_000  # below the kernel's 128 KiB per-argument limit; longer commands go through a file
STDIN_CHUNK = 256 * 1024
KILL_GRACE = 10.0  # after killing a timed-out command, how long its stream may take to end
STREAM_GRACE = 30.0  # the SDK's own stream deadline sits this far past ours, as a backstop
TIMED_OUT_EXIT_CODE = 124
_LIVE_STATES = [SandboxState.RUNNING, SandboxState.PAUSED]


@dataclass(frozen=True)
class _Ref:
    """What it takes to talk to one sandbox's envd: plain data, no client, no loop."""

    sandbox_id: str
    domain: str | None
    envd_version: str
    envd_access_token: str | None
    traffic_access_token: str | None


class E2BProvider(SandboxProvider):
    """Sandboxes on E2B (https://e2b.dev); credentials from ``E2B_API_KEY`` or ``api_key=``."""

    name = "e2b"
    capabilities = Capabilities(
        streaming=True,
        stdin=True,
        files=True,
        background_processes=True,
        network_control=True,
        native_labels=True,
        cross_process_reuse=True,
        snapshots=False,
        gpu=False,
    )

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        domain: str | None = None,
        template: str | None = None,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        request_timeout: float | None = None,
        retries: int = 0,
    ) -> None:
        key = api_key or os.environ.get(API_KEY_VARIABLE)
        if not key:
            raise ProviderUnavailable(
                f"the e2b provider needs an API key: set {API_KEY_VARIABLE} (https://e2b.dev/dashboard?tab=keys) or pass api_key=",
                provider=self.name,
            )
        self.__key = Secret(key)
        self.api_url = api_url
        self.sandbox_url = sandbox_url
        self.domain = domain
        self.template = template
        self.lifetime = lifetime
        self.command_timeout = command_timeout
        self.request_timeout = request_timeout
        # SDK-level retries of the REST calls; 0 leaves retrying to the Manager's
        # RetryPolicy, which sees Retry-After through RateLimitError.
        self.retries = retries
        self._refs: dict[str, _Ref] = {}
        self._max_output: dict[str, int] = {}
        self._workdirs: dict[str, str] = {}

    def __repr__(self) -> str:
        where = f" api_url={self.api_url!r}" if self.api_url else ""
        return f"<E2BProvider{where}>"

    # -- plumbing --------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"api_key": self.__key.value, "retries": self.retries}
        for name in ("api_url", "sandbox_url", "domain", "request_timeout"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params

    def _scrub(self, text: str) -> str:
        return scrub(text, self.__key)

    async def _api(self, action: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Response[Any]:
        """One control-plane request; transport failures become ProviderError."""
        client = get_api_client(ConnectionConfig(**self._params()))
        try:
            response: Response[Any] = await call(*args, client=client, **kwargs)
            return response
        except (httpx.HTTPError, OSError) as error:
            raise ProviderError(f"could not reach E2B to {action}: {self._describe(error)}", provider=self.name) from None
        except Exception as error:
            if _is_transport_error(error):
                raise ProviderError(f"could not reach E2B to {action}: {self._describe(error)}", provider=self.name) from None
            raise

    def _api_failure(self, response: Response[Any], action: str) -> SandboxError:
        status = int(response.status_code)
        message = self._scrub(_message(response.content))
        text = f"E2B answered {status} to {action}" + (f": {message}" if message else "")
        if status in (401, 403):
            return AuthenticationError(f"{text} (check {API_KEY_VARIABLE})", provider=self.name)
        if status == 429:
            return RateLimitError(text, provider=self.name, retry_after=_retry_after(response.headers))
        if status >= 500 or status == 408:
            return ProviderError(text, provider=self.name)
        return SandboxError(text)

    def _describe(self, error: BaseException) -> str:
        return self._scrub(f"{type(error).__name__}: {error}".strip())

    def _translate(self, error: Exception, sandbox_id: str, path: str | None = None) -> Exception:
        """An SDK error from envd (commands, files) as this library's taxonomy."""
        text = self._scrub(str(error))
        if isinstance(error, (SandboxNotFoundException, SandboxNotRunningException)):
            self._forget(sandbox_id)
            return SandboxNotFoundError(f"sandbox {sandbox_id} is gone on e2b: {text}")
        if path is not None:
            if isinstance(error, (FileNotFoundException, NotFoundException)):
                return FileNotFoundError(errno.ENOENT, f"no such file in e2b sandbox {sandbox_id}", path)
            if "is a directory" in text:
                return IsADirectoryError(errno.EISDIR, f"is a directory in e2b sandbox {sandbox_id}", path)
            if "not a directory" in text:
                return NotADirectoryError(errno.ENOTDIR, f"not a directory in e2b sandbox {sandbox_id}", path)
        if "permission denied" in text.lower():
            return PermissionError(errno.EACCES, f"permission denied in e2b sandbox {sandbox_id}", path or "")
        if isinstance(error, AuthenticationException):
            return AuthenticationError(f"e2b rejected the credentials: {text} (check {API_KEY_VARIABLE})", provider=self.name)
        if isinstance(error, RateLimitException):
            return RateLimitError(f"e2b is rate limiting: {text}", provider=self.name)
        if isinstance(error, (SandboxException, ServiceBusyException, httpx.HTTPError, OSError)) or _is_transport_error(error):
            return ProviderError(f"e2b failed on sandbox {sandbox_id}: {self._describe(error)}", provider=self.name)
        return error

    def _forget(self, sandbox_id: str) -> None:
        self._refs.pop(sandbox_id, None)
        self._max_output.pop(sandbox_id, None)
        self._workdirs.pop(sandbox_id, None)

    def _remember(self, parsed: Any) -> _Ref:
        ref = _Ref(
            sandbox_id=parsed.sandbox_id,
            domain=_value(parsed.domain),
            envd_version=parsed.envd_version,
            envd_access_token=_value(parsed.envd_access_token),
            traffic_access_token=_value(getattr(parsed, "traffic_access_token", UNSET)),
        )
        self._refs[ref.sandbox_id] = ref
        return ref

    async def _ref(self, sandbox_id: str) -> _Ref:
        """The sandbox's connection data; asks E2B (connect) the first time this process sees it."""
        ref = self._refs.get(sandbox_id)
        if ref is not None:
            return ref
        response = await self._api(
            f"connect to sandbox {sandbox_id}",
            post_v_2_sandboxes_sandbox_id_connect.asyncio_detailed,
            sandbox_id,
            body=ConnectSandboxV2(),
        )
        if response.status_code == 404:
            raise self._not_found(sandbox_id)
        if response.status_code >= 300 or response.parsed is None or not hasattr(response.parsed, "sandbox_id"):
            raise self._api_failure(response, f"connect to sandbox {sandbox_id}")
        return self._remember(response.parsed)

    async def _sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """A fresh SDK handle on the current event loop (the SDK's own connect, minus the request)."""
        ref = await self._ref(sandbox_id)
        headers = {"E2b-Sandbox-Id": ref.sandbox_id, "E2b-Sandbox-Port": str(ConnectionConfig.envd_port)}
        if ref.envd_access_token:
            headers["X-Access-Token"] = ref.envd_access_token
        config = ConnectionConfig(extra_sandbox_headers=headers, **self._params())
        return AsyncSandbox(
            sandbox_id=ref.sandbox_id,
            sandbox_domain=ref.domain,
            envd_version=Version(ref.envd_version),
            envd_access_token=ref.envd_access_token,
            traffic_access_token=ref.traffic_access_token,
            connection_config=config,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        if config.memory_mb is not None or config.cpus is not None:
            raise UnsupportedOperation(
                self.name,
                "per-sandbox memory or cpus",
                "E2B sizes a sandbox by its template: build one with the resources you need",
            )
        template = config.image or self.template or AsyncSandbox.default_template
        lifetime = config.lifetime if config.lifetime is not None else self.lifetime
        body = NewSandboxV2(
            template_id=template,
            timeout=max(1, math.ceil(lifetime)),
            metadata=dict(config.labels),
            env_vars=dict(config.env),
            allow_internet_access=config.network if config.network is not None else UNSET,
        )
        response = await self._api("create a sandbox", post_v2_sandboxes.asyncio_detailed, body=body)
        if response.status_code >= 300 or response.parsed is None or not hasattr(response.parsed, "sandbox_id"):
            if response.status_code in (400, 404) and "template" in _message(response.content).lower():
                raise ValueError(f"E2B has no template {template!r}: {self._scrub(_message(response.content))}")
            raise self._api_failure(response, "create a sandbox")
        ref = self._remember(response.parsed)
        sandbox_id = ref.sandbox_id
        self._max_output[sandbox_id] = config.max_output_bytes
        try:
            if Version(ref.envd_version) < Version("0.1.0"):
                raise ProviderError(f"E2B template {template!r} runs an envd too old for this SDK: rebuild it", provider=self.name)
            if config.working_dir:
                made = await self.execute_command(sandbox_id, ["mkdir", "-p", config.working_dir])
                if not made.success:
                    raise ProviderError(f"cannot create the working directory in a new sandbox:\n{made.describe()}", provider=self.name)
                self._workdirs[sandbox_id] = config.working_dir
            for command in config.setup_commands:
                result = await self.execute_command(sandbox_id, command)
                if not result.success:
                    raise SetupFailed(result, self.name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.destroy_sandbox(sandbox_id)
            raise
        now = time.time()
        return SandboxInfo(
            id=sandbox_id,
            provider=self.name,
            labels=dict(config.labels),
            state="running",
            created_at=now,
            expires_at=now + lifetime,
            image=template,
            metadata={"envd_version": ref.envd_version},
        )

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        response = await self._api(f"get sandbox {sandbox_id}", get_sandboxes_sandbox_id.asyncio_detailed, sandbox_id)
        if response.status_code == 404:
            self._forget(sandbox_id)
            return None
        if response.status_code >= 300 or response.parsed is None or not hasattr(response.parsed, "sandbox_id"):
            raise self._api_failure(response, f"get sandbox {sandbox_id}")
        return self._info(response.parsed)

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        wanted = {str(k): str(v) for k, v in (labels or {}).items()}
        # encoded as the SDK's own paginator does: each part quoted, then the whole form-encoded
        metadata = urlencode({quote(k): quote(v) for k, v in wanted.items()}) if wanted else UNSET
        found: list[SandboxInfo] = []
        token: str | None = None
        while True:
            response = await self._api(
                "list sandboxes",
                get_v2_sandboxes.asyncio_detailed,
                metadata=metadata,
                state=_LIVE_STATES,
                next_token=token if token else UNSET,
            )
            if response.status_code >= 300 or not isinstance(response.parsed, list):
                raise self._api_failure(response, "list sandboxes")
            for listed in response.parsed:
                info = self._info(listed)
                if all(info.labels.get(k) == v for k, v in wanted.items()):
                    found.append(info)
            token = response.headers.get("x-next-token")
            if not token:
                return found

    def _info(self, sandbox: Any) -> SandboxInfo:
        metadata = _value(sandbox.metadata)
        labels = dict(getattr(metadata, "additional_properties", metadata) or {})
        state = _value(sandbox.state)
        return SandboxInfo(
            id=sandbox.sandbox_id,
            provider=self.name,
            labels={str(k): str(v) for k, v in labels.items()},
            state=str(state.value) if state is not None else "running",
            created_at=sandbox.started_at.timestamp(),
            expires_at=sandbox.end_at.timestamp(),
            image=sandbox.template_id,
            metadata={
                "cpu_count": sandbox.cpu_count,
                "memory_mb": sandbox.memory_mb,
                "envd_version": sandbox.envd_version,
            },
        )

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        response = await self._api(f"kill sandbox {sandbox_id}", delete_sandboxes_sandbox_id.asyncio_detailed, sandbox_id)
        self._forget(sandbox_id)
        if response.status_code == 404:
            return False
        if response.status_code >= 300:
            raise self._api_failure(response, f"kill sandbox {sandbox_id}")
        return True

    async def health_check(self) -> bool:
        """One cheap list request: it checks the key and the service, and creates nothing."""
        try:
            response = await self._api("check health", get_v2_sandboxes.asyncio_detailed, limit=1)
        except ProviderError:
            return False
        if response.status_code in (401, 403):
            raise self._api_failure(response, "check health")
        return response.status_code < 300

    # -- commands ---------------------------------------------------------------------------
    async def _start(
        self,
        sandbox_id: str,
        command: Command,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float,
        with_stdin: bool,
        on_stdout: Callable[[str], None],
        on_stderr: Callable[[str], None],
    ) -> Any:
        """Start a command in the background (its handle), or the result of a start that failed.

        The SDK's callbacks carry the output as it comes.
        """
        validate_command(command)
        sandbox = await self._sandbox(sandbox_id)
        script = shell_command(command)
        if len(script.encode()) > MAX_ARG:
            # envd runs `bash -l -c CMD`: a command past the kernel's per-argument limit goes through a file.
            path = f"/tmp/.sandboxes-cmd-{uuid.uuid4().hex}.sh"
            await self.write_file(sandbox_id, path, script.encode())
            quoted = shlex.quote(path)
            script = f"bash {quoted}; __status=$?; rm -f {quoted}; exit $__status"
        cwd = cwd or self._workdirs.get(sandbox_id)
        try:
            return await sandbox.commands.run(
                script,
                background=True,
                envs=dict(env) if env else None,
                cwd=cwd,
                stdin=with_stdin,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
                timeout=timeout + STREAM_GRACE,
            )
        except Exception as error:
            if cwd and isinstance(error, InvalidArgumentException) and "cwd" in str(error):
                # envd refuses to start in a missing directory: a result, as on the local provider
                return ExecutionResult(stderr=f"sandbox: working directory not found: {cwd}\n", exit_code=1, command=command)
            raise self._translate(error, sandbox_id) from None

    async def _finish(self, sandbox_id: str, handle: Any, timeout: float, stdin: bytes | None) -> tuple[int, bool]:
        """Feed stdin, wait for the end within ``timeout``; a late command is killed. (exit code, timed out)"""
        # The SDK's event task must survive our deadline (cancelling it would lose the
        # output so far), so it is awaited through a shield.
        waiter = asyncio.ensure_future(_wait(handle))
        waiter.add_done_callback(_retrieve)
        try:
            with anyio.move_on_after(timeout):
                if stdin is not None:
                    try:
                        for start in range(0, len(stdin), STDIN_CHUNK):
                            await handle.send_stdin(stdin[start : start + STDIN_CHUNK])
                        await handle.close_stdin()
                    except NotFoundException:
                        pass  # the command already exited: it did not want the rest of its stdin
                return _exit_code(await asyncio.shield(waiter)), False
            with anyio.CancelScope(shield=True):
                await handle.kill()  # envd kills the command's whole process group
                with anyio.move_on_after(KILL_GRACE):
                    await asyncio.shield(waiter)
                if not waiter.done():
                    await handle.disconnect()
            return TIMED_OUT_EXIT_CODE, True
        except Exception as error:
            raise self._translate(error, sandbox_id) from None
        except BaseException:  # cancelled: the command must not outlive its caller
            with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_GRACE):
                await _quietly(handle.kill())
            raise
        finally:
            if not waiter.done():
                waiter.cancel()

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
        out, err = OutputBuffer(limit), OutputBuffer(limit)
        timeout = self.command_timeout if timeout is None else timeout
        data = as_bytes(stdin)
        started = time.monotonic()
        handle = await self._start(
            sandbox_id,
            command,
            env,
            cwd,
            timeout,
            data is not None,
            lambda s: out.write(s.encode()),
            lambda s: err.write(s.encode()),
        )
        if isinstance(handle, ExecutionResult):
            return handle
        exit_code, timed_out = await self._finish(sandbox_id, handle, timeout, data)
        return ExecutionResult(
            stdout=out.text(),
            stderr=err.text(),
            exit_code=exit_code,
            duration_ms=(time.monotonic() - started) * 1000,
            timed_out=timed_out,
            truncated=out.truncated or err.truncated,
            command=command,
        )

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
        timeout = self.command_timeout if timeout is None else timeout
        data = as_bytes(stdin)
        started = time.monotonic()
        send, receive = anyio.create_memory_object_stream[OutputChunk](math.inf)
        try:
            handle = await self._start(
                sandbox_id,
                command,
                env,
                cwd,
                timeout,
                data is not None,
                lambda s: send.send_nowait(OutputChunk("stdout", s)),
                lambda s: send.send_nowait(OutputChunk("stderr", s)),
            )
        except BaseException:
            send.close()
            receive.close()
            raise
        if isinstance(handle, ExecutionResult):
            send.close()
            receive.close()
            yield OutputChunk("stderr", handle.stderr)
            yield ExitStatus(handle.exit_code, handle.timed_out, handle.duration_ms)
            return

        async def finish() -> tuple[int, bool]:
            try:
                return await self._finish(sandbox_id, handle, timeout, data)
            finally:
                send.close()

        waiter = asyncio.ensure_future(finish())
        try:
            async with receive:
                async for chunk in receive:
                    yield chunk
            exit_code, timed_out = await waiter
            yield ExitStatus(exit_code, timed_out, (time.monotonic() - started) * 1000)
        finally:
            if not waiter.done():  # the consumer stopped early: end the command
                waiter.cancel()
                with anyio.CancelScope(shield=True):
                    await _quietly(waiter)

    # -- files -----------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        sandbox = await self._sandbox(sandbox_id)
        try:
            await sandbox.files.write(path, bytes(data))
        except Exception as error:
            raise self._translate(error, sandbox_id, path) from None

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        sandbox = await self._sandbox(sandbox_id)
        try:
            return bytes(await sandbox.files.read(path, format="bytes"))
        except Exception as error:
            raise self._translate(error, sandbox_id, path) from None


# -- helpers -------------------------------------------------------------------------------------
async def _wait(handle: Any) -> Any:
    try:
        return await handle.wait()
    except CommandExitException as exited:  # a non-zero exit is a result
        return exited


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background task's outcome as seen (it is reported elsewhere or moot)."""
    if not task.cancelled():
        task.exception()


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except BaseException:
        pass


def _exit_code(result: Any) -> int:
    return int(result.exit_code)


def _value(value: Any) -> Any:
    return None if value is UNSET or value is None else value


def _message(content: bytes | str) -> str:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(body, dict) and isinstance(message := body.get("message"), str):
        return message
    return text.strip()[:500]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _is_transport_error(error: BaseException) -> bool:
    """pyqwest's and connectrpc's connection failures, without importing their internals."""
    from connectrpc.errors import ConnectError

    if isinstance(error, ConnectError):
        return True
    return type(error).__module__.split(".")[0] == "pyqwest"
