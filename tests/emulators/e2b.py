"""A loopback emulator of E2B: the control-plane REST API and envd, on 127.0.0.1.

The unmodified ``e2b`` SDK talks to it exactly as it talks to the service:
REST for create/list/connect/get/kill (``X-API-KEY``, ``X-Next-Token`` paging),
and envd's Connect RPC ``process.Process`` (served by the stubs the wheel ships)
plus ``/files`` for the sandbox itself. One server answers both; the SDK's
``E2b-Sandbox-Id`` header says which sandbox a request is for, as E2B's edge
proxy does. Commands are real local processes in a per-sandbox directory,
each in a private mount namespace (bubblewrap) whose ``/tmp`` is the
sandbox's own, so two sandboxes never see each other's files.

Faults for tests: ``fail_next`` (status, Retry-After), ``hang_next``,
``drop_next`` (connection closed without an answer, before or after
serving the request), ``vanish`` (a sandbox
killed behind the client's back).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from e2b.envd.process import process_pb
from e2b.envd.process.process_connect import Process, ProcessASGIApplication
from protobuf import Oneof
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._server import drop_connection

FAKE_API_KEY = "e2b_emulator_0123456789abcdef0123456789abcdef"
ENVD_VERSION = "0.6.4"
ENVD_PORT = "49983"
READ_CHUNK = 64 * 1024
DRAIN_AFTER_EXIT = 0.2  # output a finished command left in its pipes is collected this long

__all__ = ["FAKE_API_KEY", "E2BEmulator", "open_emulator", "open_provider"]


@dataclass
class Fault:
    kind: str  # "fail" | "hang" | "drop" | "drop_after"
    target: str  # "api" | "envd" | "any"
    path: str | None = None
    method: str | None = None
    status: int = 500
    retry_after: float | None = None
    message: str = "injected fault"
    seconds: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, target: str, method: str, path: str) -> bool:
        return self.target in (target, "any") and (self.path is None or self.path in path) and (self.method is None or self.method.upper() == method)


@dataclass
class RunningProcess:
    pid: int
    proc: asyncio.subprocess.Process
    config: process_pb.ProcessConfig
    events: asyncio.Queue[process_pb.ProcessEvent | None]
    status_fd: int | None = None  # bwrap's --json-status-fd: the main process's exit, daemons aside


@dataclass
class EmulatedSandbox:
    id: str
    template: str
    metadata: dict[str, str]
    env: dict[str, str]
    started_at: float
    end_at: float
    root: Path
    internet: bool = True
    processes: dict[int, RunningProcess] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def _base_dir() -> str:
    """Outside /tmp when possible, so a sandbox's private /tmp never hides its own directory."""
    for candidate in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()


