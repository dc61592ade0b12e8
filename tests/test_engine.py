"""The engine's own rules, over a driver that records what reaches it: settings from labels, the wire kept below,
arguments checked before the driver hears of them, and the manager's names."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from sandboxes import SandboxConfig, SandboxProvider
from sandboxes.driver import Event, Exit, Output
from sandboxes.manager import Manager
from sandboxes.models import SandboxInfo
from sandboxes.provider import SETTINGS_LABEL
from sandboxes.providers.local import LocalProvider

pytestmark = pytest.mark.anyio


class Witness:
    """A driver with one sandbox whose labels the test sets; it remembers every call."""

    name = "witness"

    def __init__(self, labels: Mapping[str, str] | None = None) -> None:
        self.labels = dict(labels or {})
        self.calls: list[tuple[str, Any]] = []

    async def create(self, config: SandboxConfig) -> SandboxInfo:
        self.calls.append(("create", config))
        return SandboxInfo("box", self.name, dict(config.labels))

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        self.calls.append(("get", sandbox_id))
        return SandboxInfo(sandbox_id, self.name, dict(self.labels)) if sandbox_id == "box" else None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        self.calls.append(("list", labels))
        return [SandboxInfo("box", self.name, dict(self.labels))]

    async def destroy(self, sandbox_id: str) -> bool:
        self.calls.append(("destroy", sandbox_id))
        return True

    async def exec(
        self, sandbox_id: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None, stdin: bytes | None, timeout: float, output_limit: int
    ) -> AsyncIterator[Event]:
        self.calls.append(("exec", {"argv": list(argv), "cwd": cwd, "timeout": timeout, "output_limit": output_limit}))
        yield Output("stdout", b"hello world\n")
        yield Exit(0)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        return b""

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self.calls.append(("write_file", path))

    async def health_check(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    "stored",
    ['{"max_output":1e999}', '{"max_output":-7}', '{"max_output":0}', '{"max_output":true}', '{"timeout":-5}', '{"timeout":"nan"}',
     '{"timeout":1e999}', '{"cwd":"rel/dir"}', '{"cwd":["a"]}', "[1]", "not json", "null"],
)  # fmt: skip
async def test_settings_a_label_holds_are_used_only_when_they_are_what_the_engine_writes(stored: str) -> None:
    witness = Witness({SETTINGS_LABEL: stored, "who": "other"})
    provider = SandboxProvider(witness)
    found = await provider.find_sandbox({"who": "other"})
    assert found is not None and SETTINGS_LABEL not in found.labels
    result = await provider.execute_command("box", "echo hello world")
    assert (result.stdout, result.truncated) == ("hello world\n", False)
    sent = [call for name, call in witness.calls if name == "exec"][-1]
    assert sent["cwd"] is None and sent["timeout"] == 300.0 and sent["output_limit"] == 1 << 20


async def test_settings_the_engine_wrote_are_used_from_another_handle() -> None:
    witness = Witness({SETTINGS_LABEL: json.dumps({"cwd": "/srv/app", "max_output": 4096, "timeout": 9})})
    await SandboxProvider(witness).execute_command("box", ["pwd"])
    assert [call for name, call in witness.calls if name == "exec"][-1] == {"argv": ["pwd"], "cwd": "/srv/app", "timeout": 9.0, "output_limit": 4096}


def test_the_wire_stays_below_the_engine() -> None:
    provider = LocalProvider()
    for method in ("create", "exec", "list", "destroy", "get", "download_tree"):  # (read_file and write_file are the engine's own)
        with pytest.raises(AttributeError):
            getattr(provider, method)
    assert provider.describe_isolation()  # the driver's own descriptions and options still show through


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.execute_command("box", 123), TypeError),
        (lambda p: p.execute_command("box", "true", timeout=-1), ValueError),
        (lambda p: p.execute_command("box", "true", env={1: 2}), ValueError),
        (lambda p: p.execute_command(None, "true"), TypeError),
        (lambda p: p.destroy_sandbox(None), TypeError),
        (lambda p: p.get_or_create_sandbox("x"), TypeError),
        (lambda p: p.write_file(5, "x", b""), TypeError),
    ],
)
async def test_a_callers_mistake_is_raised_before_the_driver_hears_of_it(call: Any, error: type) -> None:
    witness = Witness()
    with pytest.raises(error):
        await call(SandboxProvider(witness))
    assert witness.calls == []


def test_a_bad_stream_is_refused_when_asked_for_not_when_read() -> None:
    witness = Witness()
    with pytest.raises(TypeError):
        SandboxProvider(witness).stream_execution("box", 123)  # type: ignore[arg-type]  # the mistake under test
    assert witness.calls == []


def test_the_manager_knows_registered_names_and_takes_one_fallback_as_a_name() -> None:
    mine = SandboxProvider(Witness())
    manager = Manager({"mine": mine})
    assert manager.resolve("mine") == "mine"
    assert manager.candidates("mine", ["local", "mine"]) == ["mine", "local"]
    assert manager.candidates("local", "mine") == ["local", "mine"]
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        manager.resolve("nope")


async def test_the_manager_keeps_a_registered_providers_class_and_overrides() -> None:
    seen: list[str] = []

    class Audited(SandboxProvider):
        async def execute_command(self, sandbox_id: str, command: Any, **options: Any) -> Any:
            seen.append(str(command))
            return await super().execute_command(sandbox_id, command, **options)

    manager = Manager({"audited": Audited(Witness())})
    guarded = manager.get_provider("audited")
    assert isinstance(guarded, Audited)
    await guarded.execute_command("box", "echo hi")
    assert seen == ["echo hi"]
