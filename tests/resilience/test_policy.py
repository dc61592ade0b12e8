"""RetryPolicy and CircuitBreaker on a fake clock: which errors are retried, how long it waits, when it opens."""

from __future__ import annotations

import re

import anyio
import pytest

from sandboxes import Manager
from sandboxes.errors import (
    AuthenticationError,
    CommandFailed,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxError,
    SandboxNotFoundError,
    SetupFailed,
    UnsupportedOperation,
)
from sandboxes.models import ExecutionResult
from sandboxes.resilience import (
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    is_transient,
)

pytestmark = pytest.mark.anyio


class FakeClock:
    """A monotonic clock that only moves when told to, or when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Flaky:
    """A call that raises the given errors in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def policy(clock: FakeClock, **options: object) -> RetryPolicy:
    return RetryPolicy(sleep=clock.sleep, random=lambda: 1.0, **options)  # type: ignore[arg-type]


# -- which errors -------------------------------------------------------------------------

FAILED = ExecutionResult(exit_code=3, stderr="boom")
NEVER_RETRIED = [
    AuthenticationError("bad key", provider="e2b"),
    ProviderUnavailable("set E2B_API_KEY", provider="e2b"),
    CircuitOpenError("circuit open", provider="e2b"),
    SandboxNotFoundError("gone"),
    UnsupportedOperation("daytona", "streaming"),
    ValueError("bad input"),
    SandboxError("the provider refused the request as invalid"),
    CommandFailed(FAILED),
    SetupFailed(FAILED, "e2b"),
    FileNotFoundError("/nope"),
]


@pytest.mark.parametrize("error", NEVER_RETRIED, ids=lambda e: type(e).__name__)
async def test_only_transient_infrastructure_errors_are_retried(error: BaseException) -> None:
    clock = FakeClock()
    call = Flaky(error)
    with pytest.raises(type(error)):
        await policy(clock, max_attempts=5).run(call)
    assert call.calls == 1 and clock.slept == []
    assert not is_transient(error)


@pytest.mark.parametrize(
    "error",
    [ProviderError("503 from the API", provider="e2b"), RateLimitError("429", provider="e2b"), ProviderError("connection reset")],
    ids=["5xx", "429-without-retry-after", "dropped"],
)
async def test_transient_errors_are_retried_until_success(error: ProviderError) -> None:
    clock = FakeClock()
    call = Flaky(error, error)
    assert await policy(clock, max_attempts=3).run(call) == "done"
    assert call.calls == 3
    assert clock.slept == [0.5, 1.0]  # base 0.5 s, doubled (random()=1: the top of the jitter range)


async def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    clock = FakeClock()
    call = Flaky(*(ProviderError(f"500 number {n}") for n in range(5)))
    with pytest.raises(ProviderError, match="number 2"):
        await policy(clock, max_attempts=3).run(call)
    assert call.calls == 3 and len(clock.slept) == 2