class E2BEmulator:
    """The E2B control plane and envd on one loopback port, run in a background thread."""

    def __init__(
        self,
        *,
        api_key: str = FAKE_API_KEY,
        page_size: int = 100,
        isolate: bool = True,
        max_alive: int | None = None,
        drop_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        self.page_size = page_size  # the most sandboxes one list page holds, whatever the client asks
        self.max_alive = max_alive  # E2B's concurrency cap: a creation past it is answered 429
        self.drop_rate = drop_rate  # the share of connections closed unanswered (before or after serving)
        self.dropped: list[tuple[float, str, str, str]] = []  # those dropped at random: (wall time, method, path, kind)
        self._random = random.Random(seed)
        self.peak_alive = 0
        self.refused = 0  # creations answered 429 for the cap
        self.created = 0
        self.lifetimes: list[float] = []  # seconds from creation to removal, of every sandbox removed
        self.sandboxes: dict[str, EmulatedSandbox] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._root = Path(tempfile.mkdtemp(prefix="e2b-emulator-", dir=_base_dir()))
        self._bwrap = _probe_bwrap(self._root) if isolate else None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._process_app = ProcessASGIApplication(_ProcessService(self))

    # -- lifecycle ---------------------------------------------------------------
    @property
    def isolated(self) -> bool:
        """Whether commands get a private /tmp and network namespace (bubblewrap works here)."""
        return self._bwrap is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        """The variables that point the SDK (and this library) at the emulator."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.api_key}

    def provider_options(self) -> dict[str, Any]:
        return {"api_key": self.api_key, "api_url": self.url, "sandbox_url": self.url}

    def start(self) -> E2BEmulator:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            log_level="critical",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            interface="asgi3",
            proxy_headers=False,
            loop="asyncio",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="e2b-emulator")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the E2B emulator did not start")
            time.sleep(0.005)
        return self

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            ids = list(self.sandboxes)
        for sandbox_id in ids:
            self._remove(sandbox_id)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> E2BEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- fault injection -------------------------------------------------------------
    def fail_next(
        self,
        status: int = 500,
        *,
        retry_after: float | None = None,
        count: int = 1,
        target: str = "api",
        path: str | None = None,
        method: str | None = None,
        message: str = "injected fault",
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status``."""
        headers = {}
        if should_retry is not None:
            headers["Should-Retry"] = "true" if should_retry else "false"
        for _ in range(count):
            self._add(Fault("fail", target, path, method, status, retry_after, message, headers=headers))

    def hang_next(self, *, seconds: float | None = None, target: str = "api", path: str | None = None, method: str | None = None) -> None:
        """Hold the next matching request without answering (until ``seconds`` or shutdown)."""
        self._add(Fault("hang", target, path, method, seconds=seconds))

    def drop_next(self, *, target: str = "api", path: str | None = None, method: str | None = None, after: bool = False) -> None:
        """Close the connection of the next matching request without an answer.

        With ``after=True`` the request is served first (the sandbox is
        created, say) and only the answer is lost.
        """
        self._add(Fault("drop_after" if after else "drop", target, path, method))

    def vanish(self, sandbox_id: str) -> None:
        """The sandbox dies behind the client's back (killed, or its lifetime ran out)."""
        self._remove(sandbox_id)

    @property
    def pending_faults(self) -> int:
        """Injected faults no request has hit yet."""
        with self._lock:
            return len(self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, target: str, method: str, path: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(target, method, path):
                    return self._faults.pop(index)
        return None

    # -- sandboxes -----------------------------------------------------------------------
    def live(self, sandbox_id: str) -> EmulatedSandbox | None:
        with self._lock:
            sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is not None and sandbox.end_at <= time.time():
            self._remove(sandbox_id)  # its lifetime ran out
            return None
        return sandbox

    def _all_live(self) -> list[EmulatedSandbox]:
        with self._lock:
            ids = list(self.sandboxes)
        return [s for s in (self.live(i) for i in ids) if s is not None]

    def _remove(self, sandbox_id: str) -> bool:
        with self._lock:
            sandbox = self.sandboxes.pop(sandbox_id, None)
            if sandbox is not None:
                self.lifetimes.append(time.time() - sandbox.started_at)
        if sandbox is None:
            return False
        for process in list(sandbox.processes.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        _kill_marked(f"E2B_SANDBOX_ID={sandbox_id}".encode())  # daemons too, as when E2B stops the VM
        shutil.rmtree(sandbox.root, ignore_errors=True)
        return True

    # -- the ASGI entry: the edge proxy ----------------------------------------------------
    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        target = "api" if path.startswith(("/v2/sandboxes", "/sandboxes")) else "envd"
        with self._lock:
            self.requests.append((method, path))
        fault = self._take_fault(target, method, path)
        if fault is None and self.drop_rate and self._random.random() < self.drop_rate:
            # A stream served with its answer lost would hold the connection open until the command ends
            # (one waiting for stdin: until its timeout); a dropped connection is seen at once.
            streaming = path.startswith("/process.Process/")
            fault = Fault("drop" if streaming else self._random.choice(("drop", "drop_after")), target)
            self.dropped.append((time.time(), method, path, fault.kind))
        if fault is not None:
            if fault.kind in ("drop", "drop_after"):
                if fault.kind == "drop_after":  # E2B acts on the request; only the answer is lost
                    await self._route(scope, receive, _discard)
                await drop_connection(send)
                return
            if fault.kind == "hang":
                deadline = time.monotonic() + (fault.seconds if fault.seconds is not None else 3600)
                while time.monotonic() < deadline and not self._closing.is_set():
                    await asyncio.sleep(0.02)
                if fault.seconds is None:
                    return
            else:
                headers = dict(fault.headers)
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(int(fault.retry_after))
                await _error(fault.status, fault.message, headers)(scope, receive, send)
                return
        await self._route(scope, receive, send)

    async def _route(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        target = "api" if path.startswith(("/v2/sandboxes", "/sandboxes")) else "envd"
        request = Request(scope, receive)
        if target == "api":
            response = await self._api(request)
            await response(scope, receive, send)
            return
        sandbox_id = request.headers.get("e2b-sandbox-id", "")
        if self.live(sandbox_id) is None:
            # What E2B's edge answers for a sandbox that is gone: the SDK reads "was not found".
            await _error(502, f"The sandbox {sandbox_id} was not found")(scope, receive, send)
            return
        if path.startswith("/process.Process/"):
            await self._process_app(scope, receive, send)
            return
        response = await self._envd(request, sandbox_id)
        await response(scope, receive, send)

    # -- control plane ------------------------------------------------------------------
    async def _api(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "Invalid API key")
        parts = request.url.path.strip("/").split("/")
        method = request.method
        if parts == ["v2", "sandboxes"] and method == "POST":
            return await self._create(request)
        if parts == ["v2", "sandboxes"] and method == "GET":
            return self._list(request)
        if len(parts) == 4 and parts[:2] == ["v2", "sandboxes"] and parts[3] == "connect" and method == "POST":
            return await self._connect(request, parts[2])
        if len(parts) == 2 and parts[0] == "sandboxes":
            if method == "DELETE":
                return Response(status_code=204) if self._remove(parts[1]) else _error(404, f"sandbox {parts[1]} not found")
            if method == "GET":
                sandbox = self.live(parts[1])
                if sandbox is None:
                    return _error(404, f"sandbox {parts[1]} not found")
                return JSONResponse(self._detail(sandbox))
        return _error(404, f"no route {method} {request.url.path}")

    async def _create(self, request: Request) -> Response:
        body = await request.json()
        template = body.get("templateID") or "base"
        timeout = int(body.get("timeout") or 300)
        sandbox_id = "i" + uuid.uuid4().hex[:19]
        root = self._root / sandbox_id
        for sub in ("home", "tmp"):
            (root / sub).mkdir(parents=True)
        os.chmod(root / "tmp", 0o1777)
        now = time.time()
        internet = body.get("allow_internet_access")
        sandbox = EmulatedSandbox(
            id=sandbox_id,
            template=template,
            metadata={str(k): str(v) for k, v in (body.get("metadata") or {}).items()},
            env={str(k): str(v) for k, v in (body.get("envVars") or {}).items()},
            started_at=now,
            end_at=now + timeout,
            root=root,
            internet=internet is not False,
        )
        with self._lock:
            if self.max_alive is not None and len(self.sandboxes) >= self.max_alive:
                self.refused += 1
                shutil.rmtree(root, ignore_errors=True)
                return _error(429, f"You have reached the maximum number of concurrent E2B sandboxes ({self.max_alive}).")
            self.sandboxes[sandbox_id] = sandbox
            self.created += 1
            self.peak_alive = max(self.peak_alive, len(self.sandboxes))
        return JSONResponse(self._created(sandbox), status_code=201)

    def _created(self, sandbox: EmulatedSandbox) -> dict[str, Any]:
        return {
            "templateID": sandbox.template,
            "sandboxID": sandbox.id,
            "clientID": "emulator",
            "envdVersion": ENVD_VERSION,
        }

    def _listed(self, sandbox: EmulatedSandbox) -> dict[str, Any]:
        return {
            **self._created(sandbox),
            "startedAt": _iso(sandbox.started_at),
            "endAt": _iso(sandbox.end_at),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "state": "running",
            "metadata": sandbox.metadata,
        }

    def _detail(self, sandbox: EmulatedSandbox) -> dict[str, Any]:
        return {**self._listed(sandbox), "allowInternetAccess": sandbox.internet}

    async def _connect(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.live(sandbox_id)
        if sandbox is None:
            return _error(404, f"sandbox {sandbox_id} not found")
        raw = await request.body()
        timeout = int((json.loads(raw) if raw else {}).get("timeout") or 300)
        sandbox.end_at = max(sandbox.end_at, time.time() + timeout)  # the TTL is only extended
        return JSONResponse(self._created(sandbox), status_code=201)

    def _list(self, request: Request) -> Response:
        query = request.query_params
        wanted: dict[str, str] = {}
        if query.get("metadata"):
            for key, value in urllib.parse.parse_qsl(query["metadata"], keep_blank_values=True):
                wanted[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
        states = set((query.get("state") or "running,paused").split(","))
        found = [s for s in self._all_live() if "running" in states and all(s.metadata.get(k) == v for k, v in wanted.items())]
        found.sort(key=lambda s: (s.started_at, s.id))
        limit = min(int(query.get("limit") or 100), self.page_size)
        start = int(base64.urlsafe_b64decode(query["nextToken"]).decode()) if query.get("nextToken") else 0
        page = found[start : start + limit]
        headers = {}
        if start + limit < len(found):
            headers["X-Next-Token"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
        return JSONResponse([self._listed(s) for s in page], headers=headers)

    # -- envd HTTP: files ----------------------------------------------------------------------
    def resolve(self, sandbox: EmulatedSandbox, path: str) -> Path | None:
        """Where a sandbox path lives on the host; None when the sandbox user may not touch it."""
        if not path.startswith("/"):
            return sandbox.home / path
        if self._bwrap is not None and (path == "/tmp" or path.startswith("/tmp/")):
            return sandbox.tmp / path[len("/tmp") :].lstrip("/")
        host = Path(os.path.normpath(path))
        if host == sandbox.root or sandbox.root in host.parents:
            return host
        if self._bwrap is None and (host == Path("/tmp") or Path("/tmp") in host.parents):
            return host
        return None

    async def _envd(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.live(sandbox_id)
        assert sandbox is not None
        if request.url.path == "/health":
            return Response(status_code=204)
        if request.url.path != "/files":
            return _error(404, f"no route {request.method} {request.url.path}")
        if request.method == "GET":
            path = request.query_params.get("path", "")
            host = self.resolve(sandbox, path)
            if host is None:
                return _error(403, f"open {path}: permission denied")
            if host.is_dir():
                return _error(400, f"path '{path}' is a directory")
            if not host.exists():
                return _error(404, f"path '{path}' does not exist")
            return Response(await asyncio.to_thread(host.read_bytes), media_type="application/octet-stream")
        if request.method == "POST":
            uploads: list[tuple[str, bytes]] = []
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                async with request.form(max_part_size=1 << 30) as form:
                    for _, part in form.multi_items():
                        if isinstance(part, str):
                            continue
                        uploads.append((request.query_params.get("path") or part.filename or "", await part.read()))
            else:
                uploads.append((request.query_params.get("path", ""), await request.body()))
            written = []
            for path, data in uploads:
                host = self.resolve(sandbox, path)
                if host is None:
                    return _error(403, f"open {path}: permission denied")
                if host.is_dir():
                    return _error(400, f"path '{path}' is a directory")
                try:
                    host.parent.mkdir(parents=True, exist_ok=True)
                    await asyncio.to_thread(host.write_bytes, data)
                except NotADirectoryError:
                    return _error(400, f"a parent of '{path}' is not a directory")
                written.append({"path": path, "name": os.path.basename(path), "type": "file"})
            return JSONResponse(written)
        return _error(405, "method not allowed")

    # -- envd processes --------------------------------------------------------------------------
    def argv(self, sandbox: EmulatedSandbox, config: process_pb.ProcessConfig, status_fd: int | None = None) -> list[str]:
        argv = [config.cmd, *config.args]
        if self._bwrap is None:
            return argv
        wrap = [self._bwrap, "--dev-bind", "/", "/", "--bind", str(sandbox.tmp), "/tmp"]
        if status_fd is not None:
            wrap += ["--json-status-fd", str(status_fd)]
        if Path("/tmp") in sandbox.root.parents:
            wrap += ["--bind", str(sandbox.root), str(sandbox.root)]
        if not sandbox.internet:
            wrap.append("--unshare-net")
        if config.cwd:
            seen = config.cwd if config.cwd.startswith("/") else str(sandbox.home / config.cwd)
            wrap += ["--chdir", seen]
        return [*wrap, "--die-with-parent", "--", *argv]

    def environment(self, sandbox: EmulatedSandbox, extra: dict[str, str]) -> dict[str, str]:
        """A clean environment: nothing of the host's (no API key) beyond PATH and locale."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(sandbox.home),
            "USER": "user",
            "E2B_SANDBOX": "true",  # as envd sets them; the id also marks the sandbox's processes
            "E2B_SANDBOX_ID": sandbox.id,
        }
        env.update(sandbox.env)
        env.update(extra)
        return env


def _kill_marked(marker: bytes) -> None:
    """Kill every process whose environment carries ``marker`` (a sandbox's, daemons included)."""
    for _ in range(3):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if marker not in environ.read().split(b"\0"):
                        continue
                os.kill(int(entry), signal.SIGKILL)
                found = True
            except (OSError, ValueError):
                continue
        if not found:
            return
        time.sleep(0.01)


def _probe_bwrap(root: Path) -> str | None:
    """A bubblewrap that can give a command a private /tmp here, or None (shared /tmp)."""
    try:
        from sandboxes.providers.local.layout import find_bwrap

        bwrap = find_bwrap()
    except Exception:
        return None
    probe = root / ".probe"
    probe.mkdir()
    try:
        done = subprocess.run(
            [bwrap, "--dev-bind", "/", "/", "--bind", str(probe), "/tmp", "--", "true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    finally:
        probe.rmdir()
    return bwrap if done.returncode == 0 else None


class _ProcessService(Process):
    """envd's process service: real subprocesses, events streamed as they come."""

    def __init__(self, emulator: E2BEmulator) -> None:
        self.emulator = emulator
        self._tasks: set[asyncio.Task[None]] = set()

    def _sandbox(self, ctx: Any) -> EmulatedSandbox:
        sandbox_id = ctx.request_headers.get("e2b-sandbox-id", "")
        sandbox = self.emulator.live(sandbox_id)
        if sandbox is None:
            raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox_id} was not found")
        return sandbox

    def _process(self, ctx: Any, selector: process_pb.ProcessSelector | None) -> RunningProcess:
        sandbox = self._sandbox(ctx)
        pid = selector.selector.value if selector is not None and selector.selector is not None else None
        process = sandbox.processes.get(pid) if isinstance(pid, int) else None
        if process is None:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
        return process

    async def start(self, request: process_pb.StartRequest, ctx: Any) -> AsyncIterator[process_pb.StartResponse]:
        sandbox = self._sandbox(ctx)
        config = request.process or process_pb.ProcessConfig()
        if config.cwd == "/":  # readable by the sandbox user, as on E2B (the engine makes working_dir from there)
            cwd: Path | None = Path("/")
        else:
            cwd = self.emulator.resolve(sandbox, config.cwd) if config.cwd else sandbox.home
        if cwd is None or not cwd.is_dir():
            raise ConnectError(Code.INVALID_ARGUMENT, f"cwd '{config.cwd}' does not exist")
        status_r, status_w = os.pipe() if self.emulator.isolated else (None, None)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.emulator.argv(sandbox, config, status_w),
                cwd=str(cwd),  # bwrap moves to the path as the sandbox sees it
                env=self.emulator.environment(sandbox, dict(config.envs)),
                stdin=asyncio.subprocess.PIPE if request.stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # one process group: a kill ends the whole tree
                pass_fds=(status_w,) if status_w is not None else (),
            )
        except OSError as error:
            if status_r is not None:
                os.close(status_r)
            raise ConnectError(Code.INVALID_ARGUMENT, f"failed to start {config.cmd}: {error}") from error
        finally:
            if status_w is not None:
                os.close(status_w)
        process = RunningProcess(proc.pid, proc, config, asyncio.Queue(), status_r)
        sandbox.processes[proc.pid] = process
        pump = asyncio.create_task(self._pump(sandbox, process))
        self._tasks.add(pump)  # the process outlives a client that goes away, as under envd
        pump.add_done_callback(self._tasks.discard)
        yield _start_response(Oneof("start", process_pb.ProcessEvent.StartEvent(pid=proc.pid)))
        while True:
            event = await process.events.get()
            if event is None:
                if self.emulator.live(sandbox.id) is None:
                    raise ConnectError(Code.UNAVAILABLE, f"The sandbox {sandbox.id} was not found")
                return
            yield process_pb.StartResponse(event=event)

    async def _pump(self, sandbox: EmulatedSandbox, process: RunningProcess) -> None:
        proc = process.proc
        assert proc.stdout is not None and proc.stderr is not None

        async def read(stream: asyncio.StreamReader, name: str) -> None:
            while data := await stream.read(READ_CHUNK):
                data_event = process_pb.ProcessEvent.DataEvent(output=Oneof(name, data))
                await process.events.put(process_pb.ProcessEvent(event=Oneof("data", data_event)))

        readers = [asyncio.create_task(read(proc.stdout, "stdout")), asyncio.create_task(read(proc.stderr, "stderr"))]
        code = await self._main_exit(process)
        # Like envd (Go's exec.Cmd), the end is the process's exit: a daemon it left
        # holding the pipes does not keep the command open.
        _, pending = await asyncio.wait(readers, timeout=DRAIN_AFTER_EXIT)
        for task in pending:
            task.cancel()
        if proc.returncode is None:  # bwrap stays until the daemons end: reap it then
            lingering = asyncio.create_task(proc.wait())
            self._tasks.add(lingering)  # type: ignore[arg-type]
            lingering.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]
        sandbox.processes.pop(process.pid, None)
        if code < 0:
            status = {signal.SIGKILL: "killed", signal.SIGTERM: "terminated"}.get(signal.Signals(-code), signal.Signals(-code).name)
            end = process_pb.ProcessEvent.EndEvent(exit_code=-1, exited=False, status=f"signal: {status}")
        else:
            end = process_pb.ProcessEvent.EndEvent(exit_code=code, exited=True, status=f"exit status {code}")
        if self.emulator.live(sandbox.id) is not None:
            await process.events.put(process_pb.ProcessEvent(event=Oneof("end", end)))
        await process.events.put(None)

    async def _main_exit(self, process: RunningProcess) -> int:
        """The exit code of the command itself (bwrap reports it; bwrap may outlive it)."""
        if process.status_fd is None:
            return await process.proc.wait()
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(process.status_fd, "rb", 0))
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    status = json.loads(line)
                    if "exit-code" in status:
                        return int(status["exit-code"])
        finally:
            transport.close()
        return await process.proc.wait()

    async def send_input(self, request: process_pb.SendInputRequest, ctx: Any) -> process_pb.SendInputResponse:
        process = self._process(ctx, request.process)
        stdin = process.proc.stdin
        if stdin is None:
            raise ConnectError(Code.FAILED_PRECONDITION, "the process was started without stdin")
        data = request.input.input.value if request.input is not None and request.input.input is not None else b""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(data)
            await stdin.drain()
        return process_pb.SendInputResponse()

    async def close_stdin(self, request: process_pb.CloseStdinRequest, ctx: Any) -> process_pb.CloseStdinResponse:
        process = self._process(ctx, request.process)
        if process.proc.stdin is not None:
            process.proc.stdin.close()
        return process_pb.CloseStdinResponse()

    async def send_signal(self, request: process_pb.SendSignalRequest, ctx: Any) -> process_pb.SendSignalResponse:
        process = self._process(ctx, request.process)
        number = signal.SIGTERM if request.signal == process_pb.Signal.SIGTERM else signal.SIGKILL
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, number)
        return process_pb.SendSignalResponse()

    async def list(self, request: process_pb.ListRequest, ctx: Any) -> process_pb.ListResponse:
        sandbox = self._sandbox(ctx)
        return process_pb.ListResponse(processes=[process_pb.ProcessInfo(config=p.config, pid=p.pid) for p in sandbox.processes.values()])


async def _discard(message: dict[str, Any]) -> None:
    """An ASGI send that loses the answer."""


def _start_response(event: Any) -> process_pb.StartResponse:
    return process_pb.StartResponse(event=process_pb.ProcessEvent(event=event))


@contextlib.contextmanager
def open_emulator(**options: Any) -> Iterator[E2BEmulator]:
    """A running emulator, stopped (every sandbox killed) on exit."""
    with E2BEmulator(**options) as emulator:
        yield emulator


@contextlib.contextmanager
def open_provider(**options: Any) -> Iterator[Any]:
    """Start an emulator and yield an ``E2BProvider`` pointed at it (``.emulator`` is the emulator)."""
    from sandboxes.providers import E2BProvider

    with open_emulator() as emulator:
        provider = E2BProvider(**emulator.provider_options(), **options)
        provider.emulator = emulator  # type: ignore[attr-defined]
        try:
            yield provider
        finally:
            leftovers = list(emulator.sandboxes)
            if leftovers:
                for sandbox_id in leftovers:
                    emulator.vanish(sandbox_id)
