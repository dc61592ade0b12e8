"""The governor in the Manager's path: the real E2B SDK against an emulator that caps sandboxes as E2B does.

The emulator answers 429 past its cap; the governor absorbs those (the
creation waits and is made), learns the cap, and shares it with every
process on the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from sandboxes import SandboxConfig
from sandboxes.errors import ProviderError
from sandboxes.governed import GovernedDriver
from sandboxes.governor import AcquireTimeout
from sandboxes.manager import Manager
from tests.emulators.e2b import E2BEmulator, open_emulator

pytestmark = pytest.mark.anyio


def _manager(emulator: E2BEmulator, **limits: object) -> Manager:
    from sandboxes.providers import E2BProvider

    return Manager([E2BProvider(**emulator.provider_options())], limits={"e2b": limits}, retry={"base_delay": 0.01})


async def _use_one(manager: Manager, hold: float) -> None:
    await _use_one_on(manager, "e2b", hold)


async def _use_one_on(manager: Manager, name: str, hold: float = 0.1) -> None:
    provider, info = await manager.create_sandbox(SandboxConfig(), name)
    try:
        assert (await provider.execute_command(info.id, ["echo", "ok"])).stdout == "ok\n"
        await anyio.sleep(hold)
    finally:
        await provider.destroy_sandbox(info.id)


async def test_creations_past_the_providers_cap_wait_for_it_instead_of_failing() -> None:
    with open_emulator(max_alive=2) as emulator:
        manager = _manager(emulator, alive=4)  # more than the account allows: the 429s teach the governor
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(_use_one, manager, 0.2)
        governor = manager.governors["e2b"]
        assert emulator.created == 8 and not emulator.sandboxes
        assert emulator.peak_alive <= 2
        assert emulator.refused >= 1, "the test must reach the cap"
        assert governor.counters.throttled == emulator.refused  # each 429 absorbed, none surfaced
        assert emulator.refused <= 4  # learned at the first refusals; a stampede refuses each extra creation: 6 or more
        assert governor.counters.peak_alive == 2  # sandboxes made, not the slots of creations in flight
        await manager.aclose()


async def test_a_lost_creations_sandbox_is_gone_before_the_retry_takes_its_place_under_the_cap() -> None:
    with open_emulator(max_alive=1) as emulator:
        manager = _manager(emulator, alive=1)
        emulator.drop_next(path="/v2/sandboxes", method="POST", after=True)  # E2B makes it; the answer is lost
        await _use_one(manager, 0)
        assert emulator.created == 2 and not emulator.sandboxes
        assert emulator.refused == 0  # a stray left for after the retry would have taken the only place: a 429
        assert manager.governors["e2b"].counters.throttled == 0
        await manager.aclose()


async def test_waiting_past_acquire_timeout_for_a_slot_is_an_infrastructure_error() -> None:
    with open_emulator() as emulator:
        manager = _manager(emulator, alive=1, acquire_timeout=1.0)
        provider, info = await manager.create_sandbox(SandboxConfig(), "e2b")  # the only slot
        started = time.monotonic()
        with pytest.raises(AcquireTimeout, match=r"no e2b sandbox slot came free within 1 s \(limits: alive 1\)") as caught:
            await manager.create_sandbox(SandboxConfig(), "e2b")
        assert isinstance(caught.value, ProviderError)  # the provider's saturation, never the caller's mistake
        assert 1.0 <= time.monotonic() - started < 5.0
        assert emulator.created == 1 and emulator.requests.count(("POST", "/v2/sandboxes")) == 1  # it never asked E2B
        await provider.destroy_sandbox(info.id)
        assert not emulator.sandboxes
        await manager.aclose()


async def test_a_provider_that_refuses_every_creation_ends_in_acquire_timeout() -> None:
    with open_emulator(max_alive=0) as emulator:
        manager = _manager(emulator, acquire_timeout=1.0)
        with pytest.raises(AcquireTimeout, match=r"e2b kept refusing new sandboxes for 1 s \(.*maximum number of concurrent E2B sandboxes"):
            await manager.create_sandbox(SandboxConfig(), "e2b")
        assert 2 <= emulator.refused < 10  # asked again after a pause, not hammered
        await manager.aclose()


async def test_the_manager_governs_clouds_and_not_local() -> None:
    manager = Manager(limits={"alive": 3})
    assert manager.limits("local") is None
    assert manager.limits("e2b") is not None and manager.limits("e2b").alive == 3  # type: ignore[union-attr]
    assert manager.limits("modal").per_second == 5.0  # type: ignore[union-attr]  # the spec table's, kept
    with open_emulator() as emulator:
        from sandboxes.providers import E2BProvider

        manager.register(E2BProvider(**emulator.provider_options()))
        assert isinstance(manager.get_provider("e2b").driver, GovernedDriver)
        await manager.aclose()


def test_limits_are_checked_when_given() -> None:
    with pytest.raises(TypeError, match="unknown limit 'alvie'"):
        Manager(limits={"alvie": 3})
    with pytest.raises(TypeError, match="unknown limit 'max'"):
        Manager(limits={"e2b": {"max": 3}})
    with pytest.raises(ValueError, match="alive must be a whole number"):
        Manager(limits={"alive": 0})
    with pytest.raises(ValueError, match="unknown provider 'e2c'"):
        Manager(limits={"e2c": {"alive": 3}})


def test_max_concurrency_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXES_MAX_CONCURRENCY", "7")
    assert Manager().limits("daytona").alive == 7  # type: ignore[union-attr]
    assert Manager(limits={"daytona": {"alive": 2}}).limits("daytona").alive == 2  # type: ignore[union-attr]
    monkeypatch.setenv("SANDBOXES_MAX_CONCURRENCY", "many")
    with pytest.raises(ValueError, match="SANDBOXES_MAX_CONCURRENCY='many' is not a whole number"):
        Manager().limits("e2b")


SCRIPT = textwrap.dedent(
    """
    import anyio, sys
    import sandboxes
    from sandboxes import Sandbox

    async def one():
        async with Sandbox.create("e2b") as sandbox:
            assert (await sandbox.execute(["echo", "ok"])).stdout == "ok\\n"
            await anyio.sleep(0.1)

    async def main():
        async with sandboxes.session():  # the SDK's clients closed before the interpreter ends
            async with anyio.create_task_group() as group:
                for _ in range(int(sys.argv[1])):
                    group.start_soon(one)

    anyio.run(main)
    """
)


def test_processes_on_one_machine_share_the_cap(tmp_path: Path) -> None:
    """Two processes with 6 creations in flight each never pass the shared cap of 3: E2B refuses none."""
    script = tmp_path / "burst.py"
    script.write_text(SCRIPT)
    with open_emulator(max_alive=3) as emulator:
        env = {**os.environ, **emulator.environ(), "SANDBOXES_MAX_CONCURRENCY": "3", "PYTHONPATH": os.getcwd()}
        processes = [subprocess.Popen([sys.executable, str(script), "6"], env=env, stderr=subprocess.PIPE) for _ in range(2)]
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr.decode()
        assert emulator.created == 12 and not emulator.sandboxes
        assert emulator.peak_alive == 3  # the cap reached, and never passed
        assert emulator.refused == 0


async def test_modal_creations_keep_its_published_rate_and_are_never_refused() -> None:
    from sandboxes.providers import ModalProvider
    from tests.emulators.modal import open_emulator as open_modal

    with open_modal(creations_per_second=5.0) as emulator:
        manager = Manager([ModalProvider()], retry={"base_delay": 0.01})  # the spec table's 5 creations a second
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(_use_one_on, manager, "modal")
        assert emulator.rate_refused == 0  # paced before Modal had to say so
        assert time.monotonic() - started >= (12 - 5) / 5.0  # a second's burst, then 5 a second
        assert not [s for s in emulator.sandboxes.values() if s.running]
        await manager.aclose()


async def test_a_daytona_organisation_at_its_resource_limit_is_waited_for() -> None:
    """Daytona answers a 403 "resource limit reached": a slow-down, never taken for a bad key."""
    from tests.emulators.daytona import DaytonaEmulator
    from tests.emulators.daytona import open_provider as open_daytona

    emulator = DaytonaEmulator(max_alive=2).start()
    with open_daytona(emulator) as provider:
        manager = Manager([provider], retry={"base_delay": 0.01})  # the spec table's 16: more than this organisation has
        async with anyio.create_task_group() as group:
            for _ in range(5):
                group.start_soon(_use_one_on, manager, "daytona")
        assert emulator.refused >= 1 and emulator.peak_alive <= 2
        assert manager.governors["daytona"].counters.throttled == emulator.refused
        assert not emulator.sandboxes
        await manager.aclose()
