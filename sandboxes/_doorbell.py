"""A doorbell file: processes waiting for a slot sleep until someone rings it, instead of polling.

``ring(directory)`` writes the directory's ``doorbell`` file; a ``Doorbell``
waits, through inotify, until it is written (or a timeout passes: where
inotify cannot be had, or a process died without ringing, waiters still
look again after the timeout). Linux only, through libc: nothing to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

import anyio

NAME = "doorbell"
_IN_CLOSE_WRITE = 0x00000008
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, padded


def ring(directory: Path) -> None:
    """Wake every process waiting at ``directory``'s doorbell (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory / NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, b"!", 0)
        finally:
            os.close(fd)


class Doorbell:
    """One process's ear at a directory's doorbell."""

    def __init__(self, directory: Path) -> None:
        self.fd: int | None = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return
            if libc.inotify_add_watch(fd, os.fsencode(directory), _IN_CLOSE_WRITE) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = None

    async def wait(self, timeout: float) -> None:
        """Until the doorbell rings, or ``timeout`` seconds."""
        if self.fd is None:
            await anyio.sleep(timeout)
            return
        with anyio.move_on_after(timeout):
            while True:
                await anyio.wait_readable(self.fd)
                if self._rang():
                    return

    def _rang(self) -> bool:
        rang = False
        while True:
            try:
                data = os.read(self.fd, 65536)  # type: ignore[arg-type]  # set: wait() checked it
            except BlockingIOError:
                return rang
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
                rang = rang or name == NAME.encode()
                offset += _EVENT.size + length

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
