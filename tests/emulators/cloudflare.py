"""A loopback emulator of the Cloudflare Sandbox Bridge Worker API.

It serves the routes of ``../shared/specs/cloudflare/bridge-openapi.json``
that the provider uses: ``POST /v1/sandbox`` -> ``{id}``; ``POST
/v1/sandbox/{id}/exec`` ``{argv, timeout_ms, cwd}`` answering Server-Sent
Events (``stdout``/``stderr`` base64 chunks as the process writes them, then
``exit {"exit_code"}`` or ``error {"error","code"}``); ``GET``/``PUT
/v1/sandbox/{id}/file/{path}`` inside ``/workspace``; sessions (``POST
.../session`` with ``cwd``/``env``, used through the ``Session-Id`` header;
``DELETE .../session/{sid}``); ``DELETE /v1/sandbox/{id}`` (204, even for
unknown ids); ``GET /health`` (no auth); Bearer auth elsewhere.

As on the real bridge, any id names a Durable Object: an id never created
still gets a fresh, empty container on first use. ``/workspace`` is a temp
dir per sandbox; commands run as real local processes, so ``/workspace``
in a command's arguments is rewritten to that dir (the library names the
working directory by its absolute path). Ids are
deterministic so vcrpy cassettes replay. Faults: ``fail_next(status,
retry_after)``, ``vanish(id)`` (the container is reset, as when the platform
evicts it), ``hang(seconds)``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._server import FaultInjector, HttpEmulator, base_env, kill_group

API_TOKEN = "fake-cloudflare-token"
WORKSPACE = "/workspace"
_WORKSPACE_WORD = re.compile(r"(?<![\w.-])/workspace(?![\w.-])")  # /workspace and /workspace/..., not /x/workspace


@dataclass
class Container:
    id: str
    root: Path
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: set[asyncio.subprocess.Process] = field(default_factory=set)


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class CloudflareBridgeEmulator(HttpEmulator):
    """The Sandbox Bridge Worker on one loopback port."""

    def __init__(self, *, api_token: str = API_TOKEN) -> None:
        self.api_token = api_token
        self.containers: dict[str, Container] = {}
        self.created: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self._ids = itertools.count(1)
        self._sessions = itertools.count(1)
        self._lock = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="cloudflare-emulator-"))
        self.faults = FaultInjector(lambda status: {"error": f"injected {status}", "code": "capacity_exceeded" if status == 429 else "exec_transport_error"})
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/sandbox", self.create, methods=["POST"]),
            Route("/v1/sandbox/{sid}", self.delete, methods=["DELETE"]),
            Route("/v1/sandbox/{sid}/exec", self.execute, methods=["POST"]),
            Route("/v1/sandbox/{sid}/file/{path:path}", self.read, methods=["GET"]),
            Route("/v1/sandbox/{sid}/file/{path:path}", self.write, methods=["PUT"]),
            Route("/v1/sandbox/{sid}/session", self.create_session, methods=["POST"]),
            Route("/v1/sandbox/{sid}/session/{session}", self.delete_session, methods=["DELETE"]),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(_AuthAndLog, emulator=self)
        self._serve(app)

    def vanish(self, sandbox_id: str) -> None:
        """The container is gone (evicted): the next use of the id starts an empty one."""
        with self._lock:
            container = self.containers.pop(sandbox_id, None)
        if container is not None:
            self._end(container)

    def _end(self, container: Container) -> None:
        for process in list(container.processes):
            kill_group(process)
        shutil.rmtree(container.root, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------
    def _container(self, sandbox_id: str) -> Container:
        """Any id names a Durable Object: a container is started on first use."""
        with self._lock:
            container = self.containers.get(sandbox_id)
            if container is None:
                root = self._root / f"{sandbox_id}-{len(os.listdir(self._root))}"
                root.mkdir()
                container = self.containers[sandbox_id] = Container(id=sandbox_id, root=root)
            return container

    def _local(self, container: Container, path: str) -> Path | None:
        """The host path of a sandbox path, or None when it is outside /workspace."""
        normal = posixpath.normpath(path if path.startswith("/") else f"{WORKSPACE}/{path}")
        if normal == WORKSPACE:
            return container.root
        if not normal.startswith(WORKSPACE + "/"):
            return None
        return container.root / normal[len(WORKSPACE) + 1 :]

    # -- routes ----------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def create(self, request: Request) -> Response:
        with self._lock:
            sandbox_id = f"cfsbx{next(self._ids):04d}"
            self.created.append(sandbox_id)
        return JSONResponse({"id": sandbox_id})

    async def delete(self, request: Request) -> Response:
        with self._lock:
            container = self.containers.pop(request.path_params["sid"], None)
        if container is not None:
            self._end(container)
        return Response(status_code=204)

    async def create_session(self, request: Request) -> Response:
        container = self._container(request.path_params["sid"])
        body = await request.json() if await request.body() else {}
        env = body.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            return _error(400, "env must map names to strings", "invalid_request")
        session = str(body.get("id") or f"session-{next(self._sessions):04d}")
        container.sessions[session] = {"env": env, "cwd": body.get("cwd") or WORKSPACE}
        return JSONResponse({"id": session})

    async def delete_session(self, request: Request) -> Response:
        container = self._container(request.path_params["sid"])
        session = request.path_params["session"]
        if container.sessions.pop(session, None) is None:
            return _error(502, f"no session {session}", "session_error")
        return JSONResponse({"success": True, "sessionId": session})

    async def execute(self, request: Request) -> Response:
        container = self._container(request.path_params["sid"])
        body = await request.json()
        argv = body.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            return _error(400, "argv must be a non-empty array", "invalid_request")
        argv = [_WORKSPACE_WORD.sub(lambda _: str(container.root), arg) for arg in argv]
        session: dict[str, Any] = {"env": {}, "cwd": WORKSPACE}
        session_id = request.headers.get("session-id")
        if session_id:
            if session_id not in container.sessions:
                return _error(502, f"no session {session_id}", "session_error")
            session = container.sessions[session_id]
        cwd = self._local(container, body.get("cwd") or session["cwd"])
        if cwd is None:
            return _error(403, "cwd must resolve to a location within /workspace", "invalid_request")
        timeout = (body.get("timeout_ms") or 600_000) / 1000
        env = {**base_env(str(container.root)), **session["env"]}
        return StreamingResponse(self._run(container, argv, cwd, env, timeout), media_type="text/event-stream")

    async def _run(self, container: Container, argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> AsyncIterator[bytes]:
        if not cwd.is_dir():
            yield _sse("error", json.dumps({"error": f"cwd does not exist: {cwd.name}", "code": "exec_error"}))
            return
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as error:
            yield _sse("stderr", base64.b64encode(f"{argv[0]}: {error.strerror}\n".encode()).decode())
            yield _sse("exit", json.dumps({"exit_code": 127}))
            return
        container.processes.add(process)
        queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()

        async def pump(name: str, stream: asyncio.StreamReader) -> None:
            while chunk := await stream.read(65536):
                await queue.put((name, chunk))
            await queue.put(None)

        assert process.stdout is not None and process.stderr is not None
        pumps = [asyncio.ensure_future(pump("stdout", process.stdout)), asyncio.ensure_future(pump("stderr", process.stderr))]
        deadline = asyncio.get_running_loop().time() + timeout
        open_streams = 2
        try:
            while open_streams:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    item = await asyncio.wait_for(queue.get(), max(remaining, 0.0))
                except TimeoutError:
                    kill_group(process)
                    await process.wait()
                    yield _sse("error", json.dumps({"error": f"Command timed out after {int(timeout * 1000)}ms", "code": "exec_error"}))
                    return
                if item is None:
                    open_streams -= 1
                    continue
                name, chunk = item
                yield _sse(name, base64.b64encode(chunk).decode())
            code = await process.wait()
            yield _sse("exit", json.dumps({"exit_code": code if code >= 0 else 128 - code}))
        finally:
            for task in pumps:
                task.cancel()
            if process.returncode is None:
                kill_group(process)
                await process.wait()
            container.processes.discard(process)

    async def read(self, request: Request) -> Response:
        container = self._container(request.path_params["sid"])
        path = "/" + request.path_params["path"]
        local = self._local(container, path)
        if local is None:
            return _error(403, "path must resolve to a location within /workspace", "invalid_request")
        try:
            return Response(local.read_bytes(), media_type="application/octet-stream")
        except FileNotFoundError:
            return _error(404, f"File not found: {path}", "workspace_read_not_found")
        except IsADirectoryError:
            return _error(400, f"Path is a directory: {path}", "invalid_request")

    async def write(self, request: Request) -> Response:
        container = self._container(request.path_params["sid"])
        path = "/" + request.path_params["path"]
        local = self._local(container, path)
        if local is None:
            return _error(403, "path must resolve to a location within /workspace", "invalid_request")
        data = await request.body()
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
        except IsADirectoryError:
            return _error(400, f"Path is a directory: {path}", "invalid_request")
        except OSError as error:
            return _error(502, f"write failed: {error.strerror}", "workspace_archive_write_error")
        return JSONResponse({"ok": True})


class _AuthAndLog:
    """Bearer auth (not on /health, as on the Worker) and a log of (method, path)."""

    def __init__(self, app: Any, emulator: CloudflareBridgeEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            self.emulator.requests.append((request.method, request.url.path))
            if request.url.path != "/health" and request.headers.get("authorization") != f"Bearer {self.emulator.api_token}":
                await _error(401, "Unauthorized", "unauthorized")(scope, receive, send)
                return
        await self.app(scope, receive, send)


@contextmanager
def running() -> Iterator[CloudflareBridgeEmulator]:
    """A started emulator, stopped afterwards."""
    emulator = CloudflareBridgeEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()


@contextmanager
def open_provider(emulator: CloudflareBridgeEmulator | None = None, state_dir: str | os.PathLike[str] | None = None) -> Iterator[Any]:
    """Start the emulator (unless given) and yield a CloudflareProvider pointed at it.

    The registry of labels goes to a private temp dir unless ``state_dir`` is given.
    """
    from sandboxes.providers import CloudflareProvider

    owned = emulator is None
    emulator = emulator or CloudflareBridgeEmulator().start()
    private = None if state_dir is not None else tempfile.mkdtemp(prefix="cloudflare-registry-")
    try:
        provider = CloudflareProvider(base_url=emulator.url, api_token=emulator.api_token, state_dir=state_dir or private)
        provider.emulator = emulator  # type: ignore[attr-defined]
        yield provider
    finally:
        if owned:
            emulator.stop()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
