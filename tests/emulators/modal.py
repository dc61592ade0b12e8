"""A loopback emulator of Modal's gRPC control plane and task command router.

The unmodified ``modal`` SDK (pinned 1.6.4) talks to it over grpclib on
127.0.0.1. It subclasses the server base classes shipped in the wheel
(``ModalClientBase``, ``TaskCommandRouterBase``) and implements the RPCs the
SDK uses to look up an app and an image, create, tag, list, wait on and
terminate V2 sandboxes, and run commands through the router (start, stdio
read, stdin write, wait, poll). The file API of the SDK is an exec of
``/__modal/.bin/modal-sandbox-fs-tools <json>``; that tool is emulated by a
small Python script run in the same view of the sandbox.

Each sandbox is a private directory (its workdir and ``/tmp``) and every
command is a real local process under bubblewrap, which binds the host's
system directories read-only and those private directories writable, so
absolute paths, ``pwd`` and a blocked network look as they would in a
container. Faults can be injected: ``fail_next`` (a gRPC status on the next
calls), ``hang_next``, ``drop_next`` (the connection closes unanswered, before
or after the call is served) and ``vanish`` (a sandbox disappears).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"
TOKEN_ID = "ak-emulated-token-id"
TOKEN_SECRET = "as-emulated-token-secret"
BUILDER_VERSION = "2026.10"  # the newest image builder the 1.6.4 SDK knows
LIST_PAGE_SIZE = 3  # small, so that clients must follow pages
STDIO_CHUNK = 256 * 1024
DRAIN_GRACE = 0.2  # seconds to collect output after the process exits (background children keep pipes)

# The stand-in for Modal's modal-sandbox-fs-tools binary: same JSON command, same error payloads.
FS_TOOL_SOURCE = r"""
import errno, json, os, sys
def fail(kind, message):
    sys.stderr.write(json.dumps({"error_kind": kind, "message": message}))
    sys.exit(1)
def kind_of(error, default):
    return {errno.ENOENT: "NotFound", errno.EISDIR: "IsDirectory", errno.ENOTDIR: "NotDirectory",
            errno.EACCES: "PermissionDenied", errno.EPERM: "PermissionDenied", errno.EROFS: "PermissionDenied",
            errno.EEXIST: "AlreadyExists"}.get(error.errno, default)
command = json.loads(sys.argv[1])
(op, args), = command.items()
path = args["path"]
try:
    if op == "ReadFile":
        if os.path.isdir(path):
            fail("IsDirectory", "Is a directory")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                sys.stdout.buffer.write(chunk)
    elif op == "WriteFile":
        if os.path.isdir(path):
            fail("IsDirectory", "Is a directory")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(path, "wb") as f:
            while chunk := sys.stdin.buffer.read(1 << 20):
                f.write(chunk)
    elif op == "MakeDirectory":
        if args.get("parents", True):
            os.makedirs(path, exist_ok=True)
        else:
            os.mkdir(path)
    elif op == "Remove":
        if os.path.isdir(path) and not os.path.islink(path):
            if args.get("recursive"):
                import shutil; shutil.rmtree(path)
            else:
                os.rmdir(path)
        else:
            os.unlink(path)
    else:
        fail("NotSupported", op + " is not emulated")
except OSError as error:
    fail(kind_of(error, "Other"), error.strerror or str(error))