async def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    seen = iter([1.0, 1.0, 1.0, 1.0, 0.0, 0.25])
    jittered = RetryPolicy(base_delay=1.0, max_delay=5.0, multiplier=2.0, random=lambda: next(seen))
    assert [jittered.backoff(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]  # capped at max_delay
    assert jittered.backoff(3) == 0.0  # full jitter: anywhere from 0 ...
    assert jittered.backoff(3) == 1.0  # ... to the exponential ceiling (4 s * 0.25)
    real = RetryPolicy(base_delay=1.0, max_delay=8.0)
    delays = {real.backoff(4) for _ in range(50)}
    assert all(0 <= d <= 8.0 for d in delays) and len(delays) > 1


async def test_retry_after_is_waited_exactly() -> None:
    clock = FakeClock()
    call = Flaky(RateLimitError("slow down", provider="e2b", retry_after=7.0))
    assert await policy(clock).run(call) == "done"
    assert clock.slept == [7.0]


async def test_retry_after_longer_than_max_delay_is_raised_at_once() -> None:
    clock = FakeClock()
    call = Flaky(RateLimitError("come back in an hour", provider="e2b", retry_after=3600))
    with pytest.raises(RateLimitError, match="an hour"):
        await policy(clock, max_delay=30).run(call)
    assert call.calls == 1 and clock.slept == []


async def test_a_custom_predicate_narrows_what_is_retried() -> None:
    clock = FakeClock()
    refusals_only = Flaky(ProviderError("500 after the command may have run"))
    with pytest.raises(ProviderError):
        await policy(clock).run(refusals_only, retry_if=lambda e: isinstance(e, RateLimitError))
    assert refusals_only.calls == 1


async def test_real_sleep_by_default() -> None:
    quick = RetryPolicy(base_delay=0.05, random=lambda: 1.0)
    started = anyio.current_time()
    assert await quick.run(Flaky(ProviderError("blip"))) == "done"
    assert anyio.current_time() - started >= 0.05


def test_settings_are_checked_with_clear_messages() -> None:
    with pytest.raises(ValueError, match="max_attempts must be a whole number of at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="base_delay must be 0 or more"):
        RetryPolicy(base_delay=-1)
    with pytest.raises(TypeError, match=r"unknown retry option.*attempts.*valid: max_attempts"):
        RetryPolicy.from_options({"attempts": 3})
    assert RetryPolicy.from_options(False).max_attempts == 1
    assert RetryPolicy.from_options({"max_attempts": 6}).max_attempts == 6
    with pytest.raises(TypeError, match=r"unknown circuit_breaker option.*threshold.*valid: failure_threshold"):
        Manager(circuit_breaker={"threshold": 2})
    with pytest.raises(ValueError, match="failure_threshold must be a whole number"):
        Manager(circuit_breaker={"failure_threshold": 0})


# -- the circuit breaker -------------------------------------------------------------------


async def outage() -> None:
    raise ProviderError("503 Service Unavailable", provider="e2b")


async def fine() -> str:
    return "ok"


async def test_breaker_opens_after_consecutive_outages_and_fails_fast() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=3, reset_timeout=10, clock=clock)
    for _ in range(3):
        with pytest.raises(ProviderError):
            await breaker.call(outage)
    assert breaker.state == "open"
    never = Flaky()
    clock.now += 4
    with pytest.raises(CircuitOpenError) as raised:
        await breaker.call(never)
    assert never.calls == 0  # failed fast: the provider was not called
    message = str(raised.value)
    assert "circuit open for provider 'e2b'" in message
    assert "3 consecutive" in message and "503 Service Unavailable" in message
    assert "next trial in 6.0s" in message and raised.value.retry_in == 6.0
    assert isinstance(raised.value, ProviderUnavailable)  # infrastructure: creation fails over


async def test_breaker_half_opens_after_the_cool_down_and_one_trial_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=2, reset_timeout=10, clock=clock)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await breaker.call(outage)
    clock.now += 10
    assert breaker.state == "half_open"
    trial_started, finish_trial = anyio.Event(), anyio.Event()

    async def slow_trial() -> str:
        trial_started.set()
        await finish_trial.wait()
        return "recovered"

    results: list[str] = []
    async with anyio.create_task_group() as group:

        async def run_trial() -> None:
            results.append(await breaker.call(slow_trial))

        group.start_soon(run_trial)
        await trial_started.wait()
        with pytest.raises(CircuitOpenError, match="a trial call is checking"):
            await breaker.call(fine)  # only one trial at a time
        finish_trial.set()
    assert results == ["recovered"]
    assert breaker.state == "closed" and breaker.failures == 0
    assert await breaker.call(fine) == "ok"


async def test_a_failed_trial_opens_the_circuit_for_another_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=2, reset_timeout=10, clock=clock)
    for _ in range(2):
        with pytest.raises(ProviderError):
            await breaker.call(outage)
    clock.now += 10
    with pytest.raises(ProviderError):
        await breaker.call(outage)  # the trial
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match=re.escape("next trial in 10.0s")):
        await breaker.call(fine)


async def test_answers_that_are_not_outages_reset_the_count() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=2, reset_timeout=10, clock=clock)

    async def not_found() -> None:
        raise SandboxNotFoundError("no such sandbox")

    async def throttled() -> None:
        raise RateLimitError("429", provider="e2b")

    for answer in (not_found, throttled):
        with pytest.raises(ProviderError):
            await breaker.call(outage)
        with pytest.raises(SandboxError):
            await breaker.call(answer)  # the provider answered: it is up
        assert breaker.failures == 0 and breaker.state == "closed"


