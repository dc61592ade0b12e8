"""Fault injection through the real SDKs against the emulators, with the Manager's policy in the way.

Each test injects a fault on the wire (429 with Retry-After, 500, a dropped
connection, a hang, a vanished sandbox) and checks what the Manager does:
retry, wait, fail fast, fail over, and leave no sandbox behind anywhere.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from sandboxes import Manager, Sandbox, SandboxConfig, get_manager
from sandboxes.errors import (
    ProviderError,
    SandboxNotFoundError,
    SetupFailed,
    UnsupportedOperation,
)
from sandboxes.resilience import CircuitOpenError, RetryPolicy
from sandboxes.resilient import ATTEMPT_LABEL
from tests.emulators import cloudflare as cloudflare_emulator
from tests.emulators import daytona as daytona_emulator
from tests.emulators.e2b import E2BEmulator
from tests.emulators.modal import ModalEmulator
from tests.emulators.modal import open_emulator as open_modal

from .conftest import e2b_provider

pytestmark = pytest.mark.anyio

CREATE = ("POST", "/v2/sandboxes")


class Sleeps:
    """The policy's sleep: records each wait; really waits only when asked to."""

    def __init__(self, real: bool = False) -> None:
        self.seen: list[float] = []
        self.real = real

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)
        await anyio.sleep(seconds if self.real else 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def daytona() -> Iterator[Any]:
    with daytona_emulator.open_provider() as provider:
        yield provider


@pytest.fixture(scope="module")
def modal_emulator() -> Iterator[ModalEmulator]:
    with open_modal() as running:
        yield running


def creates(emulator: E2BEmulator) -> int:
    return emulator.requests.count(CREATE)


def manager(*providers: Any, sleeps: Sleeps | None = None, **options: Any) -> Manager:
    retry = options.pop("retry", None) or RetryPolicy(sleep=sleeps or Sleeps(), random=lambda: 1.0, base_delay=0.01)
    return Manager(list(providers), retry=retry, **options)


# -- retry -------------------------------------------------------------------------------------


async def test_429_is_retried_after_exactly_retry_after(emulator: E2BEmulator) -> None:
    sleeps = Sleeps(real=True)
    guarded = manager(e2b_provider(emulator), sleeps=sleeps)
    emulator.fail_next(429, retry_after=1, path="/v2/sandboxes", method="POST")
    before = creates(emulator)
    started = time.monotonic()
    provider, info = await guarded.create_sandbox(SandboxConfig(labels={"case": "429"}))
    try:
        assert 1.0 <= time.monotonic() - started < 2.0  # it really waited what E2B asked
        assert sleeps.seen == []  # not by the retry policy: by the governor, which pauses every process
        assert guarded.governors["e2b"].counters.throttled == 1
        assert creates(emulator) - before == 2
        assert info.labels == {"case": "429"}  # the bookkeeping label stays inside
        assert list(emulator.sandboxes) == [info.id]
    finally:
        await provider.destroy_sandbox(info.id)


async def test_500s_are_retried_with_backoff(emulator: E2BEmulator) -> None:
    sleeps = Sleeps()
    guarded = manager(e2b_provider(emulator), sleeps=sleeps)
    emulator.fail_next(500, count=2, path="/v2/sandboxes", method="POST", message="internal error")
    before = creates(emulator)
    provider, info = await guarded.create_sandbox(SandboxConfig())
    try:
        assert creates(emulator) - before == 3
        assert sleeps.seen == [0.01, 0.02]  # exponential (random() pinned to the top of the range)
        assert (await provider.execute_command(info.id, "echo ok")).stdout == "ok\n"
    finally:
        await provider.destroy_sandbox(info.id)


async def test_idempotent_calls_retry_a_dropped_connection_and_a_hang(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator, request_timeout=0.5))
    provider, info = await guarded.create_sandbox(SandboxConfig(labels={"case": "idempotent"}))
    try:
        emulator.drop_next(path=f"/sandboxes/{info.id}", method="GET")
        assert (await provider.get_sandbox(info.id)) is not None
        emulator.hang_next(seconds=5, path="/v2/sandboxes", method="GET")
        started = time.monotonic()
        assert [i.id for i in await provider.list_sandboxes({"case": "idempotent"})] == [info.id]
        assert time.monotonic() - started < 4  # the hung attempt timed out and the next one answered
        emulator.fail_next(503, target="envd", path="/files")
        await provider.write_file(info.id, "a.txt", b"same bytes")
        emulator.fail_next(503, target="envd", path="/files")
        assert await provider.read_file(info.id, "a.txt") == b"same bytes"
        emulator.fail_next(503, target="envd", path="/files")
        await provider.write_files(info.id, {"b.txt": b"b", "c.txt": b"c"})  # one by one here (no files_upload), each retried
        assert [await provider.read_file(info.id, name) for name in ("b.txt", "c.txt")] == [b"b", b"c"]
    finally:
        emulator.drop_next(path=f"/sandboxes/{info.id}", method="DELETE")  # dropped before E2B acted
        assert await provider.destroy_sandbox(info.id) is True
    assert info.id not in emulator.sandboxes


