"""CloudflareProvider: Cloudflare Sandboxes through the Sandbox Bridge Worker HTTP API.

There is no Python SDK: this speaks the bridge's documented API
(``specs/cloudflare/bridge-openapi.json``) with httpx. What the bridge gives
and what it does not (see ``capabilities``):

- Real streaming: ``exec`` answers Server-Sent Events of base64 stdout and
  stderr chunks, then ``exit`` (or ``error``); stdout and stderr stay apart.
- env and cwd: ``cwd`` is an exec parameter; env goes through a bridge
  session created for the command (``Session-Id`` header), then deleted.
- Files: ``GET``/``PUT /file/{path}``, inside ``/workspace`` only (the bridge
  refuses other paths); reads elsewhere go through an exec of ``base64``.
- No labels and no list on the bridge: labels, lifetimes and the set of live
  sandboxes are kept client-side in a JSON registry under the user's state
  dir, so other processes on the same machine find them
  (``native_labels=False``). The lifetime is enforced client-side too: an
  expired sandbox is destroyed by the next process that lists.
- No stdin, no image, cpu, memory or network choice (the Worker's container
  configuration fixes them): asking raises ``UnsupportedOperation``.

Each operation uses its own short-lived ``httpx.AsyncClient`` (sharing one
TLS context), so the provider works from any asyncio loop and from the
blocking facade.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import shlex
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx

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
from ..provider import SandboxProvider, argv_command, validate_command
from ..secrets import scrub
from ..streaming import ChunkDecoder, ExitStatus, StreamItem, streaming
from ._label_registry import Entry, LabelRegistry, default_state_dir

WORKSPACE = "/workspace"
MAX_INLINE_COMMAND = 100_000  # bytes; longer commands go through a script file
STREAM_SLACK = 30.0  # seconds the client waits for the bridge beyond a command's timeout


class CloudflareProvider(SandboxProvider):
    """Sandboxes behind a Cloudflare Sandbox Bridge Worker.

    Credentials: ``CLOUDFLARE_SANDBOX_BASE_URL`` (the Worker's URL) and
    ``CLOUDFLARE_API_TOKEN`` (its ``SANDBOX_API_KEY`` secret), or ``base_url=``
    and ``api_token=``. Labels live in a registry file on this machine.
    """

    name = "cloudflare"
    capabilities = Capabilities(
        streaming=True,
        stdin=False,  # exec takes argv, timeout_ms and cwd only
        files=True,
        background_processes=False,
        network_control=False,
        native_labels=False,  # kept client-side in a registry file
        cross_process_reuse=True,  # on this machine, through the registry
    )

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_token: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        request_timeout: float = 60.0,
    ) -> None:
        url = base_url or os.environ.get("CLOUDFLARE_SANDBOX_BASE_URL")
        token = api_token or os.environ.get("CLOUDFLARE_API_TOKEN")
        missing = [name for name, value in (("CLOUDFLARE_SANDBOX_BASE_URL", url), ("CLOUDFLARE_API_TOKEN", token)) if not value]
        if missing:
            raise ProviderUnavailable(
                f"Cloudflare needs {' and '.join(missing)}: set the Sandbox Bridge Worker's URL and its API token "
                "(or pass base_url= and api_token= / Sandbox.configure(cloudflare={...}))",
                provider=self.name,
            )
        assert url is not None and token is not None
        self.base_url = url.rstrip("/")
        self._token = token
        self.command_timeout = command_timeout
        self.lifetime = lifetime
        self.request_timeout = request_timeout
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(self.name)
        self.registry = LabelRegistry(self.state_dir, scope=self.base_url)
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<CloudflareProvider url={self.base_url!r}>"

    # -- HTTP ------------------------------------------------------------------------
    @asynccontextmanager
    async def _client(self, read_timeout: float | None = None) -> AsyncIterator[httpx.AsyncClient]:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            try:
                import certifi

                self._ssl.load_verify_locations(certifi.where())
            except ImportError:  # pragma: no cover - httpx brings certifi
                pass
        timeout = httpx.Timeout(self.request_timeout, read=read_timeout or self.request_timeout)
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with httpx.AsyncClient(base_url=self.base_url, headers=headers, verify=self._ssl, timeout=timeout) as client:
                yield client
        except httpx.TransportError as error:
            raise ProviderError(f"cloudflare: cannot reach the bridge at {self.base_url}: {type(error).__name__}: {error}", provider=self.name) from None

    async def _check(self, response: httpx.Response, path: str | None = None) -> None:
        """Raise the taxonomy's error for a failed response."""
        if response.is_success:
            return
        await response.aread()
        try:
            body = response.json()
            message, code = str(body.get("error", "")), str(body.get("code", ""))
        except ValueError:
            message, code = response.text[:500], ""
        message = self._scrub(message)
        status = response.status_code
        where = f"cloudflare ({status}{' ' + code if code else ''}): {message}"
        if status == 401 or code == "unauthorized":
            raise AuthenticationError(f"{where}; check CLOUDFLARE_API_TOKEN (the token is never shown)", provider=self.name)
        if status == 429:
            raise RateLimitError(where, provider=self.name, retry_after=_retry_after(response.headers.get("retry-after")))
        if path is not None:
            if status == 404:
                raise FileNotFoundError(f"no such file in the sandbox: {path}")
            if "directory" in message.lower():
                raise IsADirectoryError(f"is a directory in the sandbox: {path}")
            if status == 403:
                raise PermissionError(f"the bridge refuses {path}: {message}")
        if status in (400, 403, 422):
            raise ValueError(f"the Cloudflare bridge rejected the request: {message}")
        raise ProviderError(where, provider=self.name)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token)

    # -- lifecycle --------------------------------------------------------------------
    async def create_sandbox(self, config: SandboxConfig) -> SandboxInfo:
        self._refuse_unsupported(config)
        async with self._client() as client:
            response = await client.post("/v1/sandbox")
            await self._check(response)
            sandbox_id = str(response.json()["id"])
        now = time.time()
        entry: Entry = {
            "labels": dict(config.labels),
            "created_at": now,
            "expires_at": now + (config.lifetime or self.lifetime),
            "env": dict(config.env),
            "working_dir": _absolute(config.working_dir) if config.working_dir else None,
            "max_output_bytes": config.max_output_bytes,
        }
        await anyio.to_thread.run_sync(self.registry.add, sandbox_id, entry)
        try:
            if config.working_dir:
                await self._checked(sandbox_id, ["mkdir", "-p", config.working_dir], cwd=WORKSPACE)
            for command in config.setup_commands:
                await self._checked(sandbox_id, command)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.destroy_sandbox(sandbox_id)  # never leave a half-created sandbox
            raise
        return self._info({**entry, "id": sandbox_id})

    def _refuse_unsupported(self, config: SandboxConfig) -> None:
        fixed = "the Worker's container configuration (wrangler.toml) fixes it"
        if config.image:
            raise UnsupportedOperation(self.name, "choosing an image", fixed)
        if config.memory_mb or config.cpus:
            raise UnsupportedOperation(self.name, "choosing cpu or memory", fixed + " (instance_type)")
        if config.network is not None:
            raise UnsupportedOperation(self.name, "network control", "the bridge API has no network setting")
        if config.provider_config:
            raise ValueError(f"the Cloudflare provider takes no provider_config, got {sorted(config.provider_config)}")

    async def _checked(self, sandbox_id: str, command: Command, cwd: str | None = None) -> None:
        result = await self.execute_command(sandbox_id, command, cwd=cwd)
        if not result.success:
            raise SetupFailed(result, self.name)

    def _info(self, entry: Entry) -> SandboxInfo:
        return SandboxInfo(
            id=entry["id"],
            provider=self.name,
            labels=dict(entry.get("labels", {})),
            state="running",
            created_at=entry.get("created_at"),
            expires_at=entry.get("expires_at"),
            metadata={"bridge": self.base_url, "labels_kept_by": str(self.registry.path)},
        )

    async def _entry(self, sandbox_id: str) -> Entry:
        entry = await anyio.to_thread.run_sync(self.registry.get, sandbox_id)
        if entry is None or (entry.get("expires_at") and entry["expires_at"] <= time.time()):
            raise self._not_found(sandbox_id)
        return entry

    async def get_sandbox(self, sandbox_id: str) -> SandboxInfo | None:
        try:
            return self._info(await self._entry(sandbox_id))
        except SandboxNotFoundError:
            return None

    async def list_sandboxes(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        live, expired = await anyio.to_thread.run_sync(self.registry.find, dict(labels or {}))
        for entry in expired:  # the lifetime is ours to enforce: the bridge has no TTL
            try:
                await self._delete(entry["id"])
            except ProviderError:
                pass
        return [self._info(entry) for entry in live]

    async def destroy_sandbox(self, sandbox_id: str) -> bool:
        entry = await anyio.to_thread.run_sync(self.registry.get, sandbox_id)
        if entry is None:
            return False
        await self._delete(sandbox_id)
        return await anyio.to_thread.run_sync(self.registry.remove, sandbox_id) is not None

    async def _delete(self, sandbox_id: str) -> None:
        async with self._client() as client:
            await self._check(await client.delete(f"/v1/sandbox/{quote(sandbox_id, safe='')}"))

    async def health_check(self) -> bool:
        """``GET /health``: creates nothing."""
        try:
            async with self._client() as client:
                response = await client.get("/health")
        except ProviderError:
            return False
        return response.status_code == 200

    # -- commands -----------------------------------------------------------------------
    async def _events(
        self,
        sandbox_id: str,
        command: Command,
        env: Mapping[str, str] | None,
        cwd: str | None,
        timeout: float | None,
        stdin: bytes | str | None,
    ) -> AsyncIterator[tuple[str, str]]:
        """The exec's SSE events as (event, data), in order, as they arrive."""
        validate_command(command)
        if stdin is not None:
            raise UnsupportedOperation(self.name, "stdin", "the bridge's exec takes no input: write a file and redirect from it")
        entry = await self._entry(sandbox_id)
        limit = timeout if timeout is not None else self.command_timeout
        argv = argv_command(command)
        workdir = _absolute(cwd) if cwd else entry.get("working_dir") or WORKSPACE
        if sum(len(part.encode()) for part in argv) > MAX_INLINE_COMMAND:
            script_path = f"{WORKSPACE}/.sandboxes-cmd-{uuid.uuid4().hex}.sh"
            script = command if isinstance(command, str) else shlex.join(argv)
            await self.write_file(sandbox_id, script_path, script.encode())
            relative = shlex.quote(posixpath.relpath(script_path, workdir))  # cwd is always inside /workspace
            argv = ["sh", "-c", f"trap 'rm -f {relative}' EXIT; . ./{relative}"]
        merged_env = {**entry.get("env", {}), **(env or {})}
        body = {"argv": argv, "timeout_ms": max(1, int(limit * 1000)), "cwd": workdir}
        sid = quote(sandbox_id, safe="")
        async with self._client(read_timeout=limit + STREAM_SLACK) as client:
            headers = {}
            session = None
            if merged_env:
                response = await client.post(f"/v1/sandbox/{sid}/session", json={"env": merged_env, "cwd": workdir})
                await self._check(response)
                session = str(response.json()["id"])
                headers["Session-Id"] = session
            try:
                async with client.stream("POST", f"/v1/sandbox/{sid}/exec", json=body, headers=headers) as response:
                    await self._check(response)
                    async for event in _sse(response):
                        yield event
            finally:
                if session is not None:
                    with anyio.CancelScope(shield=True):
                        try:
                            await client.delete(f"/v1/sandbox/{sid}/session/{quote(session, safe='')}")
                        except httpx.HTTPError:
                            pass

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
        limit = timeout if timeout is not None else self.command_timeout
        entry = await self._entry(sandbox_id)
        cap = entry.get("max_output_bytes") or DEFAULT_MAX_OUTPUT_BYTES
        buffers = {"stdout": OutputBuffer(cap), "stderr": OutputBuffer(cap)}
        exit_code, timed_out = -1, False
        started = time.monotonic()
        async for event, data in self._events(sandbox_id, command, env, cwd, timeout, stdin):
            if event in buffers:
                buffers[event].write(base64.b64decode(data))
            elif event == "exit":
                exit_code = int(json.loads(data).get("exit_code", -1))
            elif event == "error":
                timed_out = self._timed_out(data, started, limit)
        return ExecutionResult(
            stdout=buffers["stdout"].text(),
            stderr=buffers["stderr"].text(),
            exit_code=exit_code,
            duration_ms=(time.monotonic() - started) * 1000,
            timed_out=timed_out,
            truncated=buffers["stdout"].truncated or buffers["stderr"].truncated,
            command=command,
        )

    def _timed_out(self, data: str, started: float, limit: float) -> bool:
        """An ``error`` event is a timeout when it says so or when the time is up; else it is raised."""
        try:
            error = json.loads(data)
        except ValueError:
            error = {"error": data}
        message = str(error.get("error", ""))
        if "timed out" in message.lower() or "timeout" in message.lower() or time.monotonic() - started >= limit * 0.95:
            return True
        raise ProviderError(f"cloudflare exec failed ({error.get('code', 'exec_error')}): {self._scrub(message)}", provider=self.name)

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
        """Yield output as the bridge streams it (SSE), stdout and stderr apart, then the exit status."""
        limit = timeout if timeout is not None else self.command_timeout
        decoder = ChunkDecoder()
        started = time.monotonic()
        exit_code, timed_out = -1, False  # as execute_command: no exit event means killed
        async for event, data in self._events(sandbox_id, command, env, cwd, timeout, stdin):
            if event in ("stdout", "stderr"):
                if chunk := decoder.decode(event, base64.b64decode(data)):
                    yield chunk
            elif event == "exit":
                exit_code = int(json.loads(data).get("exit_code", -1))
            elif event == "error":
                timed_out = self._timed_out(data, started, limit)
        for chunk in decoder.flush():
            yield chunk
        yield ExitStatus(exit_code, timed_out, (time.monotonic() - started) * 1000)

    # -- files ---------------------------------------------------------------------------
    def _file_url(self, sandbox_id: str, path: str) -> str:
        return f"/v1/sandbox/{quote(sandbox_id, safe='')}/file/{quote(path.lstrip('/'), safe='/')}"

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self._entry(sandbox_id)
        remote = _absolute(path)
        if not _in_workspace(remote):
            raise PermissionError(f"the Cloudflare bridge writes files only inside {WORKSPACE}, not {path}")
        async with self._client() as client:
            response = await client.put(self._file_url(sandbox_id, remote), content=bytes(data), headers={"Content-Type": "application/octet-stream"})
            await self._check(response, path)

    async def read_file(self, sandbox_id: str, path: str) -> bytes:
        await self._entry(sandbox_id)
        remote = _absolute(path)
        if not _in_workspace(remote):
            return await self._read_by_exec(sandbox_id, remote, path)
        async with self._client() as client:
            response = await client.get(self._file_url(sandbox_id, remote))
            await self._check(response, path)
            return response.content

    async def _read_by_exec(self, sandbox_id: str, remote: str, path: str) -> bytes:
        """Outside /workspace the file route refuses; ``base64`` in the sandbox can still read."""
        result = await self.execute_command(sandbox_id, ["sh", "-c", 'test -d "$1" && { echo "is a directory" >&2; exit 21; }; base64 -w0 "$1"', "sh", remote])
        if result.exit_code == 21:
            raise IsADirectoryError(f"is a directory in the sandbox: {path}")
        if result.exit_code != 0:
            if "No such file" in result.stderr:
                raise FileNotFoundError(f"no such file in the sandbox: {path}")
            raise PermissionError(f"cannot read {path} in the sandbox: {result.stderr.strip()}")
        return base64.b64decode(result.stdout)


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    event, data = "message", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def _absolute(path: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(WORKSPACE, path))


def _in_workspace(path: str) -> bool:
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