"""


def _jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT: the SDK only reads its ``exp`` claim."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


@dataclass
class Fault:
    status: Status
    message: str
    method: str | None
    remaining: int
    details: list[Any] | None = None
    kind: str = "fail"  # "fail" | "hang" | "drop" | "drop_after"
    seconds: float | None = None  # how long a hang lasts (None: until the emulator stops)


@dataclass
class ExecState:
    """One command started through the router."""

    exec_id: str
    process: asyncio.subprocess.Process
    output: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    output_closed: list[bool] = field(default_factory=lambda: [False, False])
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    exit_code: int | None = None
    exit_signal: int | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    stdin_written: int = 0
    stdin_closed: bool = False
    timed_out: bool = False


@dataclass
class SandboxState:
    sandbox_id: str
    task_id: str
    app_id: str
    root: Path
    workdir: str
    env: dict[str, str]
    tags: dict[str, str]
    created_at: float
    timeout_secs: int
    image_id: str
    network_blocked: bool
    definition: api_pb2.Sandbox
    result: api_pb2.GenericResult | None = None
    execs: dict[str, ExecState] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    expiry: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self.result is None


class _Server(Server):
    """grpclib's server, closing its clients' connections on close (asyncio 3.11 keeps them open)."""

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self.protocols: list[Any] = []

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        self.protocols.append(protocol)
        return protocol

    def close(self) -> None:
        super().close()
        for protocol in self.protocols:
            connection = getattr(protocol, "connection", None)
            if connection is not None:
                connection.close()


class ModalEmulator:
    """State and behaviour shared by the two gRPC services; runs in its own thread and loop."""

    def __init__(self, *, bwrap: str | None = None, creations_per_second: float | None = None, drop_rate: float = 0.0, seed: int = 0) -> None:
        from sandboxes.providers.local.layout import find_bwrap

        self.bwrap = bwrap or find_bwrap()
        # Modal's creation rate limit: a bucket of a second's worth, refilled at this rate;
        # a creation that finds it empty is refused with RESOURCE_EXHAUSTED.
        self.creations_per_second = creations_per_second
        self._bucket = (creations_per_second or 0.0, time.monotonic())
        self.rate_refused = 0
        self.peak_alive = 0
        self.lifetimes: list[float] = []  # seconds from creation to the end, of every sandbox ended
        # The share of calls whose connection is closed unanswered; a creation's may be served first (a stray).
        self.drop_rate = drop_rate
        self.dropped: list[tuple[float, str, str, str]] = []  # the calls dropped at random: (wall time, "grpc", method, kind)
        self._random = random.Random(seed)
        self.port = 0
        self.apps: dict[tuple[str, str], str] = {}
        self.images: dict[str, api_pb2.Image] = {}
        self.sandboxes: dict[str, SandboxState] = {}
        self.calls: list[str] = []
        self.unimplemented: list[str] = []
        self.expected_tokens: tuple[str, str] | None = None
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._clock = 0.0
        self._ids = itertools.count(1)
        self._dir = Path(tempfile.mkdtemp(prefix="modal-emulator-"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._startup_error: BaseException | None = None

    # -- lifecycle (called from the test's thread) --------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModalEmulator:
        self._thread = threading.Thread(target=self._run, name="modal-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._startup_error is not None:
            raise RuntimeError("the Modal emulator did not start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:
            self._startup_error = error
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = _Server([ControlPlane(self), CommandRouter(self)])
        await server.start("127.0.0.1", 0)
        sockets = server._server.sockets if server._server else ()  # grpclib keeps the asyncio server here
        self.port = sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        for sandbox in list(self.sandboxes.values()):
            await self._finish(sandbox, api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
        server.close()
        await server.wait_closed()

    def _call(self, coroutine_factory: Callable[[], Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine_factory(), self._loop).result(30)

    # -- fault injection (thread-safe) ----------------------------------------------
    def fail_next(
        self,
        status: Status = Status.UNAVAILABLE,
        message: str = "injected fault",
        *,
        method: str | None = None,
        times: int = 1,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``times`` calls (of ``method``, or any) with a gRPC error."""
        details = [api_pb2.RPCRetryPolicy(retry_after_secs=retry_after)] if retry_after is not None else None
        with self._lock:
            self._faults.append(Fault(status, message, method, times, details))

    def hang_next(self, method: str | None = None, *, seconds: float | None = None, times: int = 1) -> None:
        """Hold the next ``times`` calls (of ``method``, or any) ``seconds`` before serving them."""
        with self._lock:
            self._faults.append(Fault(Status.OK, "hang", method, times, kind="hang", seconds=seconds))

    def drop_next(self, method: str | None = None, *, after: bool = False, times: int = 1) -> None:
        """Close the connection of the next ``times`` calls with no answer.

        With ``after=True`` the call is served first (the sandbox is created,
        say) and only the answer is lost.
        """
        with self._lock:
            self._faults.append(Fault(Status.UNAVAILABLE, "dropped", method, times, kind="drop_after" if after else "drop"))

    def vanish(self, sandbox_id: str) -> None:
        """Make a sandbox disappear without a trace, as if the service lost it."""

        async def go() -> None:
            sandbox = self.sandboxes.pop(sandbox_id, None)
            if sandbox is not None:
                await self._finish(sandbox, api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)

        self._call(go)

    def running_sandboxes(self) -> list[str]:
        return [s.sandbox_id for s in list(self.sandboxes.values()) if s.running]

    def check(self, method: str) -> Fault | None:
        """Record a call; raise an injected error, or return a hang or drop for ``disturb``."""
        self.calls.append(method)
        with self._lock:
            for fault in self._faults:
                if fault.method in (None, method) and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    if fault.kind == "fail":
                        raise GRPCError(fault.status, fault.message, fault.details)
                    return fault
            if self.drop_rate and self._random.random() < self.drop_rate:
                after = method.startswith("SandboxCreate") and self._random.random() < 0.5
                self.dropped.append((time.time(), "grpc", method, "drop_after" if after else "drop"))
                return Fault(Status.UNAVAILABLE, "dropped", method, 0, kind="drop_after" if after else "drop")
        return None

    async def disturb(self, fault: Fault | None, stream: Stream[Any, Any]) -> None:
        """Act out a hang or a dropped connection on this call (then it is served, or not at all)."""
        if fault is None:
            return
        if fault.kind == "hang":
            deadline = time.monotonic() + (fault.seconds if fault.seconds is not None else 3600)
            while time.monotonic() < deadline and self._stop is not None and not self._stop.is_set():
                await asyncio.sleep(0.02)
            return
        transport = stream._stream._transport  # grpclib's h2 stream holds the connection's socket

        async def lost(*args: Any, **kwargs: Any) -> None:
            transport.abort()
            raise GRPCError(Status.UNAVAILABLE, "connection dropped")  # grpclib stays quiet: the transport is closing

        if fault.kind == "drop_after":  # served; the answer's first bytes drop the connection instead
            stream._stream.send_headers = lost  # type: ignore[method-assign]
            return
        await lost()

    def check_token(self, stream: Stream[Any, Any]) -> None:
        if self.expected_tokens is None:
            return
        metadata = stream.metadata or {}
        if (metadata.get("x-modal-token-id"), metadata.get("x-modal-token-secret")) != self.expected_tokens:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret")

    # -- helpers -----------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}{next(self._ids):04d}"

    def now(self) -> float:
        """Strictly increasing timestamps, so paging by ``before_timestamp`` never skips a sandbox."""
        self._clock = max(time.time(), self._clock + 1e-3)
        return self._clock

    def router_access(self, sandbox: SandboxState) -> api_pb2.CommandRouterAccess:
        jwt = _jwt({"exp": int(time.time()) + 3600, "task_id": sandbox.task_id})
        return api_pb2.CommandRouterAccess(url=self.url, jwt=jwt)

    def sandbox(self, sandbox_id: str) -> SandboxState:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return sandbox

    def sandbox_by_task(self, task_id: str) -> SandboxState:
        for sandbox in self.sandboxes.values():
            if sandbox.task_id == task_id:
                if not sandbox.running:
                    raise GRPCError(Status.NOT_FOUND, f"Task {task_id} has finished")
                return sandbox
        raise GRPCError(Status.NOT_FOUND, f"Task {task_id} not found")

    def exec_of(self, task_id: str, exec_id: str) -> ExecState:
        sandbox = self.sandbox_by_task(task_id)
        state = sandbox.execs.get(exec_id)
        if state is None:
            raise GRPCError(Status.NOT_FOUND, f"Exec {exec_id} not found")
        return state

    def create_sandbox(self, request: api_pb2.SandboxCreateV2Request) -> SandboxState:
        if self.creations_per_second is not None:
            with self._lock:
                tokens, then = self._bucket
                now = time.monotonic()
                tokens = min(self.creations_per_second, tokens + (now - then) * self.creations_per_second)
                if tokens < 1:
                    self._bucket = (tokens, now)
                    self.rate_refused += 1
                    raise GRPCError(Status.RESOURCE_EXHAUSTED, "Sandbox creation rate limit exceeded, please slow down")
                self._bucket = (tokens - 1, now)
        definition = request.definition
        env: dict[str, str] = {}
        for source in request.secret_sources:
            if source.HasField("env"):
                env.update(source.env.contents)
            elif source.secret_id:
                raise GRPCError(Status.NOT_FOUND, f"Secret {source.secret_id} not found")
        workdir = definition.workdir if definition.HasField("workdir") and definition.workdir else "/"
        top = workdir.strip("/").split("/")[0]
        if top and os.path.lexists("/" + top):
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"the emulator mounts the workdir on a fresh top-level directory; {workdir!r} is under a host one",
            )
        sandbox_id = self.new_id("sb-v2")
        root = self._dir / sandbox_id
        (root / "work").mkdir(parents=True)
        (root / "tmp").mkdir()
        blocked = definition.network_access.network_access_type == api_pb2.NetworkAccess.NetworkAccessType.BLOCKED
        sandbox = SandboxState(
            sandbox_id=sandbox_id,
            task_id=f"ta-{uuid.uuid4().hex[:16]}V",
            app_id=request.app_id,
            root=root,
            workdir=workdir,
            env=env,
            tags={t.tag_name: t.tag_value for t in request.tags},
            created_at=self.now(),
            timeout_secs=definition.timeout_secs or 300,
            image_id=definition.image_id,
            network_blocked=blocked,
            definition=definition,
        )
        self.sandboxes[sandbox_id] = sandbox
        self.peak_alive = max(self.peak_alive, len(self.running_sandboxes()))
        loop = asyncio.get_running_loop()
        sandbox.expiry = loop.call_later(
            sandbox.timeout_secs,
            lambda: loop.create_task(self._finish(sandbox, api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT)),
        )
        return sandbox

    async def _finish(self, sandbox: SandboxState, status: int) -> None:
        """End a sandbox: every process in it is killed and its files removed."""
        if sandbox.expiry is not None:
            sandbox.expiry.cancel()
        if sandbox.result is None:
            sandbox.result = api_pb2.GenericResult(status=status, exitcode=137 if status != 1 else 0)
            self.lifetimes.append(time.time() - sandbox.created_at)
        for state in sandbox.execs.values():
            _kill_group(state.process)
        for state in sandbox.execs.values():
            try:
                await asyncio.wait_for(state.finished.wait(), 5)
            except TimeoutError:
                pass
        sandbox.finished.set()
        shutil.rmtree(sandbox.root, ignore_errors=True)

    def bwrap_argv(self, sandbox: SandboxState, argv: list[str], workdir: str) -> list[str]:
        """The command under bubblewrap: host system read-only, the sandbox's dirs writable."""
        mounted = sandbox.workdir if sandbox.workdir != "/" else "/workspace"
        skip = {"proc", "dev", "tmp", mounted.strip("/").split("/")[0]}
        args = [self.bwrap, "--tmpfs", "/"]
        for name in sorted(os.listdir("/")):
            path = "/" + name
            if name in skip:
                continue
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        args += ["--dev", "/dev", "--proc", "/proc"]
        args += ["--bind", str(sandbox.root / "tmp"), "/tmp", "--bind", str(sandbox.root / "work"), mounted]
        if sandbox.network_blocked:
            args.append("--unshare-net")
        if argv and argv[0] == FS_TOOLS:
            # The interpreter itself, not a virtualenv's link to it: a venv under /tmp is hidden here.
            argv = [os.path.realpath(sys.executable), "-c", FS_TOOL_SOURCE, *argv[1:]]
        return [*args, "--chdir", workdir, "--", *argv]

    async def start_exec(self, request: sr_pb2.TaskExecStartRequest) -> None:
        sandbox = self.sandbox_by_task(request.task_id)
        if request.exec_id in sandbox.execs:
            return  # idempotent retry
        if not request.command_args:
            raise GRPCError(Status.INVALID_ARGUMENT, "command_args must not be empty")
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": sandbox.workdir if sandbox.workdir != "/" else "/workspace",
            "LANG": "C.UTF-8",
            **sandbox.env,
            **dict(request.env),
        }
        for source in request.secret_sources:
            if source.HasField("env"):
                env.update(source.env.contents)
        workdir = request.workdir if request.HasField("workdir") and request.workdir else sandbox.workdir
        pipe = asyncio.subprocess.PIPE
        devnull = asyncio.subprocess.DEVNULL
        process = await asyncio.create_subprocess_exec(
            *self.bwrap_argv(sandbox, list(request.command_args), workdir),
            stdin=pipe,
            stdout=devnull if request.stdout_config == sr_pb2.TASK_EXEC_STDOUT_CONFIG_DEVNULL else pipe,
            stderr=devnull if request.stderr_config == sr_pb2.TASK_EXEC_STDERR_CONFIG_DEVNULL else pipe,
            env=env,
            start_new_session=True,
        )
        state = ExecState(request.exec_id, process)
        sandbox.execs[request.exec_id] = state
        timeout = request.timeout_secs if request.HasField("timeout_secs") and request.timeout_secs else None
        asyncio.get_running_loop().create_task(self._supervise(state, timeout))

    async def _supervise(self, state: ExecState, timeout: float | None) -> None:
        process = state.process
        pumps = [asyncio.create_task(self._pump(state, index, stream)) for index, stream in enumerate((process.stdout, process.stderr))]
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            state.timed_out = True
            _kill_group(process)
            await process.wait()
        await asyncio.wait(pumps, timeout=DRAIN_GRACE)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        code = process.returncode
        if code is not None and code < 0:
            state.exit_signal = -code
        else:
            state.exit_code = code
        async with state.changed:
            state.output_closed[:] = [True, True]
            state.changed.notify_all()
        state.finished.set()

    async def _pump(self, state: ExecState, index: int, stream: asyncio.StreamReader | None) -> None:
        try:
            while stream is not None:
                data = await stream.read(STDIO_CHUNK)
                if not data:
                    break
                async with state.changed:
                    state.output[index].extend(data)
                    state.changed.notify_all()
        finally:
            async with state.changed:
                state.output_closed[index] = True
                state.changed.notify_all()

    async def write_stdin(self, state: ExecState, offset: int, data: bytes, eof: bool) -> None:
        if state.stdin_closed:
            if data:
                raise GRPCError(Status.FAILED_PRECONDITION, "stdin is already closed")
            return
        skip = state.stdin_written - offset
        if skip < 0:
            raise GRPCError(Status.OUT_OF_RANGE, f"stdin offset {offset} is past {state.stdin_written}")
        data = data[skip:]
        stdin = state.process.stdin
        assert stdin is not None
        try:
            if data:
                stdin.write(data)
                await stdin.drain()
            state.stdin_written += len(data)
            if eof:
                state.stdin_closed = True
                stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            state.stdin_closed = True
            raise GRPCError(Status.FAILED_PRECONDITION, "the process has closed its stdin") from None


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exit_response(state: ExecState, cls: type[Any]) -> Any:
    if state.exit_signal is not None:
        return cls(signal=state.exit_signal)
    return cls(code=state.exit_code or 0)


