"""The host's end of one request to a sandbox's agent: a bare non-blocking unix socket.

The event loop waits on the socket itself (``anyio.wait_readable``): an anyio
stream (an asyncio transport and protocol, built for each request) cost every
request some 0.15 ms more, and a check makes four of them. It raises what an
anyio stream raises (``EndOfStream``, ``BrokenResourceError``), so callers read
the same either way.
"""

from __future__ import annotations

import socket
import time
from types import TracebackType

import anyio
import anyio.lowlevel

CONNECT_SECONDS = 30.0
"""How long a connection waits for room in an agent's backlog (its accepting thread is busy or stopped)."""


class AgentConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def __aenter__(self) -> AgentConnection:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.sock.close()

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.sock)
            except OSError as error:  # the agent closed its end, or the socket is closed here
                raise anyio.BrokenResourceError from error

    async def receive(self, max_bytes: int) -> bytes:
        """The next bytes; ``EndOfStream`` once the agent closed its end. Cancelled before it takes
        any (never with bytes taken and lost), and it yields only when it has to wait for them."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
                continue
            except OSError as error:
                raise anyio.BrokenResourceError from error
            if not data:
                raise anyio.EndOfStream
            return data


async def connect(path: str) -> AgentConnection:
    """Connected to the agent listening at ``path``: FileNotFoundError or ConnectionRefusedError when none does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        deadline = time.monotonic() + CONNECT_SECONDS
        while True:
            try:
                sock.connect(path)  # a unix socket connects at once, or is refused
                return AgentConnection(sock)
            except BlockingIOError:  # its backlog is full
                if time.monotonic() > deadline:
                    raise ConnectionRefusedError(f"the agent at {path} accepted no connection within {CONNECT_SECONDS:g}s") from None
                await anyio.sleep(0.001)
    except BaseException:
        sock.close()
        raise
