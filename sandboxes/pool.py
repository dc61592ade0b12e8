"""WarmPool: sandboxes created ahead of time, so a test does not wait for one.

It keeps ``size`` sandboxes ready per configuration, hands each out once
(the caller owns and destroys it), never hands out one that died or is about
to expire, and destroys whatever it still holds on close. Use it as an async
context manager: its refills run in its own task group.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .models import SandboxConfig, SandboxInfo
from .provider import SandboxProvider

EXPIRY_MARGIN = 30.0  # seconds of life a handed-out sandbox must still have


def config_key(config: SandboxConfig) -> str:
    fields = {name: getattr(config, name) for name in config.__dataclass_fields__}
    return json.dumps(fields, sort_keys=True, default=str)


@dataclass
class _Slot:
    config: SandboxConfig
    send: MemoryObjectSendStream[SandboxInfo]
    receive: MemoryObjectReceiveStream[SandboxInfo]
    pending: int = 0
    errors: list[BaseException] = field(default_factory=list)


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
        return slot.receive.statistics().current_buffer_used if slot else 0

    async def acquire(self, config: SandboxConfig) -> SandboxInfo:
        """A live sandbox of this configuration, now yours to destroy."""
        if self._group is None or self._closing:
            raise RuntimeError("the warm pool is not open: use `async with WarmPool(...)`")
        slot = self._slot(config)
        while True:
            self._top_up(slot)
            if slot.errors and slot.receive.statistics().current_buffer_used == 0 and slot.pending == 0:
                raise slot.errors.pop()
            info = await slot.receive.receive()
            if await self._usable(info):
                self.handed_out += 1
                self._top_up(slot)
                return info
            self.discarded += 1
            await self.provider.destroy_sandbox(info.id)

    async def _usable(self, info: SandboxInfo) -> bool:
        if info.expires_at is not None and info.expires_at - time.time() < EXPIRY_MARGIN:
            return False
        return await self.provider.get_sandbox(info.id) is not None

    def _slot(self, config: SandboxConfig) -> _Slot:
        key = config_key(config)
        if key not in self._slots:
            send, receive = anyio.create_memory_object_stream[SandboxInfo](max_buffer_size=1_000_000)
            self._slots[key] = _Slot(config, send, receive)
        return self._slots[key]

    def _top_up(self, slot: _Slot) -> None:
        assert self._group is not None
        missing = self.size - slot.receive.statistics().current_buffer_used - slot.pending
        for _ in range(max(0, missing)):
            slot.pending += 1
            self._group.start_soon(self._fill, slot)

    async def _fill(self, slot: _Slot) -> None:
        try:
            info = await self.provider.create_sandbox(slot.config)
        except Exception as error:  # told to the next acquire, not lost in the task group
            slot.errors.append(error)
            slot.pending -= 1
            return
        slot.pending -= 1
        if self._closing:
            await self.provider.destroy_sandbox(info.id)
        else:
            slot.send.send_nowait(info)

    async def aclose(self, _exiting: tuple[object, object, object] | None = None) -> None:
        """Wait for creations in flight, then destroy every sandbox still held."""
        if self._group is None:
            return
        self._closing = True
        group, self._group = self._group, None
        await group.__aexit__(*(_exiting or (None, None, None)))  # type: ignore[arg-type]
        with anyio.CancelScope(shield=True):
            for slot in self._slots.values():
                while True:
                    try:
                        info = slot.receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    await self.provider.destroy_sandbox(info.id)
                slot.send.close()
                slot.receive.close()