class _Unimplemented:
    """Every RPC not written below answers UNIMPLEMENTED and is recorded."""

    emulator: ModalEmulator

    @classmethod
    def fill(cls, base: type) -> None:
        for name in getattr(base, "__abstractmethods__", ()):
            if name in cls.__dict__:
                continue

            def make(rpc: str) -> Callable[..., Any]:
                async def handler(self: _Unimplemented, stream: Stream[Any, Any]) -> None:
                    self.emulator.unimplemented.append(rpc)
                    raise GRPCError(Status.UNIMPLEMENTED, f"{rpc} is not emulated")

                handler.__name__ = rpc
                return handler

            setattr(cls, name, make(name))
        cls.__abstractmethods__ = frozenset()


class ControlPlane(_Unimplemented, ModalClientBase):
    """The control-plane service (``modal.client.ModalClient``)."""

    def __init__(self, emulator: ModalEmulator) -> None:
        self.emulator = emulator

    async def _begin(self, stream: Stream[Any, Any], method: str) -> Any:
        self.emulator.check_token(stream)
        request = await stream.recv_message()
        await self.emulator.disturb(self.emulator.check(method), stream)
        return request

    async def ClientHello(self, stream: Stream[empty_pb2.Empty, api_pb2.ClientHelloResponse]) -> None:
        await self._begin(stream, "ClientHello")
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(self, stream: Stream[api_pb2.AuthTokenGetRequest, api_pb2.AuthTokenGetResponse]) -> None:
        await self._begin(stream, "AuthTokenGet")
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=_jwt({"exp": int(time.time()) + 3600})))

    async def EnvironmentGetOrCreate(self, stream: Stream[api_pb2.EnvironmentGetOrCreateRequest, api_pb2.EnvironmentGetOrCreateResponse]) -> None:
        request = await self._begin(stream, "EnvironmentGetOrCreate")
        settings = api_pb2.EnvironmentSettings(image_builder_version=BUILDER_VERSION)
        metadata = api_pb2.EnvironmentMetadata(name=request.deployment_name or "main", settings=settings)
        response = api_pb2.EnvironmentGetOrCreateResponse(environment_id="en-emulated", metadata=metadata)
        await stream.send_message(response)

    async def AppGetOrCreate(self, stream: Stream[api_pb2.AppGetOrCreateRequest, api_pb2.AppGetOrCreateResponse]) -> None:
        request = await self._begin(stream, "AppGetOrCreate")
        key = (request.environment_name, request.app_name)
        app_id = self.emulator.apps.get(key)
        if app_id is None:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"App {request.app_name!r} not found")
            app_id = self.emulator.apps[key] = self.emulator.new_id("ap")
        await stream.send_message(api_pb2.AppGetOrCreateResponse(app_id=app_id))

    async def ImageGetOrCreate(self, stream: Stream[api_pb2.ImageGetOrCreateRequest, api_pb2.ImageGetOrCreateResponse]) -> None:
        request = await self._begin(stream, "ImageGetOrCreate")
        image_id = "im-" + uuid.uuid5(uuid.NAMESPACE_OID, request.image.SerializeToString().hex()).hex[:20]
        self.emulator.images[image_id] = request.image
        result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        await stream.send_message(api_pb2.ImageGetOrCreateResponse(image_id=image_id, result=result))

    async def SandboxCreateV2(self, stream: Stream[api_pb2.SandboxCreateV2Request, api_pb2.SandboxCreateV2Response]) -> None:
        request = await self._begin(stream, "SandboxCreateV2")
        sandbox = self.emulator.create_sandbox(request)
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=sandbox.sandbox_id,
                task_id=sandbox.task_id,
                metadata=api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id),
                command_router_access=self.emulator.router_access(sandbox),
            )
        )

    async def SandboxGetTaskIdV2(self, stream: Stream[api_pb2.SandboxGetTaskIdRequest, api_pb2.SandboxGetTaskIdResponse]) -> None:
        request = await self._begin(stream, "SandboxGetTaskIdV2")
        sandbox = self.emulator.sandbox(request.sandbox_id)
        if sandbox.running:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id))
        else:
            await stream.send_message(api_pb2.SandboxGetTaskIdResponse(task_result=sandbox.result))

    async def SandboxGetCommandRouterAccess(
        self,
        stream: Stream[api_pb2.SandboxGetCommandRouterAccessRequest, api_pb2.SandboxGetCommandRouterAccessResponse],
    ) -> None:
        request = await self._begin(stream, "SandboxGetCommandRouterAccess")
        if request.sandbox_id:
            sandbox = self.emulator.sandbox(request.sandbox_id)
        else:
            sandbox = self.emulator.sandbox_by_task(request.task_id)
        if not sandbox.running:
            raise GRPCError(Status.FAILED_PRECONDITION, f"Sandbox {sandbox.sandbox_id} has finished")
        access = self.emulator.router_access(sandbox)
        await stream.send_message(api_pb2.SandboxGetCommandRouterAccessResponse(url=access.url, jwt=access.jwt))

    async def SandboxWaitV2(self, stream: Stream[api_pb2.SandboxWaitRequest, api_pb2.SandboxWaitResponse]) -> None:
        request = await self._begin(stream, "SandboxWaitV2")
        sandbox = self.emulator.sandbox(request.sandbox_id)
        if sandbox.running and request.timeout > 0:
            try:
                await asyncio.wait_for(sandbox.finished.wait(), request.timeout)
            except TimeoutError:
                pass
        metadata = api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id)
        if sandbox.result is not None:
            metadata.result.CopyFrom(sandbox.result)
        await stream.send_message(api_pb2.SandboxWaitResponse(result=sandbox.result, metadata=metadata))

    async def SandboxTerminateV2(self, stream: Stream[api_pb2.SandboxTerminateRequest, api_pb2.SandboxTerminateResponse]) -> None:
        request = await self._begin(stream, "SandboxTerminateV2")
        sandbox = self.emulator.sandbox(request.sandbox_id)
        await self.emulator._finish(sandbox, api_pb2.GenericResult.GENERIC_STATUS_TERMINATED)
        await stream.send_message(api_pb2.SandboxTerminateResponse())

    async def SandboxTagsSetV2(self, stream: Stream[api_pb2.SandboxTagsSetRequest, empty_pb2.Empty]) -> None:
        request = await self._begin(stream, "SandboxTagsSetV2")
        sandbox = self.emulator.sandbox(request.sandbox_id)
        sandbox.tags = {t.tag_name: t.tag_value for t in request.tags}
        await stream.send_message(empty_pb2.Empty())

    async def SandboxTagsGetV2(self, stream: Stream[api_pb2.SandboxTagsGetRequest, api_pb2.SandboxTagsGetResponse]) -> None:
        request = await self._begin(stream, "SandboxTagsGetV2")
        sandbox = self.emulator.sandbox(request.sandbox_id)
        tags = [api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sandbox.tags.items()]
        await stream.send_message(api_pb2.SandboxTagsGetResponse(tags=tags))

    async def SandboxListV2(self, stream: Stream[api_pb2.SandboxListRequest, api_pb2.SandboxListResponse]) -> None:
        request = await self._begin(stream, "SandboxListV2")
        wanted = {t.tag_name: t.tag_value for t in request.tags}
        found = [
            s
            for s in self.emulator.sandboxes.values()
            if (not request.app_id or s.app_id == request.app_id)
            and (request.include_finished or s.running)
            and (not request.before_timestamp or s.created_at < request.before_timestamp)
            and all(s.tags.get(k) == v for k, v in wanted.items())
        ]
        found.sort(key=lambda s: s.created_at, reverse=True)
        infos = [
            api_pb2.SandboxInfo(
                id=s.sandbox_id,
                app_id=s.app_id,
                created_at=s.created_at,
                image_id=s.image_id,
                timeout_secs=s.timeout_secs,
                tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in s.tags.items()],
                task_info=api_pb2.TaskInfo(id=s.task_id, result=s.result),
                metadata=api_pb2.SandboxHandleMetadata(app_id=s.app_id),
            )
            for s in found[:LIST_PAGE_SIZE]
        ]
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=infos))


