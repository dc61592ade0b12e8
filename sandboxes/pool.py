"""WarmPool: sandboxes created ahead of time, so a test does not wait for one.

It keeps ``size`` sandboxes ready per configuration, hands each out once
(the caller owns and destroys it), never hands out one that died or is about
to expire, and destroys whatever it still holds on close. Use it as an async
context manager: its refills run in its own task group.

When more callers wait than sandboxes are ready, it creates one per waiter
at once rather than queueing them behind ``size`` creations. A failed
creation is handed to a waiter as its error, so nobody waits forever on a
provider that is down.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from types import TracebackType

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .errors import ProviderError
from .models import SandboxConfig, SandboxInfo
from .provider import SandboxProvider

EXPIRY_MARGIN = 30.0  # seconds of life a handed-out sandbox must still have
log = logging.getLogger("sandboxes.pool")


def config_key(config: SandboxConfig) -> str:
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return json.dumps(fields, sort_keys=True, default=str)


@dataclass
class _Slot:
    """The sandboxes (or creation errors) of one configuration, in the order they came."""

    config: SandboxConfig
    send: MemoryObjectSendStream[SandboxInfo | Exception]
    receive: MemoryObjectReceiveStream[SandboxInfo | Exception]
    ready: int = 0  # sandboxes in the stream
    pending: int = 0  # creations in flight
    waiting: int = 0  # callers blocked in acquire


class WarmPool:
    """Keeps ``size`` sandboxes ready per configuration on one provider."""

    def __init__(self, provider: SandboxProvider, size: int = 2) -> None:
        if size < 1:
            raise ValueError(f"a warm pool needs a size of at least 1, not {size}")
        self.provider = provider
        self.size = size
        self._slots: dict[str, _Slot] = {}
        self._group: TaskGroup | None = None
        self._closing = False
        self.handed_out = 0
        self.discarded = 0

    async def __aenter__(self) -> WarmPool:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose(_exiting=(exc_type, exc, tb))

    def ready(self, config: SandboxConfig) -> int:
        slot = self._slots.get(config_key(config))
        return slot.ready if slot else 0

    async def acquire(self, config: SandboxConfig) -> SandboxInfo:
        """A live sandbox of this configuration, now yours to destroy."""
        if self._group is None or self._closing:
            raise RuntimeError("the warm pool is not open: use `async with WarmPool(...)`")
        slot = self._slot(config)
        slot.waiting += 1  # counted while it has nothing in hand: each waiter gets a creation of its own
        counted = True
        try:
            self._top_up(slot)
            while True:
                try:
                    item = await slot.receive.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    raise RuntimeError("the warm pool was closed while waiting for a sandbox") from None
                if isinstance(item, Exception):
                    if slot.ready or slot.pending:  # another sandbox is ready or on its way
                        continue
                    raise item
                slot.ready -= 1
                slot.waiting -= 1
                counted = False
                try:
                    usable = await self._usable(item)
                except BaseException:  # cancelled while checking: it is nobody's, so it goes
                    with anyio.CancelScope(shield=True):
                        await self._destroy_quietly(item.id)
                    raise
                if usable:
                    self.handed_out += 1
                    return item
                self.discarded += 1
                await self._destroy_quietly(item.id)
                slot.waiting += 1
                counted = True
                self._top_up(slot)  # a replacement for the dead one
        finally:
            if counted:
                slot.waiting -= 1
            self._top_up(slot)

    async def _usable(self, info: SandboxInfo) -> bool:
        """Alive, and not about to expire (half its lifetime left, when that is under the margin)."""
        if info.expires_at is not None:
            now = time.time()
            lifetime = info.expires_at - (info.created_at if info.created_at is not None else now)
            if info.expires_at - now < min(EXPIRY_MARGIN, lifetime / 2):
                return False
        try:
            return await self.provider.get_sandbox(info.id) is not None
        except ProviderError as error:  # cannot tell: do not hand out what may be dead
            log.warning("warm pool: could not check sandbox %s (%s); discarding it", info.id, error)
            return False

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        try:
            await self.provider.destroy_sandbox(sandbox_id)
        except ProviderError as error:
            log.warning("warm pool: could not destroy sandbox %s: %s", sandbox_id, error)

    def _slot(self, config: SandboxConfig) -> _Slot:
        key = config_key(config)
        if key not in self._slots:
            send, receive = anyio.create_memory_object_stream[SandboxInfo | Exception](max_buffer_size=1_000_000)
            self._slots[key] = _Slot(config, send, receive)
        return self._slots[key]

    def _top_up(self, slot: _Slot) -> None:
        """Start creations until ``size`` are ready or coming, plus one for each caller waiting."""
        if self._group is None or self._closing:
            return
        missing = self.size + slot.waiting - slot.ready - slot.pending
        for _ in range(max(0, missing)):
            slot.pending += 1
            self._group.start_soon(self._fill, slot)

    async def _fill(self, slot: _Slot) -> None:
        try:
            info = await self.provider.create_sandbox(slot.config)
        except Exception as error:  # handed to a waiter, not lost in the task group
            slot.pending -= 1
            if slot.waiting:
                slot.send.send_nowait(error)
            else:
                log.warning("warm pool: creating a sandbox ahead of time failed: %s", error)
            return
        slot.pending -= 1
        if self._closing:
            with anyio.CancelScope(shield=True):
                await self._destroy_quietly(info.id)
        else:
            slot.ready += 1
            slot.send.send_nowait(info)

    async def aclose(self, _exiting: tuple[object, object, object] | None = None) -> None:
        """Wait for creations in flight, then destroy every sandbox still held."""
        if self._group is None:
            return
        self._closing = True
        group, self._group = self._group, None
        await group.__aexit__(*(_exiting or (None, None, None)))  # type: ignore[arg-type]  # (None, None, None) is what __aexit__ gets on a clean exit
        with anyio.CancelScope(shield=True):
            for slot in self._slots.values():
                while True:
                    try:
                        item = slot.receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if isinstance(item, SandboxInfo):
                        slot.ready -= 1
                        await self._destroy_quietly(item.id)
                slot.send.close()
                slot.receive.close()
