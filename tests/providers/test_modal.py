"""ModalProvider against the loopback emulator: the unmodified modal SDK on the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from grpclib import Status

from sandboxes import SandboxConfig
from sandboxes.driver import Output
from sandboxes.errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
    SandboxNotFoundError,
    SetupFailed,
)
from sandboxes.providers import ModalProvider
from sandboxes.providers.modal import META_TAG
from tests.emulators.modal import TOKEN_ID, TOKEN_SECRET, ModalEmulator, open_emulator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emulator() -> Iterator[ModalEmulator]:
    with open_emulator() as running:
        yield running


@pytest.fixture
async def provider(emulator: ModalEmulator) -> AsyncIterator[ModalProvider]:
    created = ModalProvider()
    yield created
    for info in await created.list_sandboxes():
        await created.destroy_sandbox(info.id)
    await created.aclose()


# -- credentials ------------------------------------------------------------------


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "missing.toml"))
    with pytest.raises(ProviderUnavailable) as raised:
        ModalProvider()
    assert "MODAL_TOKEN_ID" in str(raised.value) and "MODAL_TOKEN_SECRET" in str(raised.value)
    assert raised.value.provider == "modal"


async def test_credentials_from_the_modal_config_file(emulator: ModalEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "modal.toml"
    config.write_text(
        '[other]\ntoken_id = "ak-other"\ntoken_secret = "as-other"\n\n[work]\ntoken_id = "ak-from-file"\ntoken_secret = "as-from-file"\nactive = true\n'
    )
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    monkeypatch.setattr(emulator, "expected_tokens", ("ak-from-file", "as-from-file"))
    provider = ModalProvider()
    try:
        assert await provider.health_check() is True
        assert "as-from-file" not in repr(provider) and "as-from-file" not in repr(vars(provider))
    finally:
        await provider.aclose()


async def test_rejected_token_is_an_authentication_error_without_the_secret(emulator: ModalEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emulator, "expected_tokens", (TOKEN_ID, "as-the-right-one"))
    provider = ModalProvider()
    try:
        with pytest.raises(AuthenticationError) as raised:
            await provider.create_sandbox(SandboxConfig())
        assert "MODAL_TOKEN_ID" in str(raised.value)
        assert TOKEN_SECRET not in str(raised.value)
        assert await provider.health_check() is False
    finally:
        await provider.aclose()


async def test_tokens_never_in_repr_errors_or_the_sandbox(emulator: ModalEmulator, provider: ModalProvider) -> None:
    assert TOKEN_SECRET not in repr(provider) and TOKEN_ID not in repr(provider)
    assert TOKEN_SECRET not in repr(vars(provider))
    emulator.fail_next(Status.INVALID_ARGUMENT, f"echoing {TOKEN_ID}:{TOKEN_SECRET}", method="SandboxCreateV2")
    with pytest.raises(SandboxError) as raised:
        await provider.create_sandbox(SandboxConfig())
    assert TOKEN_SECRET not in str(raised.value) and TOKEN_ID not in str(raised.value)
    assert "***" in str(raised.value)
    info = await provider.create_sandbox(SandboxConfig())
    environment = await provider.execute_command(info.id, "env")
    assert environment.success
    assert TOKEN_SECRET not in environment.stdout and "MODAL_TOKEN" not in environment.stdout


# -- fault mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Status.NOT_FOUND, ProviderError),
        (Status.UNAUTHENTICATED, AuthenticationError),
        (Status.PERMISSION_DENIED, AuthenticationError),
        (Status.RESOURCE_EXHAUSTED, RateLimitError),
    ],
)
async def test_create_faults_map_to_the_taxonomy(emulator: ModalEmulator, provider: ModalProvider, status: Status, expected: type[Exception]) -> None:
    await provider.health_check()  # open the client first: the fault is for the create call
    emulator.fail_next(status, "injected", method="SandboxCreateV2")
    with pytest.raises(expected) as raised:
        await provider.create_sandbox(SandboxConfig(labels={"fault": status.name}))
    assert "injected" in str(raised.value)
    assert await provider.list_sandboxes({"fault": status.name}) == []


async def test_invalid_argument_is_not_an_infrastructure_error(emulator: ModalEmulator, provider: ModalProvider) -> None:
    await provider.health_check()
    emulator.fail_next(Status.INVALID_ARGUMENT, "bad image", method="SandboxCreateV2")
    with pytest.raises(SandboxError, match="bad image") as raised:
        await provider.create_sandbox(SandboxConfig())
    assert not isinstance(raised.value, ProviderError)  # never retried or failed over


async def test_throttling_with_a_retry_policy_is_waited_out_by_the_sdk(emulator: ModalEmulator, provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    emulator.fail_next(Status.RESOURCE_EXHAUSTED, "slow down", method="SandboxTerminateV2", times=2, retry_after=0.05)
    assert await provider.destroy_sandbox(info.id) is True
    assert emulator.calls.count("SandboxTerminateV2") >= 3


async def test_transient_faults_are_retried_by_the_sdk(emulator: ModalEmulator, provider: ModalProvider) -> None:
    await provider.health_check()
    emulator.fail_next(Status.UNAVAILABLE, "blip", method="SandboxCreateV2", times=1)
    info = await provider.create_sandbox(SandboxConfig())
    assert await provider.get_sandbox(info.id) is not None


async def test_a_vanished_sandbox_is_not_found(emulator: ModalEmulator, provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    assert (await provider.execute_command(info.id, "true")).success
    emulator.vanish(info.id)
    with pytest.raises(SandboxNotFoundError, match=info.id):
        await provider.execute_command(info.id, "true")
    with pytest.raises(SandboxNotFoundError):
        await provider.read_file(info.id, "x.txt")
    assert await provider.get_sandbox(info.id) is None
    assert await provider.destroy_sandbox(info.id) is False


async def test_exec_fault_on_the_router(emulator: ModalEmulator, provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    emulator.fail_next(Status.NOT_FOUND, "task gone", method="TaskExecStart")
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(info.id, "true")
    assert (await provider.execute_command(info.id, "echo back")).stdout == "back\n"


# -- labels across processes, configuration on the wire -------------------------------


async def test_find_by_tags_from_a_second_provider_instance(emulator: ModalEmulator, provider: ModalProvider) -> None:
    labels = {"owner": "first", "run": "cross"}
    # Under the Modal workdir: only that directory persists between commands in the emulator.
    info = await provider.create_sandbox(SandboxConfig(labels=labels, working_dir="/workspace/project"))
    await provider.write_file(info.id, "notes.txt", b"from the first instance")
    other = ModalProvider()
    try:
        found = await other.find_sandbox({"run": "cross"})
        assert found is not None and found.id == info.id
        assert found.labels == labels and META_TAG not in found.labels
        assert found.created_at == pytest.approx(info.created_at)
        # The second instance knows the sandbox's working directory from its tags.
        assert await other.read_file(found.id, "notes.txt") == b"from the first instance"
        result = await other.execute_command(found.id, "pwd; cat notes.txt")
        assert result.stdout == "/workspace/project\nfrom the first instance"
        reused = await other.get_or_create_sandbox(SandboxConfig(labels={"run": "cross"}))
        assert reused.id == info.id
    finally:
        await other.aclose()
    tags = emulator.sandboxes[info.id].tags
    assert tags["owner"] == "first" and META_TAG in tags


async def test_list_follows_every_page(emulator: ModalEmulator, provider: ModalProvider) -> None:
    from tests.emulators.modal import LIST_PAGE_SIZE

    created = []
    for _ in range(LIST_PAGE_SIZE * 2 + 1):
        created.append(await provider.create_sandbox(SandboxConfig(labels={"paged": "yes"})))
    listed = await provider.list_sandboxes({"paged": "yes"})
    assert sorted(i.id for i in listed) == sorted(i.id for i in created)
    oldest = await provider.find_sandbox({"paged": "yes"})
    assert oldest is not None and oldest.id == created[0].id


async def test_config_reaches_the_wire(emulator: ModalEmulator, provider: ModalProvider) -> None:
    config = SandboxConfig(image="python:3.12-slim", env={"MODE": "test"}, lifetime=90.5, cpus=1.5, memory_mb=768, labels={"k": "v"})
    info = await provider.create_sandbox(config)
    state = emulator.sandboxes[info.id]
    assert state.timeout_secs == 91
    assert state.definition.resources.milli_cpu == 1500
    assert state.definition.resources.memory_mb == 768
    assert any("python:3.12-slim" in line for line in emulator.images[state.image_id].dockerfile_commands)
    assert state.env == {"MODE": "test"}
    result = await provider.execute_command(info.id, 'echo "$MODE $EXTRA"', env={"EXTRA": "x y"})
    assert result.stdout == "test x y\n"


async def test_network_false_blocks_the_network(emulator: ModalEmulator, provider: ModalProvider) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {emulator.port}), 2); print('connected')"
    open_box = await provider.create_sandbox(SandboxConfig())
    closed_box = await provider.create_sandbox(SandboxConfig(network=False))
    assert (await provider.execute_command(open_box.id, ["python3", "-c", probe])).stdout == "connected\n"
    blocked = await provider.execute_command(closed_box.id, ["python3", "-c", probe])
    assert not blocked.success and "connected" not in blocked.stdout


async def test_failed_setup_destroys_the_half_created_sandbox(emulator: ModalEmulator, provider: ModalProvider) -> None:
    with pytest.raises(SetupFailed, match="code 7"):
        await provider.create_sandbox(SandboxConfig(labels={"setup": "fails"}, setup_commands=["true", "exit 7"]))
    assert await provider.list_sandboxes({"setup": "fails"}) == []
    assert not [s for s in emulator.sandboxes.values() if s.running and s.tags.get("setup") == "fails"]


# -- commands -----------------------------------------------------------------------


async def test_commands_longer_than_the_exec_argument_limit(provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    word = "x" * 100_000
    result = await provider.execute_command(info.id, f"printf %s {word} | wc -c")
    assert result.stdout.strip() == "100000"
    leftovers = await provider.execute_command(info.id, "ls -A /tmp")
    assert leftovers.stdout == ""


async def test_streaming_stops_at_the_timeout(provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    chunks = [c async for c in provider.stream_execution(info.id, "echo early; sleep 20; echo late", timeout=1)]
    text = "".join(c.data for c in chunks)
    assert "early" in text and "late" not in text


async def test_closing_the_event_stream_early_kills_the_command_and_its_children(provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    script = "(sleep 60 & echo $! > child); echo $$ > parent; echo ready; sleep 60"
    events = provider.driver.exec(info.id, ["/bin/sh", "-c", script], env={}, cwd=None, stdin=None, timeout=60, output_limit=1 << 20)
    async for event in events:
        assert isinstance(event, Output) and event.data == b"ready\n"
        break
    await events.aclose()  # type: ignore[attr-defined]  # an async generator
    # Killed processes may linger as zombies of an init that does not reap them: those count as gone.
    alive = "for p in $(cat parent child); do grep -qsE '^State:[[:space:]]+[^Z[:space:]]' /proc/$p/status && echo $p; done; true"
    assert (await provider.execute_command(info.id, alive)).stdout == ""


async def test_background_process_survives_its_command(provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    started = await provider.execute_command(info.id, "nohup sleep 30 >/dev/null 2>&1 & echo $! > pid")
    assert started.success
    alive = await provider.execute_command(info.id, "kill -0 $(cat pid) && echo alive")
    assert alive.stdout == "alive\n"


async def test_a_directory_is_not_a_file(provider: ModalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    await provider.execute_command(info.id, "mkdir -p folder")
    with pytest.raises(IsADirectoryError, match="folder"):
        await provider.read_file(info.id, "folder")


# -- event loops ---------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_one_sdk_client_per_event_loop(emulator: ModalEmulator, anyio_backend: str) -> None:
    provider = ModalProvider()

    async def use() -> int:
        info = await provider.create_sandbox(SandboxConfig(labels={"loops": "two"}))
        result = await provider.execute_command(info.id, "echo hi")
        await provider.destroy_sandbox(info.id)
        return len(result.stdout)

    assert asyncio.run(use()) == 3
    first = next(iter(provider._sessions.values())).client
    assert asyncio.run(use()) == 3
    assert len(provider._sessions) == 1  # the first loop's client was closed, not shared
    assert next(iter(provider._sessions.values())).client is not first
    assert first.is_closed()
    asyncio.run(provider.aclose())
