"""Retrying transient provider failures, and failing fast while a provider is down.

``RetryPolicy`` says how many attempts a call gets, how long to wait between
them (exponential backoff with full jitter, or exactly what a 429's
Retry-After asks) and which errors deserve another try: only transient
infrastructure errors. ``CircuitBreaker`` watches one provider: after N
consecutive infrastructure failures it opens, and calls fail fast with
``CircuitOpenError`` (so creation fails over at once instead of waiting on a
dead service); after a cool-down one trial call decides whether it closes.

The Manager applies both to every provider it hands out (see
``sandboxes.resilient``); they are not decorations left for users to apply.
Clock, sleep and randomness are injectable so that tests are deterministic.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

import anyio

from .errors import AuthenticationError, ProviderError, ProviderUnavailable, RateLimitError

T = TypeVar("T")
log = logging.getLogger("sandboxes.resilience")

State = Literal["closed", "open", "half_open"]


def is_transient(error: BaseException) -> bool:
    """An infrastructure error that another try may cure: rate limit, 5xx, dropped connection, timeout.

    Never: rejected credentials, a provider that cannot be used here (no SDK,
    no credentials, an open circuit), bad input, a sandbox that does not
    exist, an unsupported operation, or a command's own failure; none of those
    is a ``ProviderError`` that retrying could change.
    """
    return isinstance(error, ProviderError) and not isinstance(error, (AuthenticationError, ProviderUnavailable))


def is_outage(error: BaseException) -> bool:
    """A failure that counts against a provider's circuit: transient, but not a rate limit.

    A 429 means the provider is up and answering; the retry policy waits it out.
    """
    return is_transient(error) and not isinstance(error, RateLimitError)


class CircuitOpenError(ProviderUnavailable):
    """The provider's circuit is open: calls fail fast until the next trial."""

    def __init__(self, message: str, *, provider: str | None = None, retry_in: float = 0.0) -> None:
        super().__init__(message, provider=provider)
        self.retry_in = retry_in


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried on transient infrastructure errors.

    Attempt ``n`` (from 1) that fails waits a random time in
    ``[0, min(max_delay, base_delay * multiplier ** (n - 1))]`` (full jitter,
    so that many clients do not retry in lockstep), except after a 429 with
    Retry-After, which waits exactly what the provider asked. A Retry-After
    longer than ``max_delay`` is not waited out: the error is raised at once
    (creation then fails over) rather than blocking the caller for minutes.

    ``attempt_timeout`` bounds one attempt of a call to the provider's control
    plane (create, get, list, files, destroy): a call that hangs past it is a
    lost answer, retried like a dropped connection. Commands are bounded by
    their own timeout instead.
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    attempt_timeout: float | None = 300.0
    sleep: Callable[[float], Awaitable[Any]] = field(default=anyio.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be a whole number of at least 1, not {self.max_attempts!r}")
        for name in ("base_delay", "max_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more seconds, not {getattr(self, name)!r}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier!r}")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be more than 0 seconds (or None for no bound), not {self.attempt_timeout!r}")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retry."""
        return cls(max_attempts=1)

    @classmethod
    def from_options(cls, options: RetryPolicy | Mapping[str, Any] | bool | None) -> RetryPolicy:
        """A policy from ``Sandbox.configure(retry=...)``: a policy, its fields as a dict, or False for none."""
        if isinstance(options, RetryPolicy):
            return options
        if options is None or options is True:
            return cls()
        if options is False:
            return cls.never()
        if isinstance(options, Mapping):
            return cls(**_known(cls, options, "retry"))
        raise TypeError(f"retry must be a RetryPolicy, a dict of its fields, or False, not {type(options).__name__}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1): exponential, full jitter."""
        ceiling = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        return ceiling * self.random()

    def delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before the next attempt, or None when waiting is not worth it."""
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_delay else None
        return self.backoff(attempt)

    async def run(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        retry_if: Callable[[BaseException], bool] = is_transient,
        what: str = "call",
    ) -> T:
        """Await ``call()`` until it succeeds, fails for good, or the attempts run out."""
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as error:
                if attempt >= self.max_attempts or not retry_if(error):
                    raise
                wait = self.delay(attempt, error)
                if wait is None:
                    log.info("%s failed (%s); the provider asks to wait longer than %gs: giving up", what, error, self.max_delay)
                    raise
                log.info(
                    "%s failed (%s: %s); retrying in %.2fs (attempt %d of %d)",
                    what,
                    type(error).__name__,
                    error,
                    wait,
                    attempt + 1,
                    self.max_attempts,
                )
            await self.sleep(wait)
            attempt += 1


class CircuitBreaker:
    """Per provider: closed, open after ``failure_threshold`` consecutive outages, half-open after ``reset_timeout``.

    Only outages count (``is_outage``): an answer of any kind, even an error
    such as "no such sandbox", shows the provider is up and closes the count.
    While open, calls fail fast with ``CircuitOpenError``. Once the cool-down
    has passed, one trial call goes through (others still fail fast): its
    success closes the circuit, its failure opens it for another cool-down.
    Used from one event loop (it takes no locks).
    """

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be a whole number of at least 1, not {failure_threshold!r}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must be 0 or more seconds, not {reset_timeout!r}")
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.clock = clock
        self.failures = 0
        self.last_error: str | None = None
        self._opened_at: float | None = None
        self._trial = False

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.provider} {self.state} failures={self.failures}>"

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._trial or self.clock() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def retry_in(self) -> float:
        """Seconds until the next trial call is allowed (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self.clock())

    def before_call(self) -> None:
        """Let a call through, or raise CircuitOpenError; in half-open, the first caller is the trial."""
        if self._opened_at is None:
            return
        if not self._trial and self.clock() - self._opened_at >= self.reset_timeout:
            self._trial = True
            log.info("circuit of provider %r half-open: one trial call", self.provider)
            return
        if self._trial:
            why = "a trial call is checking whether it has recovered"
        else:
            why = f"next trial in {self.retry_in():.1f}s"
        raise CircuitOpenError(
            f"circuit open for provider {self.provider!r} after {self.failures} consecutive infrastructure "
            f"failures (last: {self.last_error}); failing fast, {why}",
            provider=self.provider,
            retry_in=self.retry_in(),
        )

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("circuit of provider %r closed: the trial call succeeded", self.provider)
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def record_failure(self, error: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        if self._trial or self.failures >= self.failure_threshold:
            if self._opened_at is None or self._trial:
                log.warning(
                    "circuit of provider %r open for %gs after %d consecutive failures (last: %s)",
                    self.provider,
                    self.reset_timeout,
                    self.failures,
                    self.last_error,
                )
            self._opened_at = self.clock()
            self._trial = False

    def record_abandoned(self) -> None:
        """A call ended with no verdict (cancelled): a trial slot is freed for the next caller."""
        self._trial = False

    @contextmanager
    def guard(self) -> Iterator[None]:
        """``with breaker.guard(): await call()``: fail fast when open, and count the outcome."""
        self.before_call()
        try:
            yield
        except Exception as error:
            if is_outage(error):
                self.record_failure(error)
            else:
                self.record_success()  # the provider answered
            raise
        except BaseException:
            self.record_abandoned()
            raise
        self.record_success()

    async def call(self, function: Callable[[], Awaitable[T]]) -> T:
        with self.guard():
            return await function()


def breaker_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked keyword options of CircuitBreaker, from ``Sandbox.configure(circuit_breaker=...)``."""
    allowed = ("failure_threshold", "reset_timeout", "clock")
    given = dict(options or {})
    unknown = set(given) - set(allowed)
    if unknown:
        raise TypeError(f"unknown circuit_breaker option(s): {', '.join(sorted(unknown))}; valid: {', '.join(allowed)}")
    CircuitBreaker("check", **given)  # the same validation, now rather than at first use
    return given


def _known(cls: type, options: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = [f.name for f in fields(cls)]
    unknown = set(options) - set(names)
    if unknown:
        raise TypeError(f"unknown {what} option(s): {', '.join(sorted(unknown))}; valid: {', '.join(names)}")
    return dict(options)