class CommandRouter(_Unimplemented, TaskCommandRouterBase):
    """The per-worker exec router (``modal.task_command_router.TaskCommandRouter``)."""

    def __init__(self, emulator: ModalEmulator) -> None:
        self.emulator = emulator

    async def _begin(self, stream: Stream[Any, Any], method: str) -> Any:
        authorization = (stream.metadata or {}).get("authorization", "")
        if not str(authorization).startswith("Bearer "):
            raise GRPCError(Status.UNAUTHENTICATED, "missing router JWT")
        request = await stream.recv_message()
        await self.emulator.disturb(self.emulator.check(method), stream)
        return request

    async def TaskExecStart(self, stream: Stream[sr_pb2.TaskExecStartRequest, sr_pb2.TaskExecStartResponse]) -> None:
        request = await self._begin(stream, "TaskExecStart")
        await self.emulator.start_exec(request)
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdioRead(self, stream: Stream[sr_pb2.TaskExecStdioReadRequest, sr_pb2.TaskExecStdioReadResponse]) -> None:
        request = await self._begin(stream, "TaskExecStdioRead")
        state = self.emulator.exec_of(request.task_id, request.exec_id)
        index = 0 if request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT else 1
        offset = request.offset
        while True:
            async with state.changed:
                await state.changed.wait_for(lambda at=offset: len(state.output[index]) > at or state.output_closed[index])
                data = bytes(state.output[index][offset : offset + STDIO_CHUNK])
                closed = state.output_closed[index] and offset + len(data) >= len(state.output[index])
            if data:
                await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=data))
                offset += len(data)
            if closed:
                return

    async def TaskExecWait(self, stream: Stream[sr_pb2.TaskExecWaitRequest, sr_pb2.TaskExecWaitResponse]) -> None:
        request = await self._begin(stream, "TaskExecWait")
        state = self.emulator.exec_of(request.task_id, request.exec_id)
        await state.finished.wait()
        await stream.send_message(_exit_response(state, sr_pb2.TaskExecWaitResponse))

    async def TaskExecPoll(self, stream: Stream[sr_pb2.TaskExecPollRequest, sr_pb2.TaskExecPollResponse]) -> None:
        request = await self._begin(stream, "TaskExecPoll")
        state = self.emulator.exec_of(request.task_id, request.exec_id)
        if state.finished.is_set():
            await stream.send_message(_exit_response(state, sr_pb2.TaskExecPollResponse))
        else:
            await stream.send_message(sr_pb2.TaskExecPollResponse())

    async def TaskExecStdinWrite(self, stream: Stream[sr_pb2.TaskExecStdinWriteRequest, sr_pb2.TaskExecStdinWriteResponse]) -> None:
        request = await self._begin(stream, "TaskExecStdinWrite")
        state = self.emulator.exec_of(request.task_id, request.exec_id)
        await self.emulator.write_stdin(state, request.offset, request.data, request.eof)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream: Stream[sr_pb2.TaskExecStdinWriteStreamRequest, sr_pb2.TaskExecStdinWriteStreamResponse]) -> None:
        first = await self._begin(stream, "TaskExecStdinWriteStream")
        if first is None or first.WhichOneof("payload") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be `start`")
        state = self.emulator.exec_of(first.start.task_id, first.start.exec_id)
        offset = first.start.offset
        async for message in stream:
            kind = message.WhichOneof("payload")
            if kind == "data":
                await self.emulator.write_stdin(state, offset, message.data, False)
                offset += len(message.data)
            elif kind == "end":
                await self.emulator.write_stdin(state, offset, b"", True)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[sr_pb2.TaskExecStdinStatusRequest, sr_pb2.TaskExecStdinStatusResponse]) -> None:
        request = await self._begin(stream, "TaskExecStdinStatus")
        state = self.emulator.exec_of(request.task_id, request.exec_id)
        await stream.send_message(sr_pb2.TaskExecStdinStatusResponse(num_bytes_written=state.stdin_written, closed=state.stdin_closed))


