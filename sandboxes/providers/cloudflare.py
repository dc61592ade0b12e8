"""CloudflareDriver: Cloudflare Sandboxes through the Sandbox Bridge Worker HTTP API.

There is no Python SDK: this speaks the bridge's documented API
(``specs/cloudflare/bridge-openapi.json``) with httpx.

- ``exec`` answers Server-Sent Events: base64 stdout and stderr chunks as the
  command writes them, then ``exit`` (or ``error``). Its ``cwd`` must lie in
  ``/workspace`` (elsewhere the command starts under ``cd``); env goes through
  a bridge session made for the command, then deleted.
- Files: ``GET``/``PUT /file/{path}`` serve ``/workspace`` only. Elsewhere a
  read runs ``base64`` in the sandbox, and a write is put in ``/workspace``
  then copied into place there.
- No labels and no list on the bridge: labels, lifetimes and the set of live
  sandboxes are kept in a JSON registry under the user's state dir, shared by
  the processes of this machine. The lifetime is enforced there too: an
  expired sandbox is destroyed by the next process that lists.
- No stdin, image, cpu, memory or network choice: the Worker's container
  configuration fixes them.

Each call uses its own short-lived ``httpx.AsyncClient`` (sharing one TLS
context), so the driver works from any event loop.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx

from ..driver import ErrorMap, Event, Exit, Output, map_errors
from ..errors import AuthenticationError, ProviderError, ProviderUnavailable, RateLimitError, SandboxNotFoundError, UnsupportedOperation
from ..models import DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_LIFETIME_SECONDS, SandboxConfig, SandboxInfo
from ..secrets import Secret, scrub
from ._label_registry import Entry, LabelRegistry, default_state_dir

WORKSPACE = "/workspace"
STREAM_SLACK = 30.0  # seconds the client waits for the bridge beyond a command's timeout
_CD = 'cd "$0" && exec "$@"'
# File scripts exit with an errno of their own finding (2 ENOENT, 20 ENOTDIR, 21 EISDIR, 13 EACCES).
_READ = '[ -d "$0" ] && exit 21; [ -e "$0" ] || exit 2; base64 -w0 "$0" || exit 13'
_WRITE = 'trap \'rm -f "$0"\' EXIT; [ -d "$1" ] && exit 21; mkdir -p "${1%/*}/" || exit 20; cat "$0" > "$1" || exit 13'


class CloudflareDriver:
    """Sandboxes behind a Cloudflare Sandbox Bridge Worker.

    Credentials: ``base_url`` (the Worker's URL, ``CLOUDFLARE_SANDBOX_BASE_URL``)
    and ``api_token`` (its ``SANDBOX_API_KEY`` secret, ``CLOUDFLARE_API_TOKEN``).
    Labels live in a registry file on this machine.
    """

    name = "cloudflare"

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
        missing = [name for name, value in (("CLOUDFLARE_SANDBOX_BASE_URL", base_url), ("CLOUDFLARE_API_TOKEN", api_token)) if not value]
        if not base_url or not api_token:
            raise ProviderUnavailable(
                f"Cloudflare needs {' and '.join(missing)}: set the Sandbox Bridge Worker's URL and its API token "
                "(or pass base_url= and api_token= / Sandbox.configure(cloudflare={...}))",
                provider=self.name,
            )
        self.base_url = base_url.rstrip("/")
        self._token = Secret(api_token)
        self.command_timeout = command_timeout
        self.lifetime = lifetime
        self.request_timeout = request_timeout
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir(self.name)
        self.registry = LabelRegistry(self.state_dir, scope=self.base_url)
        self._ssl: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"<CloudflareDriver url={self.base_url!r}>"

    # -- HTTP and its errors ----------------------------------------------------------
    def _client(self, read_timeout: float | None = None) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            with contextlib.suppress(ImportError):  # httpx brings certifi
                import certifi

                self._ssl.load_verify_locations(certifi.where())
        timeout = httpx.Timeout(self.request_timeout, read=read_timeout or self.request_timeout)
        headers = {"Authorization": f"Bearer {self._token.value}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, verify=self._ssl, timeout=timeout)

    def _errors(self, path: str | None = None) -> ErrorMap:
        """The bridge's failures in the library's terms; ``path`` is the file a file route was asked for."""
        unreachable = f"cloudflare: cannot reach the bridge at {self.base_url}"
        return (
            (httpx.HTTPStatusError, lambda error: self._refusal(error, path)),
            (httpx.TransportError, lambda error: ProviderError(f"{unreachable}: {type(error).__name__}: {error}", provider=self.name)),
        )

    def _refusal(self, error: BaseException, path: str | None) -> Exception:
        assert isinstance(error, httpx.HTTPStatusError)
        response, status = error.response, error.response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {"error": response.text[:500]}
        message, code = scrub(str(body.get("error", "")), self._token), str(body.get("code", ""))
        where = f"cloudflare ({status}{' ' + code if code else ''}): {message}"
        if status == 401 or code == "unauthorized":
            return AuthenticationError(f"{where}; check CLOUDFLARE_API_TOKEN (the token is never shown)", provider=self.name)
        if status == 429:
            return RateLimitError(where, provider=self.name, retry_after=_retry_after(response.headers.get("retry-after")))
        if path is not None and status == 404:
            return FileNotFoundError(errno.ENOENT, "no such file in the sandbox", path)
        if path is not None and "directory" in message.lower():
            return IsADirectoryError(errno.EISDIR, "is a directory in the sandbox", path)
        if path is not None and status == 403:
            return PermissionError(errno.EACCES, f"the bridge refuses it ({message})", path)
        if status in (400, 403, 422):
            return ValueError(f"the Cloudflare bridge rejected the request: {message}")
        return ProviderError(where, provider=self.name)

    # -- lifecycle --------------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        fixed = "the Worker's container configuration (wrangler.toml) fixes it"
        if config.image:
            raise UnsupportedOperation(self.name, "choosing an image", fixed)
        if config.memory_mb or config.cpus:
            raise UnsupportedOperation(self.name, "choosing cpu or memory", fixed + " (instance_type)")
        if config.network is not None:
            raise UnsupportedOperation(self.name, "network control", "the bridge API has no network setting")
        if config.provider_config:
            raise ValueError(f"the Cloudflare provider takes no provider_config, got {sorted(config.provider_config)}")
        with map_errors(self._errors()):
            async with self._client() as client:
                sandbox_id = str((await _ok(await client.post("/v1/sandbox"))).json()["id"])
        now = time.time()
        entry: Entry = {"labels": dict(config.labels), "created_at": now, "expires_at": now + (config.lifetime or self.lifetime), "env": dict(config.env)}
        try:
            await anyio.to_thread.run_sync(self.registry.add, sandbox_id, entry)
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._delete(sandbox_id)  # never leave a sandbox nobody can find
            raise
        return self._info({**entry, "id": sandbox_id})

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
            raise SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'cloudflare'")
        return entry

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        try:
            return self._info(await self._entry(sandbox_id))
        except SandboxNotFoundError:
            return None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        live, expired = await anyio.to_thread.run_sync(self.registry.find, dict(labels))
        for entry in expired:  # the lifetime is ours to enforce: the bridge has no TTL
            with contextlib.suppress(ProviderError):
                await self._delete(entry["id"])
        return [self._info(entry) for entry in live]

    async def destroy(self, sandbox_id: str) -> bool:
        if await anyio.to_thread.run_sync(self.registry.get, sandbox_id) is None:
            return False
        await self._delete(sandbox_id)
        return await anyio.to_thread.run_sync(self.registry.remove, sandbox_id) is not None

    async def _delete(self, sandbox_id: str) -> None:
        with map_errors(self._errors()):
            async with self._client() as client:
                await _ok(await client.delete(f"/v1/sandbox/{quote(sandbox_id, safe='')}"))

    async def health_check(self) -> bool:
        """``GET /health``: creates nothing."""
        try:
            async with self._client() as client:
                return (await client.get("/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        """Nothing to release: each call has its own client."""

    # -- commands -----------------------------------------------------------------------
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
        """The exec's SSE stream as events; the bridge kills the command at ``timeout_ms``."""
        entry = await self._entry(sandbox_id)
        workdir = _absolute(cwd) if cwd else WORKSPACE
        if not _in_workspace(workdir):  # the bridge refuses such a cwd: the command goes there itself
            argv, workdir = ["/bin/sh", "-c", _CD, workdir, *argv], WORKSPACE
        merged_env = {**entry.get("env", {}), **env}
        body = {"argv": list(argv), "timeout_ms": max(1, int(timeout * 1000)), "cwd": workdir}
        sid = quote(sandbox_id, safe="")
        started = time.monotonic()
        with map_errors(self._errors()):
            async with self._client(read_timeout=timeout + STREAM_SLACK) as client:
                headers, session = dict[str, str](), None
                if merged_env:
                    response = await _ok(await client.post(f"/v1/sandbox/{sid}/session", json={"env": merged_env, "cwd": workdir}))
                    session = headers["Session-Id"] = str(response.json()["id"])
                try:
                    async with client.stream("POST", f"/v1/sandbox/{sid}/exec", json=body, headers=headers) as response:
                        await _ok(response)
                        async for event, data in _sse(response):
                            if event in ("stdout", "stderr"):
                                yield Output("stdout" if event == "stdout" else "stderr", base64.b64decode(data))
                            elif event in ("exit", "error"):
                                break
                        else:
                            event, data = "exit", "{}"  # the stream ended with no status: as a killed command
                    elapsed = (time.monotonic() - started) * 1000
                    if event == "exit":
                        yield Exit(int(json.loads(data).get("exit_code", -1)), duration_ms=elapsed)
                    else:
                        yield Exit(-1, timed_out=self._timed_out(data, started, timeout), duration_ms=elapsed)
                finally:
                    if session is not None:
                        with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                            await client.delete(f"/v1/sandbox/{sid}/session/{quote(session, safe='')}")

    def _timed_out(self, data: str, started: float, limit: float) -> bool:
        """An ``error`` event is a timeout when it says so or when the time is up; else it is raised."""
        try:
            error = json.loads(data)
        except ValueError:
            error = {"error": data}
        message = str(error.get("error", ""))
        if "timed out" in message.lower() or "timeout" in message.lower() or time.monotonic() - started >= limit * 0.95:
            return True
        raise ProviderError(f"cloudflare exec failed ({error.get('code', 'exec_error')}): {scrub(message, self._token)}", provider=self.name)

    async def _script(self, sandbox_id: str, script: str, path: str, *args: str) -> bytes:
        """Run a file script in ``/workspace``; its stdout, or the ``OSError`` its exit code names."""
        out, err, code = bytearray(), bytearray(), -1
        events = self.exec(sandbox_id, ["/bin/sh", "-c", script, *args], env={}, cwd=None, stdin=None, timeout=self.command_timeout, output_limit=0)
        async for event in events:
            if isinstance(event, Output):
                (out if event.stream == "stdout" else err).extend(event.data)
            else:
                code = errno.ETIMEDOUT if event.timed_out else event.exit_code
        if code == 0:
            return bytes(out)
        number = code if code in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ETIMEDOUT) else errno.EACCES
        detail = err.decode(errors="replace").strip()
        raise OSError(number, f"{os.strerror(number)} in the sandbox" + (f" ({detail})" if detail else ""), path)

    # -- files ---------------------------------------------------------------------------
    def _file_url(self, sandbox_id: str, path: str) -> str:
        return f"/v1/sandbox/{quote(sandbox_id, safe='')}/file/{quote(path.lstrip('/'), safe='/')}"

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self._entry(sandbox_id)
        remote = _absolute(path)
        target = remote if _in_workspace(remote) else f"{WORKSPACE}/.sandboxes-upload-{uuid.uuid4().hex}"
        with map_errors(self._errors(path)):
            async with self._client() as client:
                await _ok(await client.put(self._file_url(sandbox_id, target), content=data, headers={"Content-Type": "application/octet-stream"}))
        if target != remote:  # the file route writes only in /workspace: the copy goes into place from there
            await self._script(sandbox_id, _WRITE, path, posixpath.basename(target), remote)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        await self._entry(sandbox_id)
        remote = _absolute(path)
        if not _in_workspace(remote):  # the file route refuses: base64 in the sandbox still reads
            return base64.b64decode(await self._script(sandbox_id, _READ, path, remote))
        with map_errors(self._errors(path)):
            async with self._client() as client:
                return (await _ok(await client.get(self._file_url(sandbox_id, remote)))).content


async def _ok(response: httpx.Response) -> httpx.Response:
    """The response when it succeeded; else ``HTTPStatusError``, its body read, for ``_errors``."""
    if not response.is_success:
        await response.aread()
        response.raise_for_status()
    return response


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    event, data = "message", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif not line.startswith(":"):
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
