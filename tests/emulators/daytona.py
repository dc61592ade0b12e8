"""A loopback emulator of Daytona's control plane and in-sandbox toolbox (SDK 0.226.1).

The unmodified ``daytona`` SDK (async client: aiohttp) runs against it. It
serves what the SDK calls on create, get, list, delete, exec and file
transfer, with the response shapes the SDK validates (see
``../shared/specs/daytona/`` and the specs README):

- ``POST /sandbox`` (state ``started`` at once), ``GET /sandbox`` (``labels``
  JSON filter, ``cursor``/``limit`` paging answering ``{items, nextCursor}``),
  ``GET /sandbox/{id}``, ``DELETE /sandbox/{id}``;
- ``POST /toolbox/{id}/process/execute`` (``command, cwd, envs, timeout``;
  stdout and stderr merged into ``result``, 408 with code
  ``PROCESS_EXECUTION_TIMEOUT`` when the daemon's timeout fires);
- ``POST /toolbox/{id}/files/bulk-upload`` (multipart ``files[i].path`` /
  ``files[i].file``) and ``POST /toolbox/{id}/files/bulk-download``
  (multipart answer with ``file`` or ``error`` parts).

Commands run as real local processes (``sh -c``) in a temp dir per sandbox.
Ids are deterministic (``sandbox-0001``, ...) so vcrpy cassettes replay.
Faults: ``fail_next(status, retry_after)``, ``vanish(id)``, ``hang(seconds)``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._server import FaultInjector, HttpEmulator, base_env, kill_group

API_KEY = "fake"
ORGANIZATION = "org-emulated"
DEFAULT_EXEC_TIMEOUT = 10  # seconds: the toolbox API's documented default


@dataclass
class EmulatedSandbox:
    id: str
    labels: dict[str, str]
    env: dict[str, str]
    body: dict[str, Any]
    root: Path
    created_at: str
    expires_at: str | None = None
    born: float = 0.0  # monotonic, for its lifetime
    processes: set[asyncio.subprocess.Process] = field(default_factory=set)


def _error(status: int, message: str, code: str | None = None, source: str = "DAYTONA_API") -> JSONResponse:
    body: dict[str, Any] = {"statusCode": status, "message": message, "error": _reason(status), "source": source}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _reason(status: int) -> str:
    return {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 408: "Request Timeout", 429: "Too Many Requests"}.get(
        status, "Internal Server Error" if status >= 500 else "Error"
    )


class DaytonaEmulator(HttpEmulator):
    """Daytona's REST control plane and toolbox on one loopback port."""

    def __init__(
        self, *, page_size: int = 2, api_key: str = API_KEY, max_alive: int | None = None, drop_rate: float = 0.0, seed: int = 0, latency: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.page_size = page_size
        self.max_alive = max_alive  # the organisation's resources: a creation past them is refused with a 403
        self.peak_alive = 0
        self.lifetimes: list[float] = []  # seconds from creation to removal, of every sandbox removed
        self.refused = 0
        self.sandboxes: dict[str, EmulatedSandbox] = {}
        self.requests: list[tuple[str, str]] = []
        self.executions: list[dict[str, Any]] = []  # process/execute bodies, for the tests
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="daytona-emulator-"))
        self.faults = FaultInjector(
            lambda status: {"statusCode": status, "message": f"injected {status}", "error": _reason(status)}, drop_rate=drop_rate, seed=seed, latency=latency
        )
        routes = [
            Route("/sandbox", self.create, methods=["POST"]),
            Route("/sandbox", self.list, methods=["GET"]),
            Route("/sandbox/{sid}", self.get, methods=["GET"]),
            Route("/sandbox/{sid}", self.delete, methods=["DELETE"]),
            Route("/toolbox/{sid}/process/execute", self.execute, methods=["POST"]),
            Route("/toolbox/{sid}/files/bulk-upload", self.upload, methods=["POST"]),
            Route("/toolbox/{sid}/files/bulk-download", self.download, methods=["POST"]),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(_AuthAndLog, emulator=self)
        self._serve(app)

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox disappears behind the client's back (as if reaped by the platform)."""
        with self._lock:
            sandbox = self.sandboxes.pop(sandbox_id)
        for process in list(sandbox.processes):
            kill_group(process)
        shutil.rmtree(sandbox.root, ignore_errors=True)

    # -- control plane ------------------------------------------------------------------
    def _dto(self, sandbox: EmulatedSandbox, state: str = "started") -> dict[str, Any]:
        body = sandbox.body
        return {
            "id": sandbox.id,
            "organizationId": ORGANIZATION,
            "name": sandbox.id,
            "snapshot": body.get("snapshot") or "daytonaio/sandbox:emulated",
            "user": body.get("user") or "daytona",
            "env": sandbox.env,
            "labels": sandbox.labels,
            "public": bool(body.get("public", False)),
            "networkBlockAll": bool(body.get("networkBlockAll", False)),
            "kvm": False,
            "target": body.get("target") or "us",
            "cpu": int(body.get("cpu") or 1),
            "gpu": int(body.get("gpu") or 0),
            "memory": int(body.get("memory") or 1),
            "disk": int(body.get("disk") or 3),
            "state": state,
            "desiredState": "destroyed" if state == "destroyed" else "started",
            "autoStopInterval": body.get("autoStopInterval", 15),
            "autoArchiveInterval": body.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": body.get("autoDeleteInterval", -1),
            "createdAt": sandbox.created_at,
            "autoDestroyAt": sandbox.expires_at,
            "updatedAt": sandbox.created_at,
            "toolboxProxyUrl": f"{self.url}/toolbox",
            "daemonVersion": "emulated",
        }

    async def create(self, request: Request) -> Response:
        body = await request.json()
        labels = body.get("labels") or {}
        env = body.get("env") or {}
        if not all(isinstance(v, str) for v in [*labels.values(), *env.values()]):
            return _error(400, "labels and env values must be strings")
        with self._lock:
            sandbox_id = f"sandbox-{next(self._ids):04d}"
        root = self._root / sandbox_id
        root.mkdir()
        now = time.time()
        ttl = body.get("ttlMinutes")
        sandbox = EmulatedSandbox(
            id=sandbox_id, labels=dict(labels), env=dict(env), body=body, root=root, created_at=_iso(now),
            expires_at=_iso(now + ttl * 60) if ttl else None, born=time.monotonic(),
        )  # fmt: skip
        with self._lock:
            if self.max_alive is not None and len(self.sandboxes) >= self.max_alive:
                self.refused += 1
                return _error(403, f"Sandbox resource limit reached ({self.max_alive}), please try again later.")
            self.sandboxes[sandbox_id] = sandbox
            self.peak_alive = max(self.peak_alive, len(self.sandboxes))
        return JSONResponse(self._dto(sandbox))

    async def list(self, request: Request) -> Response:
        wanted = json.loads(request.query_params.get("labels") or "{}")
        limit = int(request.query_params.get("limit") or self.page_size)
        start = int(request.query_params.get("cursor") or 0)
        with self._lock:
            matching = [s for s in self.sandboxes.values() if all(s.labels.get(k) == v for k, v in wanted.items())]
        page = matching[start : start + limit]
        following = start + limit
        items = [self._dto(s) for s in page]
        for item in items:
            item.pop("env")
        return JSONResponse({"items": items, "nextCursor": str(following) if following < len(matching) else None})

    def _find(self, sandbox_id: str) -> EmulatedSandbox | None:
        with self._lock:
            return self.sandboxes.get(sandbox_id)

    async def get(self, request: Request) -> Response:
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None:
            return _error(404, f"Sandbox with ID or name {request.path_params['sid']} not found")
        return JSONResponse(self._dto(sandbox))

    async def delete(self, request: Request) -> Response:
        sandbox_id = request.path_params["sid"]
        with self._lock:
            sandbox = self.sandboxes.pop(sandbox_id, None)
            if sandbox is not None:
                self.lifetimes.append(time.monotonic() - sandbox.born)
        if sandbox is None:
            return _error(404, f"Sandbox with ID or name {sandbox_id} not found")
        for process in list(sandbox.processes):
            kill_group(process)
        shutil.rmtree(sandbox.root, ignore_errors=True)
        return JSONResponse(self._dto(sandbox, state="destroyed"))

    # -- toolbox --------------------------------------------------------------------
    def _sandbox_or_404(self, request: Request) -> EmulatedSandbox | Response:
        sandbox = self._find(request.path_params["sid"])
        if sandbox is None:
            return _error(404, "sandbox not found", source="DAYTONA_PROXY")
        return sandbox

    def _resolve(self, sandbox: EmulatedSandbox, path: str) -> Path:
        return Path(path) if path.startswith("/") else sandbox.root / path

    async def execute(self, request: Request) -> Response:
        sandbox = self._sandbox_or_404(request)
        if isinstance(sandbox, Response):
            return sandbox
        body = await request.json()
        self.executions.append(body)
        command = body.get("command")
        if not isinstance(command, str) or not command:
            return _error(400, "command is required", source="DAYTONA_DAEMON")
        cwd = self._resolve(sandbox, body["cwd"]) if body.get("cwd") else sandbox.root
        if not cwd.is_dir():
            return _error(400, f"working directory {body['cwd']} does not exist", source="DAYTONA_DAEMON")
        timeout = body.get("timeout") or DEFAULT_EXEC_TIMEOUT
        env = {**base_env(str(sandbox.root)), **sandbox.env, **(body.get("envs") or {})}
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=cwd, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        sandbox.processes.add(process)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            kill_group(process)
            await process.wait()
            return _error(408, "command execution timeout", code="PROCESS_EXECUTION_TIMEOUT", source="DAYTONA_DAEMON")
        finally:
            sandbox.processes.discard(process)
        return JSONResponse({"exitCode": process.returncode, "result": output.decode("utf-8", errors="replace")})

    async def upload(self, request: Request) -> Response:
        sandbox = self._sandbox_or_404(request)
        if isinstance(sandbox, Response):
            return sandbox
        form = await request.form(max_part_size=64 * 1024 * 1024)
        paths: dict[str, str] = {}
        files: dict[str, bytes] = {}
        for key, value in form.multi_items():
            index = key.split("]")[0].removeprefix("files[")
            if key.endswith(".path"):
                paths[index] = str(value)
            elif key.endswith(".file") and not isinstance(value, str):
                files[index] = await value.read()
        errors = []
        for index, destination in paths.items():
            target = self._resolve(sandbox, destination)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(files.get(index, b""))
            except OSError as error:
                errors.append(f"{destination}: {error.strerror}")
        await form.close()
        if errors:
            return JSONResponse({"errors": errors}, status_code=400)
        return Response(status_code=200)

    async def download(self, request: Request) -> Response:
        sandbox = self._sandbox_or_404(request)
        if isinstance(sandbox, Response):
            return sandbox
        body = await request.json()
        boundary = uuid.uuid4().hex
        parts = []
        for path in body.get("paths") or []:
            target = self._resolve(sandbox, path)
            quoted = path.replace("\\", "\\\\").replace('"', '\\"')
            try:
                data = target.read_bytes()
                name, content_type = "file", "application/octet-stream"
            except FileNotFoundError:
                data = json.dumps({"message": f"file not found: {path}", "statusCode": 404, "code": "FILE_NOT_FOUND", "source": "DAYTONA_DAEMON"}).encode()
                name, content_type = "error", "application/json"
            except IsADirectoryError:
                data = json.dumps(
                    {"message": f"path is a directory: {path}", "statusCode": 400, "code": "INVALID_FILE_PATH", "source": "DAYTONA_DAEMON"}
                ).encode()
                name, content_type = "error", "application/json"
            except PermissionError:
                data = json.dumps(
                    {"message": f"permission denied: {path}", "statusCode": 403, "code": "FILE_ACCESS_DENIED", "source": "DAYTONA_DAEMON"}
                ).encode()
                name, content_type = "error", "application/json"
            head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{quoted}"\r\nContent-Type: {content_type}\r\n\r\n'
            parts.append(head.encode() + data + b"\r\n")
        payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return Response(payload, media_type=f"multipart/form-data; boundary={boundary}")


class _AuthAndLog:
    """Bearer auth as the API checks it, and a log of (method, path) for the tests."""

    def __init__(self, app: Any, emulator: DaytonaEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            self.emulator.requests.append((request.method, request.url.path))
            if request.headers.get("authorization") != f"Bearer {self.emulator.api_key}":
                await _error(401, "Unauthorized")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def provider_env(emulator: DaytonaEmulator, api_key: str = API_KEY) -> dict[str, str]:
    """The SDK's own configuration variables pointing at the emulator."""
    return {"DAYTONA_API_URL": emulator.url, "DAYTONA_API_KEY": api_key, "DAYTONA_USE_DEPRECATED_POLLING": "true"}


@contextmanager
def running() -> Iterator[DaytonaEmulator]:
    """A started emulator, stopped afterwards."""
    emulator = DaytonaEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@contextmanager
def open_provider(emulator: DaytonaEmulator | None = None) -> Iterator[Any]:
    """Start the emulator (unless given) and yield a DaytonaProvider pointed at it.

    The SDK is configured through its own variables (DAYTONA_API_URL,
    DAYTONA_API_KEY, DAYTONA_USE_DEPRECATED_POLLING), set only while the
    provider reads them, so other tests never see Daytona credentials.
    """
    from sandboxes.providers import DaytonaProvider

    owned = emulator is None
    emulator = emulator or DaytonaEmulator().start()
    try:
        with mock.patch.dict(os.environ, provider_env(emulator)):
            provider = DaytonaProvider()
        provider.emulator = emulator  # type: ignore[attr-defined]
        try:
            yield provider
        finally:
            with warnings.catch_warnings():
                provider.close()
    finally:
        if owned:
            emulator.stop()
