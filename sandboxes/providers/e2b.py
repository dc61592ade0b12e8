"""The E2B driver, through the official SDK's async client.

The control plane (create, connect, get, list, kill) goes through the SDK's
generated async REST client so that the answer's headers stay visible: a 429's
``Retry-After`` becomes ``RateLimitError.retry_after`` and ``X-Next-Token``
drives paging. Commands and files go through ``AsyncSandbox`` (envd's Connect
RPC and ``/files``). Nothing here is bound to an event loop: SDK objects are
made per call from plain connection data, so one driver serves any loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import json
import math
import shlex
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

import anyio
import httpx
import pyqwest
from connectrpc.errors import ConnectError
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
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxUnreachableException,
    ServiceBusyException,
)
from e2b.sandbox.commands.command_handle import CommandExitException
from packaging.version import Version

from ..driver import ErrorMap, Event, Exit, Output, after_start, map_errors
from ..errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
    SandboxNotFoundError,
    UnsupportedOperation,
)
from ..models import DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_LIFETIME_SECONDS, SandboxConfig, SandboxInfo
from ..secrets import Secret, scrub

API_KEY_VARIABLE = "E2B_API_KEY"
STDIN_CHUNK = 256 * 1024
KILL_GRACE = 10.0  # after killing a command, how long its stream may take to end
STREAM_GRACE = 30.0  # the SDK's own stream deadline sits this far past ours, as a backstop
PIPE_BUFFER = 65536  # Linux's default pipe capacity
START_SECONDS = 10.0  # envd's start event comes in a round trip: a stream still silent after this was lost
CLOSE_STDIN_TRIES = 3  # closing stdin is idempotent: a connection lost on the way is tried again
_LIVE_STATES = [SandboxState.RUNNING, SandboxState.PAUSED]
NATIVE_IO_SETTLE_SECONDS = 0.1


@atexit.register
def _let_native_io_land() -> None:
    """The SDK's HTTP client (pyqwest, Rust) may still be finishing a read on a tokio thread; if
    that thread reaches Python once the interpreter is finalizing, the process aborts (SIGABRT,
    exit -6) after its work is done, with or without its clients closed. A moment lets it land.
    Registered when this driver loads, so it runs after the blocking portal stops (atexit is
    last in, first out) in every process that used E2B: the CLI's ``anyio.run`` ones too."""
    time.sleep(NATIVE_IO_SETTLE_SECONDS)


_TRANSPORT = (httpx.HTTPError, OSError, ConnectError, pyqwest.ReadError, pyqwest.WriteError, pyqwest.RemoteProtocolError, pyqwest.TooManyRedirects)
_FILE_WORDS: tuple[tuple[str, type[OSError], int], ...] = (
    ("is a directory", IsADirectoryError, errno.EISDIR),
    ("not a directory", NotADirectoryError, errno.ENOTDIR),
    ("permission denied", PermissionError, errno.EACCES),
)


@dataclass(frozen=True)
class _Ref:
    """What it takes to talk to one sandbox's envd: plain data, no client, no loop."""

    sandbox_id: str
    domain: str | None
    envd_version: str
    envd_access_token: str | None
    traffic_access_token: str | None