async def test_cloudflare_file_calls_retry_a_dropped_connection_and_a_500() -> None:
    with cloudflare_emulator.open_provider() as cloudflare:
        guarded = manager(cloudflare)
        provider, info = await guarded.create_sandbox(SandboxConfig())
        try:
            cloudflare.emulator.fail_next(500, path_contains="/file/", method="PUT")
            await provider.write_file(info.id, "notes.txt", b"kept")
            cloudflare.emulator.drop_next(path_contains="/file/", method="GET")
            assert await provider.read_file(info.id, "notes.txt") == b"kept"
            assert cloudflare.emulator.faults.pending == 0  # both faults were hit, and retried through
        finally:
            await provider.destroy_sandbox(info.id)
        assert not cloudflare.emulator.containers


async def test_a_command_is_not_run_again_after_a_failure_that_may_have_run_it(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator))
    provider, info = await guarded.create_sandbox(SandboxConfig())
    starts = lambda: sum(1 for _, path in emulator.requests if path.endswith("/process.Process/Start"))  # noqa: E731
    try:
        before = starts()
        emulator.fail_next(502, target="envd", path="/process.Process/Start", message="upstream reset")
        with pytest.raises(ProviderError):
            await provider.execute_command(info.id, "echo once >> log")
        assert starts() - before == 1
        emulator.fail_next(429, retry_after=0, target="envd", path="/process.Process/Start")
        result = await provider.execute_command(info.id, "echo once >> log; cat log")
        assert result.stdout == "once\n"  # a 429 is a refusal: resent, and run exactly once
        assert starts() - before == 3
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_refused_stream_is_resent_and_keeps_its_exit_status(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator))
    provider, info = await guarded.create_sandbox(SandboxConfig())
    starts = lambda: sum(1 for _, path in emulator.requests if path.endswith("/process.Process/Start"))  # noqa: E731
    try:
        before = starts()
        emulator.fail_next(429, retry_after=0, target="envd", path="/process.Process/Start")
        stream = provider.stream_execution(info.id, "echo streamed; exit 4")
        chunks = [chunk.data async for chunk in stream]
        assert "".join(chunks) == "streamed\n"
        assert (stream.exit_code, stream.timed_out) == (4, False)
        assert starts() - before == 2
        emulator.fail_next(502, target="envd", path="/process.Process/Start")
        with pytest.raises(ProviderError):  # not a refusal: it may have run, so it is not resent
            async for _ in provider.stream_execution(info.id, "echo twice? >> log"):
                pass
        assert starts() - before == 3
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_stream_that_never_starts_or_never_takes_its_stdin_is_the_providers_failure(emulator: E2BEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Black-holed E2B streams: an infrastructure error within the deadlines, never the command's timeout."""
    from sandboxes.providers import e2b

    monkeypatch.setattr(e2b, "START_SECONDS", 1.0)
    guarded = manager(e2b_provider(emulator))
    provider, info = await guarded.create_sandbox(SandboxConfig())
    try:
        emulator.hang_next(target="envd", path="/process.Process/Start")  # no start event, ever
        started = time.monotonic()
        with pytest.raises(ProviderError, match="stream didn't open"):
            await provider.execute_command(info.id, "echo hi", timeout=20)
        assert time.monotonic() - started < 8  # the start's deadline, not the command's timeout and its 30 s grace
        for path in ("/process.Process/SendInput", "/process.Process/CloseStdin"):
            emulator.hang_next(target="envd", path=path)
            with pytest.raises(ProviderError, match=r"stdin \(6 bytes\) was not delivered within its 2 s"):
                await provider.execute_command(info.id, ["sh", "-c", "read -r line; echo $line"], stdin="nonce\n", timeout=2)
        unread = await provider.execute_command(info.id, "sleep 5", stdin="ignored\n", timeout=1)  # taken by the pipe, unread
        assert unread.timed_out  # a command that does not read its stdin still times out as itself
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_lost_close_of_stdin_is_closed_again_and_the_data_sent_once(emulator: E2BEmulator) -> None:
    """A connection dropped under CloseStdin (before E2B acted, or only its answer) is no failure of the check."""
    guarded = manager(e2b_provider(emulator))
    provider, info = await guarded.create_sandbox(SandboxConfig())
    sent = lambda path: sum(1 for _, seen in emulator.requests if seen.endswith(path))  # noqa: E731
    try:
        for after in (False, True):
            closes, inputs = sent("/process.Process/CloseStdin"), sent("/process.Process/SendInput")
            emulator.drop_next(target="envd", path="/process.Process/CloseStdin", after=after)
            result = await provider.execute_command(info.id, ["sh", "-c", "cat; echo end"], stdin="nonce\n", timeout=20)
            assert (result.exit_code, result.stdout) == (0, "nonce\nend\n")
            assert (sent("/process.Process/CloseStdin") - closes, sent("/process.Process/SendInput") - inputs) == (2, 1)
        assert emulator.pending_faults == 0
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_vanished_sandbox_is_not_retried_and_does_not_trip_the_breaker(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator), circuit_breaker={"failure_threshold": 1})
    provider, info = await guarded.create_sandbox(SandboxConfig())
    emulator.vanish(info.id)
    before = len(emulator.requests)
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(info.id, "true")
    assert await provider.get_sandbox(info.id) is None
    assert len(emulator.requests) - before <= 3  # one try each (execute may ask E2B where the sandbox is)
    assert guarded.breaker("e2b").state == "closed"


