"""The metered layer in the Manager's path: a run's budget refuses creations, and its trace tells each sandbox's life.

Real sandboxes: the local provider, and the real E2B SDK against an emulator
that caps sandboxes (a 429 past the cap) as E2B does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from sandboxes import SandboxConfig
from sandboxes.budget import Budget, BudgetExhausted, Ledger
from sandboxes.errors import ProviderError
from sandboxes.manager import Manager
from sandboxes.metered import MeteredDriver
from sandboxes.trace import Trace
from tests.emulators.e2b import open_emulator

pytestmark = pytest.mark.anyio


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_past_the_budget_no_sandbox_is_created_and_the_refusal_is_not_the_providers(tmp_path: Path) -> None:
    manager = Manager()
    manager.meter(Ledger(tmp_path / "ledger.json", Budget(seconds=0.2)), Trace(tmp_path / "trace.jsonl"))
    provider, info = await manager.create_sandbox(SandboxConfig(), "local")
    assert isinstance(manager.get_provider("local").driver, MeteredDriver)
    await anyio.sleep(0.25)
    with pytest.raises(BudgetExhausted, match=r"budget of 0.2 sandbox-seconds is spent") as refused:
        await manager.create_sandbox(SandboxConfig(), "local", fallback=["e2b"])
    assert not isinstance(refused.value, ProviderError)  # never failed over, retried, or counted as infra_error
    await provider.destroy_sandbox(info.id)
    assert await provider.driver.list({}) == []
    events = _events(tmp_path / "trace.jsonl")
    assert [e["event"] for e in events] == ["create", "created", "create", "budget_refused", "destroyed"]
    assert events[1]["sandbox"] == events[4]["sandbox"] == info.id and events[4]["lived"] >= 0.25
    assert manager.ledger is not None and manager.ledger.usage()["local"].sandboxes == 1
    await manager.aclose()


async def test_the_trace_tells_waits_and_429s_and_keeps_no_credential(tmp_path: Path) -> None:
    with open_emulator(max_alive=1, api_key="e2b_secret_key_in_trace_test") as emulator:
        from sandboxes.providers import E2BProvider

        manager = Manager([E2BProvider(**emulator.provider_options())], limits={"e2b": {"alive": 2}}, retry={"base_delay": 0.01})
        ledger = Ledger(tmp_path / "ledger.json", Budget(dollars=10))
        manager.meter(ledger, Trace(tmp_path / "trace.jsonl"))

        async def one() -> None:
            provider, info = await manager.create_sandbox(SandboxConfig(), "e2b")
            await anyio.sleep(0.2)
            await provider.destroy_sandbox(info.id)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(one)
        assert emulator.refused >= 1 and not emulator.sandboxes
        await manager.aclose()
    text = (tmp_path / "trace.jsonl").read_text()
    assert "e2b_secret_key_in_trace_test" not in text
    kinds = [e["event"] for e in _events(tmp_path / "trace.jsonl")]
    assert kinds.count("created") == kinds.count("destroyed") == 3
    assert kinds.count("throttled") == emulator.refused  # each 429 absorbed, in the trace
    assert "waited" in kinds
    assert sum(e["waited"] for e in _events(tmp_path / "trace.jsonl") if e["event"] == "created") > 0  # how long of a creation was the wait
    usage = ledger.usage()["e2b"]
    assert usage.sandboxes == 3 and usage.seconds >= 0.6
    assert usage.dollars == pytest.approx(usage.seconds * (2 * 0.000014 + 0.5 * 0.0000045))  # E2B's default size at its published price


async def test_a_sandbox_the_ledger_could_not_record_is_destroyed_and_gives_its_slot_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's directory gone mid-run (a /tmp cleaner): the creation fails clearly, and leaves nothing alive or held."""
    with open_emulator() as emulator:
        from sandboxes.providers import E2BProvider

        manager = Manager([E2BProvider(**emulator.provider_options())], limits={"e2b": {"alive": 1, "acquire_timeout": 5}})
        (tmp_path / "run").mkdir()
        ledger = Ledger(tmp_path / "run" / "ledger.json", Budget(seconds=600))
        manager.meter(ledger, None)
        record = ledger.opened

        def gone(*args: Any) -> None:  # the directory goes while the sandbox is being made
            shutil.rmtree(tmp_path / "run")
            record(*args)

        monkeypatch.setattr(ledger, "opened", gone)
        with pytest.raises(OSError, match=r"the run's ledger .* cannot be written: its directory is gone"):
            await manager.create_sandbox(SandboxConfig(), "e2b")
        assert emulator.created == 1 and not emulator.sandboxes  # made, then destroyed
        monkeypatch.undo()
        manager.meter(None, None)
        provider, info = await manager.create_sandbox(SandboxConfig(), "e2b")  # its one slot came back
        await provider.destroy_sandbox(info.id)
        await manager.aclose()


async def test_the_trace_tells_the_stray_a_lost_answer_left(tmp_path: Path) -> None:
    with open_emulator() as emulator:
        from sandboxes.providers import E2BProvider

        manager = Manager([E2BProvider(**emulator.provider_options())], retry={"base_delay": 0.01})
        manager.meter(None, Trace(tmp_path / "trace.jsonl"))
        emulator.drop_next(path="/v2/sandboxes", method="POST", after=True)  # E2B makes it; the answer is lost
        provider, info = await manager.create_sandbox(SandboxConfig(), "e2b")
        await provider.destroy_sandbox(info.id)
        assert emulator.created == 2 and not emulator.sandboxes
        await manager.aclose()
    # The governor is the machine's: a parallel test's E2B sandboxes may make this one wait for a slot.
    events = [e for e in _events(tmp_path / "trace.jsonl") if e["event"] not in ("waited", "throttled")]
    assert [e["event"] for e in events] == ["create", "stray_destroyed", "created", "destroyed"]
    assert events[1]["sandbox"] != info.id and events[2]["sandbox"] == info.id