class E2BDriver:
    """Sandboxes on E2B (https://e2b.dev); the API key is ``api_key=`` (the engine reads ``E2B_API_KEY``)."""

    name = "e2b"

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
        if not api_key:
            raise ProviderUnavailable(
                f"the e2b provider needs an API key: set {API_KEY_VARIABLE} (https://e2b.dev/dashboard?tab=keys) or pass api_key=",
                provider=self.name,
            )
        self.__key = Secret(api_key)
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

    def __repr__(self) -> str:
        where = f" api_url={self.api_url!r}" if self.api_url else ""
        return f"<E2BDriver{where}>"

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

    def _describe(self, error: BaseException) -> str:
        return self._scrub(f"{type(error).__name__}: {error}".strip())

    def _unreachable(self, action: str) -> ErrorMap:
        """The control plane's transport failures."""
        return ((_TRANSPORT, lambda error: ProviderError(f"could not reach E2B to {action}: {self._describe(error)}", provider=self.name)),)

    def _envd_errors(self, sandbox_id: str, path: str | None = None) -> ErrorMap:
        """envd's errors (commands, files) as this library's; ``path`` is the file they are about."""
        where = f"in e2b sandbox {sandbox_id}"

        def gone(error: BaseException) -> BaseException:
            self._refs.pop(sandbox_id, None)
            return SandboxNotFoundError(f"sandbox {sandbox_id} is gone on e2b: {self._scrub(str(error))}")

        def failed(error: BaseException) -> BaseException:
            return ProviderError(f"e2b failed on sandbox {sandbox_id}: {self._describe(error)}", provider=self.name)

        def refused(error: BaseException) -> BaseException:
            text = str(error).lower()  # envd says what is wrong with a file only in words
            for words, kind, code in _FILE_WORDS:
                if words in text and (path is not None or kind is PermissionError):
                    return kind(code, f"{words} {where}", path or "")
            return failed(error)

        return (
            ((SandboxNotFoundException, SandboxNotRunningException), gone),
            (NotFoundException, lambda e: FileNotFoundError(errno.ENOENT, f"no such file {where}", path) if path else failed(e)),
            (
                AuthenticationException,
                lambda e: AuthenticationError(f"e2b rejected the credentials: {self._scrub(str(e))} (check {API_KEY_VARIABLE})", provider=self.name),
            ),
            (RateLimitException, lambda e: RateLimitError(f"e2b is rate limiting: {self._scrub(str(e))}", provider=self.name)),
            ((SandboxException, ServiceBusyException), refused),
            (_TRANSPORT, failed),
        )

    async def _api(self, action: str, call: Callable[..., Any], *args: Any, allow: tuple[int, ...] = (), **kwargs: Any) -> Response[Any]:
        """One control-plane request; an answer that is neither 2xx nor in ``allow`` raises, by its status."""
        with map_errors(self._unreachable(action)):
            response: Response[Any] = await call(*args, client=get_api_client(ConnectionConfig(**self._params())), **kwargs)
        status = int(response.status_code)
        if status < 300 or status in allow:
            return response
        message = self._scrub(_message(response.content))
        text = f"E2B answered {status} to {action}" + (f": {message}" if message else "")
        if status in (401, 403):
            raise AuthenticationError(f"{text} (check {API_KEY_VARIABLE})", provider=self.name)
        if status == 429:
            raise RateLimitError(text, provider=self.name, retry_after=_retry_after(response.headers))
        if status >= 500 or status == 408:
            raise ProviderError(text, provider=self.name)
        raise SandboxError(text)

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

    async def _sandbox(self, sandbox_id: str) -> AsyncSandbox:
        """A fresh SDK handle on the current event loop; asks E2B (connect) the first time this process sees the sandbox."""
        ref = self._refs.get(sandbox_id)
        if ref is None:
            action = f"connect to sandbox {sandbox_id}"
            response = await self._api(action, post_v_2_sandboxes_sandbox_id_connect.asyncio_detailed, sandbox_id, body=ConnectSandboxV2(), allow=(404,))
            if response.status_code == 404:
                raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'e2b'")
            ref = self._remember(_parsed(response, action))
        headers = {"E2b-Sandbox-Id": ref.sandbox_id, "E2b-Sandbox-Port": str(ConnectionConfig.envd_port)}
        if ref.envd_access_token:
            headers["X-Access-Token"] = ref.envd_access_token
        return AsyncSandbox(
            sandbox_id=ref.sandbox_id,
            sandbox_domain=ref.domain,
            envd_version=Version(ref.envd_version),
            envd_access_token=ref.envd_access_token,
            traffic_access_token=ref.traffic_access_token,
            connection_config=ConnectionConfig(extra_sandbox_headers=headers, **self._params()),
        )

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
            metadata={"cpu_count": sandbox.cpu_count, "memory_mb": sandbox.memory_mb, "envd_version": sandbox.envd_version},
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        if config.memory_mb is not None or config.cpus is not None:
            raise UnsupportedOperation(self.name, "per-sandbox memory or cpus", "E2B sizes a sandbox by its template: build one with the resources you need")
        template = config.image or self.template or AsyncSandbox.default_template
        lifetime = config.lifetime if config.lifetime is not None else self.lifetime
        body = NewSandboxV2(
            template_id=template,
            timeout=max(1, math.ceil(lifetime)),
            metadata=dict(config.labels),
            env_vars=dict(config.env),
            allow_internet_access=config.network if config.network is not None else UNSET,
        )
        response = await self._api("create a sandbox", post_v2_sandboxes.asyncio_detailed, body=body, allow=(400, 404))
        if response.status_code in (400, 404) and "template" in _message(response.content).lower():
            raise ValueError(f"E2B has no template {template!r}: {self._scrub(_message(response.content))}")
        ref = self._remember(_parsed(response, "create a sandbox"))
        try:
            if Version(ref.envd_version) < Version("0.1.0"):
                raise ProviderError(f"E2B template {template!r} runs an envd too old for this SDK: rebuild it", provider=self.name)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self.destroy(ref.sandbox_id)
            raise
        now = time.time()
        return SandboxInfo(
            id=ref.sandbox_id,
            provider=self.name,
            labels=dict(config.labels),
            state="running",
            created_at=now,
            expires_at=now + lifetime,
            image=template,
            metadata={"envd_version": ref.envd_version},
        )

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        action = f"get sandbox {sandbox_id}"
        response = await self._api(action, get_sandboxes_sandbox_id.asyncio_detailed, sandbox_id, allow=(404,))
        if response.status_code == 404:
            self._refs.pop(sandbox_id, None)
            return None
        return self._info(_parsed(response, action))

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        wanted = {str(k): str(v) for k, v in labels.items()}
        # encoded as the SDK's own paginator does: each part quoted, then the whole form-encoded
        metadata = urlencode({quote(k): quote(v) for k, v in wanted.items()}) if wanted else UNSET
        found: list[SandboxInfo] = []
        token: str | None = None
        while True:
            response = await self._api("list sandboxes", get_v2_sandboxes.asyncio_detailed, metadata=metadata, state=_LIVE_STATES, next_token=token or UNSET)
            if not isinstance(response.parsed, list):
                raise ProviderError(f"E2B answered {response.status_code} to list sandboxes without a list", provider=self.name)
            found += [info for info in map(self._info, response.parsed) if all(info.labels.get(k) == v for k, v in wanted.items())]
            token = response.headers.get("x-next-token")
            if not token:
                return found

    async def destroy(self, sandbox_id: str) -> bool:
        response = await self._api(f"kill sandbox {sandbox_id}", delete_sandboxes_sandbox_id.asyncio_detailed, sandbox_id, allow=(404,))
        self._refs.pop(sandbox_id, None)
        return response.status_code != 404

    async def health_check(self) -> bool:
        """One cheap list request: it checks the key and the service, and creates nothing."""
        try:
            await self._api("check health", get_v2_sandboxes.asyncio_detailed, limit=1)
        except AuthenticationError:
            raise
        except SandboxError:
            return False
        return True

    async def aclose(self) -> None:
        self._refs.clear()  # the SDK's clients are made per call

    # -- commands ---------------------------------------------------------------------------
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
        """Run through envd (which runs ``bash -l -c``); the SDK's callbacks carry the output as it comes."""
        started = time.monotonic()
        send, receive = anyio.create_memory_object_stream[Output](math.inf)
        with send, receive:
            handle = await self._start(sandbox_id, argv, env, cwd, stdin is not None, timeout, send)
            if handle is None:  # envd refuses to start in a missing directory: a result, as on the local provider
                yield Output("stderr", f"sandbox: working directory not found: {cwd}\n".encode())
                yield Exit(1, duration_ms=(time.monotonic() - started) * 1000)
                return
            finisher = asyncio.ensure_future(_finish(handle, timeout, stdin, send))
            try:
                async for output in receive:
                    yield output
                with after_start(), map_errors(self._envd_errors(sandbox_id)):
                    exit_code, timed_out = await finisher
                yield Exit(exit_code, timed_out=timed_out, duration_ms=(time.monotonic() - started) * 1000)
            finally:
                if not finisher.done():  # the consumer stopped early: end the command
                    finisher.cancel()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(KILL_GRACE):
                        await _quietly(finisher)
                        await _quietly(handle.kill())  # envd kills the command's whole process group

    async def _start(self, sandbox_id: str, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, stdin: bool, timeout: float, send: Any) -> Any:
        """The started command's SDK handle, or None when its ``cwd`` is missing."""
        with map_errors(self._envd_errors(sandbox_id)):
            sandbox = await self._sandbox(sandbox_id)
            try:
                return await sandbox.commands.run(
                    _script(argv),
                    background=True,
                    envs=dict(env) or None,
                    cwd=cwd,
                    stdin=stdin,
                    on_stdout=_sink(send, "stdout"),
                    on_stderr=_sink(send, "stderr"),
                    timeout=timeout + STREAM_GRACE,
                    request_timeout=START_SECONDS,
                )
            except InvalidArgumentException as error:
                if cwd and "cwd" in str(error):
                    return None
                raise

    # -- files -----------------------------------------------------------------------------------
    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        with map_errors(self._envd_errors(sandbox_id, path)):
            await (await self._sandbox(sandbox_id)).files.write(path, bytes(data))

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        with map_errors(self._envd_errors(sandbox_id, path)):
            return bytes(await (await self._sandbox(sandbox_id)).files.read(path, format="bytes"))


