"""WarmPool under concurrency, against the E2B emulator through the real SDK."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from sandboxes import SandboxConfig
from sandboxes.errors import ProviderError
from sandboxes.pool import WarmPool
from tests.emulators.e2b import E2BEmulator

from .conftest import e2b_provider

pytestmark = pytest.mark.anyio

CONFIG = SandboxConfig(labels={"pool": "test"})


@pytest.fixture
def provider(emulator: E2BEmulator) -> Any:
    return e2b_provider(emulator)


async def until_ready(pool: WarmPool, count: int, config: SandboxConfig = CONFIG) -> None:
    with anyio.fail_after(10):
        while pool.ready(config) < count:
            await anyio.sleep(0.01)


async def test_twenty_concurrent_acquires_each_get_their_own_live_sandbox(provider: Any, emulator: E2BEmulator) -> None:
    got: list[str] = []
    async with WarmPool(provider, size=3) as pool:

        async def take() -> None:
            info = await pool.acquire(CONFIG)
            got.append(info.id)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(take)
        assert len(got) == 20 and len(set(got)) == 20  # none handed out twice
        assert set(got) <= set(emulator.sandboxes)  # all alive
        assert pool.handed_out == 20
        await until_ready(pool, 3)  # refilled behind them
        assert len(emulator.sandboxes) >= 23
    assert set(emulator.sandboxes) == set(got)  # close destroyed those it held, and only those
    for sandbox_id in got:
        await provider.destroy_sandbox(sandbox_id)


async def test_dead_sandboxes_are_never_handed_out(provider: Any, emulator: E2BEmulator) -> None:
    async with WarmPool(provider, size=3) as pool:
        first = await pool.acquire(CONFIG)
        await until_ready(pool, 3)
        ready = [s for s in emulator.sandboxes if s != first.id]
        for sandbox_id in ready[:2]:
            emulator.vanish(sandbox_id)  # killed behind the pool's back
        taken = [await pool.acquire(CONFIG) for _ in range(3)]
        assert not {t.id for t in taken} & set(ready[:2])
        assert all(t.id in emulator.sandboxes for t in taken)
        assert pool.discarded == 2
    for info in [first, *taken]:
        await provider.destroy_sandbox(info.id)


async def test_sandboxes_about_to_expire_are_not_handed_out(provider: Any, emulator: E2BEmulator) -> None:
    short = SandboxConfig(labels={"pool": "short"}, lifetime=2)
    async with WarmPool(provider, size=1) as pool:
        info = await pool.acquire(short)  # half its life left is enough for a short-lived config
        await until_ready(pool, 1, short)
        await anyio.sleep(1.1)  # the ready one now has less than half its lifetime left
        fresh = await pool.acquire(short)
        assert pool.discarded == 1 and fresh.id != info.id
    for sandbox in (info, fresh):
        await provider.destroy_sandbox(sandbox.id)


async def test_waiters_get_the_creation_error_instead_of_waiting_forever(provider: Any, emulator: E2BEmulator) -> None:
    emulator.fail_next(500, count=100, path="/v2/sandboxes", method="POST", message="capacity exhausted")
    errors: list[BaseException] = []
    async with WarmPool(provider, size=2) as pool:

        async def take() -> None:
            try:
                await pool.acquire(CONFIG)
            except ProviderError as error:
                errors.append(error)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(take)
        assert len(errors) == 5 and all("capacity exhausted" in str(e) for e in errors)
        emulator.clear_faults()
        recovered = await pool.acquire(CONFIG)  # the provider is back: so is the pool
    await provider.destroy_sandbox(recovered.id)


async def test_a_cancelled_acquire_leaks_nothing(provider: Any, emulator: E2BEmulator) -> None:
    for _ in range(2):  # the one the pool keeps ready, and the one started for the caller
        emulator.hang_next(seconds=0.5, path="/v2/sandboxes", method="POST")
    async with WarmPool(provider, size=1) as pool:
        with anyio.move_on_after(0.1) as scope:
            await pool.acquire(CONFIG)
        assert scope.cancelled_caught
    assert not emulator.sandboxes  # what was being created for the caller was destroyed on close
    with pytest.raises(RuntimeError, match="not open"):
        await pool.acquire(CONFIG)