ControlPlane.fill(ModalClientBase)
CommandRouter.fill(TaskCommandRouterBase)


@contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def open_emulator(**options: Any) -> Iterator[ModalEmulator]:
    """Start the emulator and point the Modal SDK at it through its own environment variables."""
    emulator = ModalEmulator(**options).start()
    missing_config = emulator._dir / "no-modal.toml"
    try:
        with _environment(
            {
                "MODAL_SERVER_URL": emulator.url,
                "MODAL_TOKEN_ID": TOKEN_ID,
                "MODAL_TOKEN_SECRET": TOKEN_SECRET,
                "MODAL_CONFIG_PATH": str(missing_config),
                "MODAL_PROFILE": None,
                "MODAL_ENVIRONMENT": None,
            }
        ):
            yield emulator
    finally:
        emulator.stop()


@contextmanager
def open_provider(**options: Any) -> Iterator[Any]:
    """The conformance suite's entry point: a ModalProvider talking to a fresh emulator."""
    from sandboxes.providers import ModalProvider

    with open_emulator():
        provider = ModalProvider(**options)
        try:
            yield provider
        finally:
            _close(provider)


def _close(provider: Any) -> None:
    """Close the provider's SDK clients from a private loop (the caller's loop may be gone)."""
    runner = asyncio.Runner()
    try:
        runner.run(provider.aclose())
    finally:
        runner.close()