# -- helpers -------------------------------------------------------------------------------------
async def _finish(handle: Any, timeout: float, stdin: bytes | None, send: Any) -> tuple[int, bool]:
    """Feed stdin, wait for the end within ``timeout``; a late command is killed. (exit code, timed out)"""
    # The SDK's event task must survive our deadline (cancelling it would lose the
    # output so far), so it is awaited through a shield.
    waiter = asyncio.ensure_future(_wait(handle))
    waiter.add_done_callback(_retrieve)
    fed = stdin is None
    try:
        with anyio.move_on_after(timeout):
            if stdin is not None:
                try:
                    for start in range(0, len(stdin), STDIN_CHUNK):
                        await handle.send_stdin(stdin[start : start + STDIN_CHUNK])
                    await _close_stdin(handle)
                except NotFoundException:
                    pass  # the command already exited: it did not want the rest of its stdin
                fed = True
            return int((await asyncio.shield(waiter)).exit_code), False
        with anyio.CancelScope(shield=True):
            await handle.kill()  # envd kills the command's whole process group
            with anyio.move_on_after(KILL_GRACE):
                await asyncio.shield(waiter)
            if not waiter.done():
                await handle.disconnect()
        if not fed and stdin is not None and len(stdin) <= PIPE_BUFFER:
            # Input that fits a pipe's buffer is taken whether or not the command reads it:
            # still not delivered, it was lost on the way, and the "timeout" is not the command's.
            raise ProviderError(f"the command's stdin ({len(stdin)} bytes) was not delivered within its {timeout:g} s", provider="e2b")
        return -1, True
    finally:
        send.close()
        if not waiter.done():
            waiter.cancel()


