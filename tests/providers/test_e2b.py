"""E2B-specific behaviour: the unmodified SDK against the loopback emulator, with faults."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from sandboxes import SandboxConfig, SandboxNotFoundError, UnsupportedOperation
from sandboxes.errors import AuthenticationError, ProviderError, ProviderUnavailable, RateLimitError, SetupFailed
from sandboxes.manager import provider_class
from sandboxes.providers import E2BProvider
from tests.emulators.e2b import E2BEmulator, open_emulator

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def emulator() -> Iterator[E2BEmulator]:
    with open_emulator() as running:
        yield running


@pytest.fixture
def e2b(emulator: E2BEmulator) -> Iterator[E2BProvider]:
    emulator.clear_faults()
    emulator.page_size = 100
    yield E2BProvider(**emulator.provider_options(), request_timeout=5)
    emulator.clear_faults()


@pytest.fixture
async def sandbox_id(e2b: E2BProvider) -> AsyncIterator[str]:
    info = await e2b.create_sandbox(SandboxConfig(labels={"suite": "e2b"}))
    try:
        yield info.id
    finally:
        await e2b.destroy_sandbox(info.id)


def _creates(emulator: E2BEmulator) -> int:
    return sum(1 for method, path in emulator.requests if (method, path) == ("POST", "/v2/sandboxes"))


# -- credentials -----------------------------------------------------------------------------
def test_missing_key_is_unavailable_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(ProviderUnavailable, match="E2B_API_KEY") as raised:
        E2BProvider()
    assert raised.value.provider == "e2b"
    assert provider_class("e2b") is E2BProvider


async def test_configured_by_the_sdk_environment_variables(emulator: E2BEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in emulator.environ().items():
        monkeypatch.setenv(name, value)
    provider = E2BProvider()
    info = await provider.create_sandbox(SandboxConfig())
    try:
        result = await provider.execute_command(info.id, "env")
        assert result.success
        assert emulator.api_key not in result.stdout, "the library's own key reached the sandbox"
    finally:
        await provider.destroy_sandbox(info.id)


async def test_key_never_in_repr_or_errors(emulator: E2BEmulator) -> None:
    secret = emulator.api_key
    provider = E2BProvider(**emulator.provider_options())
    assert secret not in repr(provider)
    assert secret not in str(vars(provider))
    emulator.fail_next(500, message=f"backend choked on key {secret}")
    with pytest.raises(ProviderError) as raised:
        await provider.create_sandbox(SandboxConfig())
    assert secret not in str(raised.value)
    assert "***" in str(raised.value)


async def test_wrong_key_is_an_authentication_error(emulator: E2BEmulator) -> None:
    wrong = "e2b_wrong_key_0000000000000000"
    provider = E2BProvider(**{**emulator.provider_options(), "api_key": wrong})
    with pytest.raises(AuthenticationError, match="E2B_API_KEY") as raised:
        await provider.create_sandbox(SandboxConfig())
    assert wrong not in str(raised.value)
    with pytest.raises(AuthenticationError):
        await provider.health_check()


# -- faults ------------------------------------------------------------------------------------
async def test_server_error_is_a_provider_error_and_nothing_leaks(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    before = set(emulator.sandboxes)
    emulator.fail_next(500, path="/v2/sandboxes", method="POST")
    with pytest.raises(ProviderError, match="500") as raised:
        await e2b.create_sandbox(SandboxConfig())
    assert type(raised.value) is ProviderError
    assert set(emulator.sandboxes) == before


async def test_rate_limit_carries_retry_after(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    emulator.fail_next(429, retry_after=7)
    with pytest.raises(RateLimitError) as raised:
        await e2b.list_sandboxes()
    assert raised.value.retry_after == 7
    assert isinstance(raised.value, ProviderError)  # retryable by the Manager


async def test_sdk_retries_honour_retry_after_when_enabled(emulator: E2BEmulator) -> None:
    provider = E2BProvider(**emulator.provider_options(), retries=2)
    emulator.fail_next(429, retry_after=0, count=2)
    assert isinstance(await provider.list_sandboxes({"none": "such"}), list)


async def test_dropped_connection_is_a_provider_error(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    emulator.drop_next(path="/v2/sandboxes", method="POST")
    with pytest.raises(ProviderError):
        await e2b.create_sandbox(SandboxConfig())


async def test_hung_request_is_a_provider_error_after_the_request_timeout(emulator: E2BEmulator) -> None:
    provider = E2BProvider(**emulator.provider_options(), request_timeout=0.5)
    emulator.hang_next(seconds=5, method="GET")
    started = time.monotonic()
    with pytest.raises(ProviderError):
        await provider.get_sandbox("whatever")
    assert time.monotonic() - started < 4


async def test_envd_failure_on_files_is_a_provider_error(e2b: E2BProvider, emulator: E2BEmulator, sandbox_id: str) -> None:
    emulator.fail_next(500, target="envd", path="/files")
    with pytest.raises(ProviderError):
        await e2b.read_file(sandbox_id, "anything.txt")


async def test_vanished_sandbox_is_not_found(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    info = await e2b.create_sandbox(SandboxConfig())
    assert (await e2b.execute_command(info.id, "true")).success
    emulator.vanish(info.id)
    with pytest.raises(SandboxNotFoundError):
        await e2b.execute_command(info.id, "true")
    with pytest.raises(SandboxNotFoundError):
        await e2b.read_file(info.id, "x.txt")
    assert await e2b.get_sandbox(info.id) is None
    assert await e2b.destroy_sandbox(info.id) is False


async def test_sandbox_vanishing_mid_command_is_not_found(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    info = await e2b.create_sandbox(SandboxConfig())
    stream = e2b.stream_execution(info.id, "echo up; sleep 30")
    with pytest.raises(SandboxNotFoundError):
        async for chunk in stream:
            assert chunk.data == "up\n"
            emulator.vanish(info.id)


# -- labels, paging, reuse -------------------------------------------------------------------------
async def test_labels_are_found_from_another_provider_instance(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    tag = uuid.uuid4().hex[:10]
    info = await e2b.create_sandbox(SandboxConfig(labels={"run": tag, "odd": "a b&c=d%41/é"}))
    try:
        await e2b.write_file(info.id, "shared.txt", b"from the first process")
        other = E2BProvider(**emulator.provider_options())  # knows nothing of the first one
        found = await other.find_sandbox({"run": tag, "odd": "a b&c=d%41/é"})
        assert found is not None and found.id == info.id
        assert found.labels == {"run": tag, "odd": "a b&c=d%41/é"}
        assert await other.read_file(found.id, "shared.txt") == b"from the first process"
        assert (await other.execute_command(found.id, "cat shared.txt")).stdout == "from the first process"
    finally:
        await e2b.destroy_sandbox(info.id)


async def test_list_follows_every_page(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    tag = uuid.uuid4().hex[:10]
    emulator.page_size = 2
    created = [await e2b.create_sandbox(SandboxConfig(labels={"paging": tag})) for _ in range(5)]
    try:
        start = len(emulator.requests)
        listed = await e2b.list_sandboxes({"paging": tag})
        assert sorted(i.id for i in listed) == sorted(i.id for i in created)
        pages = [r for r in emulator.requests[start:] if r == ("GET", "/v2/sandboxes")]
        assert len(pages) == 3
    finally:
        for info in created:
            await e2b.destroy_sandbox(info.id)


async def test_health_check_creates_nothing(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    creates = _creates(emulator)
    assert await e2b.health_check() is True
    assert _creates(emulator) == creates
    emulator.fail_next(500)
    assert await e2b.health_check() is False


# -- creation options ----------------------------------------------------------------------------------
async def test_create_passes_template_env_lifetime_and_network(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    config = SandboxConfig(image="my-template", env={"FROM_CREATE": "yes"}, lifetime=120, network=False)
    info = await e2b.create_sandbox(config)
    try:
        emulated = emulator.sandboxes[info.id]
        assert emulated.template == "my-template" and info.image == "my-template"
        assert emulated.internet is False
        assert 110 < emulated.end_at - emulated.started_at <= 121
        result = await e2b.execute_command(info.id, "echo \"$FROM_CREATE\"; awk 'NR > 2 {print $1}' /proc/net/dev")
        lines = result.stdout.splitlines()
        assert lines[0] == "yes"
        if emulator.isolated:  # commands run in their own namespaces: only loopback is left
            assert lines[1:] == ["lo:"]
    finally:
        await e2b.destroy_sandbox(info.id)


async def test_resources_are_unsupported_not_ignored(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    creates = _creates(emulator)
    with pytest.raises(UnsupportedOperation, match="template"):
        await e2b.create_sandbox(SandboxConfig(memory_mb=4096))
    assert _creates(emulator) == creates


async def test_failed_setup_destroys_the_half_created_sandbox(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    before = set(emulator.sandboxes)
    with pytest.raises(SetupFailed, match="setup command failed") as raised:
        await e2b.create_sandbox(SandboxConfig(setup_commands=["echo fine", "exit 7"]))
    assert raised.value.result.exit_code == 7
    assert not isinstance(raised.value, ProviderError)  # the user's command failed: never retried
    assert set(emulator.sandboxes) == before


async def test_working_dir_is_the_default_cwd(e2b: E2BProvider) -> None:
    info = await e2b.create_sandbox(SandboxConfig(working_dir="/tmp/project"))
    try:
        assert (await e2b.execute_command(info.id, "pwd")).stdout == "/tmp/project\n"
        missing = await e2b.execute_command(info.id, "pwd", cwd="/tmp/nowhere")
        assert missing.exit_code == 1 and "working directory not found" in missing.stderr
    finally:
        await e2b.destroy_sandbox(info.id)


# -- commands and files -------------------------------------------------------------------------------
async def test_command_longer_than_an_argument_may_be(e2b: E2BProvider, sandbox_id: str) -> None:
    filler = "x" * 300_000
    result = await e2b.execute_command(sandbox_id, f"echo {filler} | wc -c; exit 5")
    assert result.exit_code == 5
    assert result.stdout.strip() == str(len(filler) + 1)
    assert (await e2b.execute_command(sandbox_id, "ls /tmp/.sandboxes-cmd-* 2>/dev/null | wc -l")).stdout.strip() == "0"


async def test_stopping_a_stream_early_ends_the_command(e2b: E2BProvider, emulator: E2BEmulator, sandbox_id: str) -> None:
    async for chunk in e2b.stream_execution(sandbox_id, "echo first; sleep 30"):
        assert chunk.data == "first\n"
        break
    deadline = time.monotonic() + 5
    while emulator.sandboxes[sandbox_id].processes and time.monotonic() < deadline:
        await anyio.sleep(0.05)  # the abandoned generator is closed by the event loop
    assert emulator.sandboxes[sandbox_id].processes == {}


async def test_file_errors_carry_the_path(e2b: E2BProvider, sandbox_id: str) -> None:
    await e2b.write_file(sandbox_id, "/tmp/deep/er/file.txt", b"x")
    with pytest.raises(IsADirectoryError, match="/tmp/deep/er"):
        await e2b.read_file(sandbox_id, "/tmp/deep/er")
    with pytest.raises(FileNotFoundError, match=re.escape("/tmp/deep/none.txt")):
        await e2b.read_file(sandbox_id, "/tmp/deep/none.txt")
    with pytest.raises(PermissionError, match="/etc/passwd"):
        await e2b.write_file(sandbox_id, "/etc/passwd", b"no")


async def test_sandboxes_do_not_share_tmp(e2b: E2BProvider, sandbox_id: str) -> None:
    other = await e2b.create_sandbox(SandboxConfig())
    try:
        await e2b.write_file(sandbox_id, "/tmp/mine.txt", b"private")
        assert (await e2b.execute_command(sandbox_id, "cat /tmp/mine.txt")).stdout == "private"
        with pytest.raises(FileNotFoundError):
            await e2b.read_file(other.id, "/tmp/mine.txt")
    finally:
        await e2b.destroy_sandbox(other.id)


async def test_background_processes_outlive_their_command_until_destroy(e2b: E2BProvider, emulator: E2BEmulator) -> None:
    info = await e2b.create_sandbox(SandboxConfig())
    started = time.monotonic()
    launched = await e2b.execute_command(info.id, "sleep 0.3 && echo later > /tmp/bg.txt & sleep 60 & echo launched")
    assert launched.stdout == "launched\n"
    assert time.monotonic() - started < 5, "a background process held the command open"
    await anyio.sleep(0.8)
    assert await e2b.read_file(info.id, "/tmp/bg.txt") == b"later\n"
    marker = f"E2B_SANDBOX_ID={info.id}".encode()
    assert _processes_with(marker), "the background sleep should still run"
    await e2b.destroy_sandbox(info.id)
    assert not _processes_with(marker), "destroy left a process of the sandbox running"


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