# -- leaks ---------------------------------------------------------------------------------------


async def test_a_lost_answer_to_create_leaves_no_orphan(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator))
    emulator.drop_next(path="/v2/sandboxes", method="POST", after=True)  # E2B creates it; the answer is lost
    before = creates(emulator)
    provider, info = await guarded.create_sandbox(SandboxConfig(labels={"case": "lost"}))
    try:
        assert creates(emulator) - before == 2
        assert list(emulator.sandboxes) == [info.id]  # the first one was found by its token and destroyed
        assert ATTEMPT_LABEL not in info.labels
        assert [i.labels for i in await provider.list_sandboxes({"case": "lost"})] == [{"case": "lost"}]
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_lost_answer_on_daytona_leaves_no_orphan(daytona: Any) -> None:
    guarded = manager(daytona)
    daytona.emulator.drop_next(path_contains="/sandbox", method="POST", after=True)
    provider, info = await guarded.create_sandbox(SandboxConfig(labels={"case": "daytona-lost"}))
    try:
        assert list(daytona.emulator.sandboxes) == [info.id]
    finally:
        await provider.destroy_sandbox(info.id)


@pytest.fixture
async def modal_provider(modal_emulator: ModalEmulator) -> AsyncIterator[Any]:
    """A ModalProvider with its SDK session open on the module's emulator."""
    from sandboxes.providers import ModalProvider

    provider = ModalProvider()
    try:
        await provider.health_check()
        yield provider
    finally:
        await provider.aclose()


async def test_a_lost_answer_on_modal_is_cleared_before_the_creation_is_sent_again(modal_emulator: ModalEmulator, modal_provider: Any) -> None:
    """Modal's SDK would resend a creation by itself after a dropped connection, with the first one's
    sandbox still alive beside it: past the cap for a moment. Sent once, the failure reaches the
    Manager, which destroys the stray first: never two alive for one creation."""
    alive = set(modal_emulator.running_sandboxes())
    ended, creations = len(modal_emulator.lifetimes), modal_emulator.calls.count("SandboxCreateV2")
    modal_emulator.peak_alive = len(alive)  # counted from here (the emulator is the module's)
    modal_emulator.drop_next("SandboxCreateV2", after=True)
    instance, info = await manager(modal_provider).create_sandbox(SandboxConfig(labels={"case": "modal-lost"}))
    assert modal_emulator.calls.count("SandboxCreateV2") - creations == 2
    assert set(modal_emulator.running_sandboxes()) - alive == {info.id}
    assert modal_emulator.peak_alive == len(alive) + 1  # the stray was gone before the second creation
    assert len(modal_emulator.lifetimes) - ended == 1
    await instance.destroy_sandbox(info.id)