async def _close_stdin(handle: Any) -> None:
    """End the command's stdin, again when the connection was lost on the way (the request, or only its
    answer): closing twice is closing, and a lost close would fail a check that had nothing wrong.
    Stdin's data is not resent so: it may have arrived, and would be read twice."""
    for attempt in range(CLOSE_STDIN_TRIES):
        try:
            await handle.close_stdin()
            return
        except SandboxUnreachableException:
            if attempt == CLOSE_STDIN_TRIES - 1:
                raise
        except SandboxException:
            if attempt == 0:
                raise
            return  # after a lost answer, the retry's complaint: the first close went through


def _sink(send: Any, stream: Literal["stdout", "stderr"]) -> Callable[[str], None]:
    """An SDK output callback feeding ``send``; output after the consumer left is dropped."""

    def put(text: str) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait(Output(stream, text.encode()))

    return put


def _script(argv: Sequence[str]) -> str:
    """envd takes one shell string: ``["/bin/sh", "-c", s]`` is ``s``; any other argv is quoted and exec'd,
    so that no word of it is taken as a shell builtin, keyword or assignment."""
    if len(argv) == 3 and argv[0] in ("/bin/sh", "sh") and argv[1] == "-c":
        return argv[2]
    return "exec " + shlex.join(argv)


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
    with contextlib.suppress(BaseException):
        await awaitable


def _parsed(response: Response[Any], action: str) -> Any:
    if not hasattr(response.parsed, "sandbox_id"):
        raise ProviderError(f"E2B answered {response.status_code} to {action} without a sandbox", provider="e2b")
    return response.parsed


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