async def test_a_cancelled_trial_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(ProviderError):
        await breaker.call(outage)
    clock.now += 5
    with anyio.move_on_after(0.01):
        await breaker.call(anyio.sleep_forever)
    assert await breaker.call(fine) == "ok"  # the next caller got the trial
    assert breaker.state == "closed"


async def test_retry_through_an_opening_breaker_stops_at_the_open_circuit() -> None:
    """Retry wraps the breaker: once it opens, the next attempt fails fast and is not retried."""
    clock = FakeClock()
    breaker = CircuitBreaker("e2b", failure_threshold=2, reset_timeout=60, clock=clock)
    call = Flaky(*(ProviderError("500") for _ in range(10)))
    with pytest.raises(CircuitOpenError):
        await policy(clock, max_attempts=5).run(lambda: breaker.call(call))
    assert call.calls == 2


def test_recorded_errors_come_back_as_the_same_type_with_their_fields() -> None:
    import errno

    from sandboxes.cassette import error_record, recorded_error
    from sandboxes.errors import RateLimitError, UnsupportedOperation
    from sandboxes.resilience import CircuitOpenError

    limited = recorded_error(error_record(RateLimitError("slow down", provider="e2b", retry_after=7.5)))
    assert type(limited) is RateLimitError and limited.retry_after == 7.5 and limited.provider == "e2b"
    opened = recorded_error(error_record(CircuitOpenError("circuit open", provider="modal", retry_in=3.0)))
    assert type(opened) is CircuitOpenError and opened.retry_in == 3.0 and opened.provider == "modal"
    missing = recorded_error(error_record(FileNotFoundError(errno.ENOENT, "No such file", "/workspace/x")))
    assert type(missing) is FileNotFoundError and missing.errno == errno.ENOENT and missing.filename == "/workspace/x"
    unsupported = recorded_error(error_record(UnsupportedOperation("daytona", "stdin", "use a file")))
    assert type(unsupported) is UnsupportedOperation and unsupported.capability == "stdin" and "use a file" in str(unsupported)
    unknown = recorded_error({"type": "SomethingNew", "message": "from a newer version"})
    assert type(unknown) is ProviderError and str(unknown) == "from a newer version"


def test_a_manager_given_providers_uses_them_over_credentials_found_around(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxes.providers.local import LocalProvider

    monkeypatch.delenv("SANDBOXES_PROVIDER", raising=False)
    monkeypatch.setenv("E2B_API_KEY", "e2b_from_the_environment")
    assert Manager([LocalProvider()]).resolve() == "local"
    assert Manager().resolve() == "e2b"  # nothing given: credentials decide


def test_the_manager_is_reached_and_reset_through_functions() -> None:
    import sandboxes

    first = sandboxes.get_manager()
    assert sandboxes.get_manager() is first
    sandboxes.reset_manager()
    assert sandboxes.get_manager() is not first


async def test_providers_replaced_by_configure_are_closed_with_the_manager() -> None:
    import sandboxes
    from sandboxes import SandboxProvider
    from sandboxes.providers.local import LocalProvider

    closed: list[str] = []

    class Closing(LocalProvider):
        async def aclose(self) -> None:
            closed.append(str(id(self)))

    first, second = Closing(), Closing()
    async with sandboxes.session():
        sandboxes.Sandbox.configure(providers=[first])
        sandboxes.Sandbox.configure(providers=[second])  # replaces the first
        assert isinstance(sandboxes.get_manager().get_provider("local"), SandboxProvider)
    assert sorted(closed) == sorted([str(id(first)), str(id(second))])


def test_fallback_true_means_the_credentialed_clouds_in_table_order_never_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("E2B_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "DAYTONA_API_KEY", "CLOUDFLARE_SANDBOX_BASE_URL", "CLOUDFLARE_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", "/nonexistent/modal.toml")
    monkeypatch.setenv("DAYTONA_API_KEY", "dtn_key")
    monkeypatch.setenv("E2B_API_KEY", "e2b_key")
    manager = Manager()
    assert manager.candidates("daytona", True) == ["daytona", "e2b"]  # whichever are built already: none are
    assert manager.candidates("e2b", True) == ["e2b", "daytona"]
    assert "local" not in manager.candidates("e2b", True)
    assert manager.candidates("e2b", ["local", "local"]) == ["e2b", "local"]  # named: then it may
    with pytest.raises(ValueError, match="unknown provider 'nope'"):
        manager.candidates("e2b", ["nope"])