async def test_where_the_modal_sdk_still_resends_every_creation_is_checked_for_strays(
    modal_emulator: ModalEmulator, modal_provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK version whose client we cannot reach keeps resending by itself: the stray it leaves is found after."""
    from sandboxes.providers import modal as modal_driver

    monkeypatch.setattr(modal_driver, "_send_once", lambda client: False)
    alive, creations = set(modal_emulator.running_sandboxes()), modal_emulator.calls.count("SandboxCreateV2")
    modal_emulator.drop_next("SandboxCreateV2", after=True)
    instance, info = await manager(modal_provider).create_sandbox(SandboxConfig(labels={"case": "modal-resent"}))
    assert modal_emulator.calls.count("SandboxCreateV2") - creations == 2  # the SDK's own resend: the Manager saw no failure
    assert set(modal_emulator.running_sandboxes()) - alive == {info.id}
    await instance.destroy_sandbox(info.id)


async def test_an_answered_modal_creation_is_not_followed_by_a_search_for_strays(modal_emulator: ModalEmulator, modal_provider: Any) -> None:
    """No failure, so no stray to look for: a creation costs Modal one call, not a list after it."""
    before = len(modal_emulator.calls)
    instance, info = await manager(modal_provider).create_sandbox(SandboxConfig(labels={"case": "modal-once"}))
    assert "SandboxListV2" not in modal_emulator.calls[before:]
    await instance.destroy_sandbox(info.id)


async def test_a_hung_modal_call_is_cut_at_the_attempt_timeout_and_retried(modal_emulator: ModalEmulator) -> None:
    """Modal's SDK sets no deadline of its own: the retry policy's attempt_timeout bounds the hang."""
    from sandboxes.providers import ModalProvider

    provider = ModalProvider()
    try:
        retry = RetryPolicy(sleep=Sleeps(), random=lambda: 1.0, base_delay=0.01, attempt_timeout=0.5)
        instance, info = await manager(provider, retry=retry).create_sandbox(SandboxConfig(labels={"case": "modal-hang"}))
        try:
            modal_emulator.hang_next("SandboxListV2", seconds=30)
            started = time.monotonic()
            assert [found.id for found in await instance.list_sandboxes({"case": "modal-hang"})] == [info.id]
            assert time.monotonic() - started < 10  # one attempt cut at 0.5 s, the next answered
            assert modal_emulator.calls.count("SandboxListV2") >= 2
        finally:
            await instance.destroy_sandbox(info.id)
    finally:
        await provider.aclose()


def test_attempt_timeout_must_be_positive_or_none() -> None:
    assert RetryPolicy(attempt_timeout=None).attempt_timeout is None
    with pytest.raises(ValueError, match="attempt_timeout must be more than 0 seconds"):
        RetryPolicy(attempt_timeout=0)


async def test_failed_setup_destroys_the_half_created_sandbox_and_is_not_failed_over(emulator: E2BEmulator, daytona: Any) -> None:
    guarded = manager(e2b_provider(emulator), daytona)
    before = creates(emulator)
    daytona_creates = daytona.emulator.requests.count(("POST", "/sandbox"))
    with pytest.raises(SetupFailed) as raised:
        await guarded.create_sandbox(SandboxConfig(setup_commands=["true", "echo broken >&2; exit 3"]), "e2b", ["daytona"])
    assert raised.value.result.exit_code == 3 and "broken" in str(raised.value)
    assert creates(emulator) - before == 1  # the user's command failed: not retried ...
    assert daytona.emulator.requests.count(("POST", "/sandbox")) == daytona_creates  # ... nor failed over
    assert not emulator.sandboxes  # and the sandbox it ran in is gone


async def test_cancelled_setup_destroys_the_half_created_sandbox(emulator: E2BEmulator) -> None:
    guarded = manager(e2b_provider(emulator))
    with anyio.move_on_after(1.0) as scope:
        await guarded.create_sandbox(SandboxConfig(setup_commands=["sleep 30"]))
    assert scope.cancelled_caught
    assert not emulator.sandboxes


async def test_bad_input_is_not_failed_over(emulator: E2BEmulator, daytona: Any) -> None:
    guarded = manager(e2b_provider(emulator), daytona)
    daytona_creates = daytona.emulator.requests.count(("POST", "/sandbox"))
    with pytest.raises(UnsupportedOperation, match="memory or cpus"):
        await guarded.create_sandbox(SandboxConfig(memory_mb=512), "e2b", ["daytona"])
    assert daytona.emulator.requests.count(("POST", "/sandbox")) == daytona_creates


# -- circuit breaker and failover ---------------------------------------------------------------------


async def test_breaker_opens_fails_fast_then_recovers(emulator: E2BEmulator) -> None:
    clock = Clock()
    guarded = manager(e2b_provider(emulator), retry=RetryPolicy.never(), circuit_breaker={"failure_threshold": 2, "reset_timeout": 30, "clock": clock})
    provider = guarded.get_provider("e2b")
    emulator.fail_next(503, count=2, path="/v2/sandboxes", method="GET")
    for _ in range(2):
        with pytest.raises(ProviderError, match="503"):
            await provider.list_sandboxes()
    before = len(emulator.requests)
    with pytest.raises(CircuitOpenError, match=r"circuit open for provider 'e2b'.*next trial in 30\.0s"):
        await provider.list_sandboxes()
    assert len(emulator.requests) == before  # failed fast: E2B never saw it
    assert await provider.health_check() is False
    clock.now += 30
    assert await provider.list_sandboxes() == []  # the trial call: E2B is back
    assert guarded.breaker("e2b").state == "closed"
    assert len(emulator.requests) == before + 1


async def test_failover_to_the_fallback_leaves_nothing_on_either(emulator: E2BEmulator, daytona: Any) -> None:
    guarded = manager(e2b_provider(emulator), daytona, circuit_breaker={"failure_threshold": 3})
    for _ in range(3):  # every attempt creates on E2B and loses the answer
        emulator.drop_next(path="/v2/sandboxes", method="POST", after=True)
    before = creates(emulator)
    provider, info = await guarded.create_sandbox(SandboxConfig(labels={"case": "failover"}), "e2b", ["daytona"])
    try:
        assert provider.name == "daytona" and info.provider == "daytona"
        assert creates(emulator) - before == 3
        assert not emulator.sandboxes  # the three E2B made were found by their token and destroyed
        assert list(daytona.emulator.sandboxes) == [info.id]
        assert (await provider.execute_command(info.id, "echo from daytona")).stdout == "from daytona\n"
        # E2B's circuit is open now: the next creation goes straight to Daytona
        second_provider, second = await guarded.create_sandbox(SandboxConfig(), "e2b", ["daytona"])
        assert second_provider.name == "daytona"
        assert creates(emulator) - before == 3
        await second_provider.destroy_sandbox(second.id)
    finally:
        await provider.destroy_sandbox(info.id)
    assert info.id not in daytona.emulator.sandboxes and not emulator.sandboxes


async def test_every_provider_failing_names_each_error(emulator: E2BEmulator) -> None:
    with cloudflare_emulator.open_provider() as cloudflare:
        guarded = manager(e2b_provider(emulator), cloudflare, retry=RetryPolicy.never())
        emulator.fail_next(500, path="/v2/sandboxes", method="POST", message="e2b is down")
        cloudflare.emulator.fail_next(503, path_contains="/v1/sandbox", method="POST")
        with pytest.raises(ProviderError) as raised:
            await guarded.create_sandbox(SandboxConfig(), "e2b", ["cloudflare"])
        message = str(raised.value)
        assert "every provider failed" in message
        assert "e2b: E2B answered 500" in message and "e2b is down" in message
        assert "cloudflare: cloudflare (503" in message
        assert not cloudflare.emulator.containers


# -- the Sandbox API uses the same policy --------------------------------------------------------------


@pytest.fixture
async def configured(emulator: E2BEmulator) -> AsyncIterator[E2BEmulator]:
    Sandbox.configure(
        providers=[e2b_provider(emulator)],
        retry={"max_attempts": 4, "base_delay": 0.01},
        circuit_breaker={"failure_threshold": 3, "reset_timeout": 60},
    )
    yield emulator


async def test_sandbox_calls_go_through_the_managers_policy(configured: E2BEmulator) -> None:
    emulator = configured
    emulator.fail_next(500, count=2, path="/v2/sandboxes", method="POST")
    async with Sandbox.create("e2b", labels={"case": "api"}) as sandbox:  # the third attempt succeeds
        assert sandbox.labels == {"case": "api"}
        emulator.fail_next(503, target="envd", path="/files")
        await sandbox.write_file("x.txt", "retried")
        assert await sandbox.read_file("x.txt") == b"retried"
        found = await Sandbox.find({"case": "api"}, provider="e2b")
        assert found is not None and found.id == sandbox.id
        emulator.fail_next(500, count=3, path="/v2/sandboxes", method="GET")
        with pytest.raises(CircuitOpenError):  # 3 outages in one call's retries: the circuit opens mid-way
            await Sandbox.list({"case": "api"}, provider="e2b")
        with pytest.raises(CircuitOpenError):
            await Sandbox.find({"case": "api"}, provider="e2b")
        get_manager().breaker("e2b").record_success()  # as a successful trial would
    assert not emulator.sandboxes
