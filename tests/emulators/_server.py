"""Shared parts of the starlette emulators: a uvicorn server on a thread, faults, local processes.

Each emulator is a real HTTP server on 127.0.0.1 (a free port), so the
unmodified SDK or client talks to it over real sockets, exactly as it would
to the service. Commands run as real local processes in a temp dir per
sandbox.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass
class Fault:
    """One injected failure: answer ``status`` (or hang) for the next matching request."""

    status: int | None = None
    retry_after: float | None = None
    path_contains: str | None = None
    method: str | None = None
    hang: float | None = None
    body: dict | None = None
    drop: str | None = None  # "before": closed unanswered; "after": served, then closed unanswered

    def matches(self, request: Request) -> bool:
        if self.method and request.method != self.method.upper():
            return False
        return self.path_contains is None or self.path_contains in request.url.path


class FaultInjector:
    """Queue of faults consumed first-come by matching requests (thread-safe)."""

    def __init__(self, error_body: Callable[[int], dict], *, drop_rate: float = 0.0, seed: int = 0, latency: float = 0.0) -> None:
        self._faults: list[Fault] = []
        self.latency = latency  # seconds each request waits before it is served: a network's round trip, not loopback's
        self._lock = threading.Lock()
        self.drop_rate = drop_rate  # the share of requests whose connection is closed unanswered (before or after serving)
        self._random = random.Random(seed)
        self.dropped: list[tuple[float, str, str, str]] = []
        """The connections dropped at random: (wall time, method, path, "before" or "after" serving)."""
        self._error_body = error_body
        self.hung = threading.Event()
        self.release = threading.Event()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
        self.release.set()

    @property
    def pending(self) -> int:
        """Faults not served yet (a test checks its fault was hit)."""
        with self._lock:
            return len(self._faults)

    def take(self, request: Request) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(request):
                    return self._faults.pop(index)
            if self.drop_rate and self._random.random() < self.drop_rate:
                fault = Fault(drop=self._random.choice(("before", "after")))
                self.dropped.append((time.time(), request.method, request.url.path, str(fault.drop)))
                return fault
        return None

    async def answer(self, fault: Fault) -> Response | None:
        if fault.hang is not None:
            self.hung.set()
            deadline = time.monotonic() + fault.hang
            while time.monotonic() < deadline and not self.release.is_set():
                await asyncio.sleep(0.02)
            if fault.status is None:
                return None  # a hang that ends by serving the request normally
        status = fault.status or 500
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        return JSONResponse(fault.body or self._error_body(status), status_code=status, headers=headers)


class FaultMiddleware:
    """ASGI middleware that serves injected faults before the app sees the request."""

    def __init__(self, app: ASGIApp, faults: FaultInjector) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.faults.latency:
                await asyncio.sleep(self.faults.latency)
            fault = self.faults.take(Request(scope))
            if fault is not None and fault.drop is not None:
                if fault.drop == "after":  # the service acts on the request, and the answer is lost
                    await self.app(scope, receive, _discard)
                await drop_connection(send)
                return
            if fault is not None:
                response = await self.faults.answer(fault)
                if response is not None:
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _discard(message: dict) -> None:
    """An ASGI send that loses the answer."""


async def drop_connection(send: Send) -> None:
    """Close the client's connection at once, with no answer (a reset, as when a proxy dies)."""
    cycle = getattr(send, "__self__", None)  # uvicorn's request cycle owns the socket
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError("cannot drop the connection: the server is not uvicorn's h11 protocol")
    transport.abort()
    await asyncio.sleep(0)  # let uvicorn see the connection lost before the app returns


class ServerThread:
    """uvicorn serving an ASGI app on 127.0.0.1:<free port> from a daemon thread."""

    def __init__(self, app: ASGIApp) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off", ws="none", http="h11")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="emulator", daemon=True)
        self.port = 0

    def start(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the emulator's HTTP server did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self.port

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class HttpEmulator:
    """What the HTTP emulators share: serving on loopback, and fault switches."""

    faults: FaultInjector
    _root: Path

    def _serve(self, app: ASGIApp) -> None:
        self._server = ServerThread(FaultMiddleware(app, self.faults))
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self.faults.clear()
        self._server.stop()
        shutil.rmtree(self._root, ignore_errors=True)

    def fail_next(self, status: int, retry_after: float | None = None, *, path_contains: str | None = None, method: str | None = None) -> None:
        """The next matching request answers ``status`` (with Retry-After when given)."""
        self.faults.add(Fault(status=status, retry_after=retry_after, path_contains=path_contains, method=method))

    def hang(self, seconds: float = 30.0, *, path_contains: str | None = None, status: int | None = None) -> None:
        """The next matching request hangs (until ``release()``), then is served or fails."""
        self.faults.release.clear()
        self.faults.add(Fault(hang=seconds, path_contains=path_contains, status=status))

    def release(self) -> None:
        self.faults.release.set()

    def drop_next(self, *, path_contains: str | None = None, method: str | None = None, after: bool = False) -> None:
        """Close the next matching request's connection without an answer.

        With ``after=True`` the request is served first (a sandbox is created,
        say) and only the answer is lost, as when a connection dies mid-reply.
        """
        self.faults.add(Fault(path_contains=path_contains, method=method, drop="after" if after else "before"))


def base_env(home: str) -> dict[str, str]:
    """The small clean environment a sandbox's processes start with."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}


def kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill the whole process tree of a command (it runs in its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
