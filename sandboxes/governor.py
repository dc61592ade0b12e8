"""One concurrency and rate governor per provider, shared by every process of this user on the machine.

A provider's caps are per account, and an eval runs as many processes
(pytest-xdist workers, several ``sandboxes eval``): a semaphore per process
lets them stampede. The governor keeps its state in files, in
``<cache>/governor/<provider>/`` (``_cache.cache_root``), so that all of
them share it:

- ``alive.N``: one file per sandbox allowed alive at once. A process holds an
  exclusive ``flock`` on one for each sandbox it created, until it destroys
  it. The kernel drops the lock of a process that dies, however it dies: a
  killed worker's slots come back at once.
- ``creating.N``: the same for creations in flight.
- ``state``: the shared part that is not a slot (under ``state.lock``): the
  concurrency the provider allows now (AIMD: halved by a 429 or a
  resource-limit answer from any process, added back by one slot per round
  of successes, up to what was alive at the last refusal for
  ``CEILING_SECONDS``), the time before which nobody creates (a Retry-After,
  for every process, not only the one that got it), and the next free moment
  of the creation rate.

Waiting for a slot is not an error; waiting past ``acquire_timeout`` is
``AcquireTimeout`` (a ``ProviderError``: an ``infra_error`` in an eval).
Descriptors are close-on-exec: a program a process starts never holds a
slot; a child forked without exec shares its parent's until both close them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import json
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from . import _doorbell
from ._cache import cache_root
from .errors import ProviderError

RECHECK_SECONDS = 0.25
"""The longest a waiter sleeps between looks at the slots: it wakes at once when a slot is given back
(the directory's doorbell rings), but a process killed while holding one rings nothing."""
DECREASE_WINDOW_SECONDS = 1.0
"""Throttle answers within this long of a decrease are the same burst: the concurrency is halved once."""
FIRST_PAUSE_SECONDS, MAX_PAUSE_SECONDS = 0.25, 10.0
"""Every process's pause after a refusal that names no Retry-After: doubled for each one in a row."""
MADE = b"1"
"""What a held alive slot's file holds once its sandbox is made (empty while the creation is in flight)."""
CEILING_SECONDS = 30.0
"""How long the concurrency grows back only up to what was alive at the last refusal; then it probes past it."""
RATE_HEADROOM = 0.9
"""The share of a provider's published creation rate that starts are spaced for. At the full rate,
the provider's bucket refills exactly as fast as it is drawn: one creation it counts and we do not
(sent again after its answer was lost, a late packet) would then lead to refusals."""
UNLIMITED = 1000
"""The concurrency of a provider with no cap of its own: only throttling lowers it."""


DIRECTORY_VARIABLE = "SANDBOXES_GOVERNOR_DIR"
LIMIT_FIELDS = ("alive", "creating", "per_second", "acquire_timeout")


def governor_root() -> Path:
    """``$SANDBOXES_GOVERNOR_DIR``, else ``<cache>/governor``: the processes that share it share the limits."""
    return Path(os.environ.get(DIRECTORY_VARIABLE) or cache_root() / "governor")


_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("sandboxes_governor_holding", default=False)


@contextlib.contextmanager
def already_holding() -> Iterator[None]:
    """Creations meanwhile are for a consumer that already holds a sandbox and waits for one more
    (a test that holds its ``sandbox`` and judges again in a fresh one). Only the hard ``alive``
    cap holds them back, not the concurrency lowered by throttling: holders waiting for each
    other below it would wait forever. A refusal from the provider is still absorbed by waiting."""
    token = _HOLDING.set(True)
    try:
        yield
    finally:
        _HOLDING.reset(token)


class AcquireTimeout(ProviderError):
    """No slot came free within ``acquire_timeout``: the provider is saturated (not the caller's mistake)."""


@dataclass(frozen=True)
class Limits:
    """A provider's limits; None: no such limit."""

    alive: int | None = None
    """Sandboxes alive at once (E2B's base plan: 20)."""
    creating: int | None = None
    """Creations in flight at once."""
    per_second: float | None = None
    """Creations started per second (Modal's: about 5)."""
    acquire_timeout: float = 600.0
    """The longest a creation waits for a slot before ``AcquireTimeout``."""

    def __post_init__(self) -> None:
        for name in ("alive", "creating"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"limits: {name} must be a whole number of sandboxes, at least 1 (got {value!r})")
        if self.per_second is not None and not (isinstance(self.per_second, int | float) and self.per_second > 0):
            raise ValueError(f"limits: per_second must be a number of creations per second above 0 (got {self.per_second!r})")
        if not (isinstance(self.acquire_timeout, int | float) and self.acquire_timeout > 0):
            raise ValueError(f"limits: acquire_timeout must be seconds above 0 (got {self.acquire_timeout!r})")

    def changed(self, changes: Mapping[str, Any]) -> Limits:
        """These limits with ``changes`` (a dict of their fields), checked."""
        unknown = sorted(set(changes) - set(LIMIT_FIELDS))
        if unknown:
            raise TypeError(f"unknown limit {', '.join(map(repr, unknown))}: the limits are {', '.join(LIMIT_FIELDS)}")
        return dataclasses.replace(self, **changes)


@dataclass
class Counters:
    """What this process's governor saw, for the run's summary."""

    waits: int = 0
    """Creations that waited for a slot, a pause or the rate."""
    waited_seconds: list[float] = field(default_factory=list)
    throttled: int = 0
    """Refusals for load (429, resource limit reached) absorbed by waiting."""
    peak_alive: int = 0
    """The most sandboxes all processes held alive at once, seen at this process's creations."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another process's counters (an xdist worker's) to these."""
        self.waits += int(other.get("waits", 0))
        self.waited_seconds.extend(float(value) for value in other.get("waited_seconds", ()))
        self.throttled += int(other.get("throttled", 0))
        self.peak_alive = max(self.peak_alive, int(other.get("peak_alive", 0)))

    def describe(self, provider: str) -> str | None:
        """One line for a run's summary; None when the governor never had to act."""
        if not (self.waits or self.throttled or self.peak_alive):
            return None
        parts = [f"peak {self.peak_alive} alive at once"]
        if self.waits:
            ordered = sorted(self.waited_seconds)
            p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0.0
            parts.append(f"{self.waits} waited for a slot (p95 {p95:.2f} s)")
        if self.throttled:
            parts.append(f"{self.throttled} refusal(s) for load (429, resource limit) absorbed")
        return f"{provider} governor: " + ", ".join(parts)


@dataclass
class Ticket:
    """The slots one creation holds: ``alive`` until its sandbox is released, ``creating`` until it is made."""

    alive: int | None
    creating: int | None
    directory: Path | None = None
    """Where the doorbell is rung when a slot is given back."""

    def created(self) -> None:
        """The creation is over (made or failed): its in-flight slot is free."""
        if self.creating is not None:
            _close(self.creating)
            self.creating = None
            self._ring()

    def release(self) -> None:
        """Everything it holds is free (its sandbox is destroyed, or was never made)."""
        self.created()
        if self.alive is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.alive, 0)  # unmarked while still locked: no one counts a sandbox that is gone
            _close(self.alive)
            self.alive = None
            self._ring()

    def _ring(self) -> None:
        if self.directory is not None:
            _doorbell.ring(self.directory)


class Governor:
    """The governor of one provider (see the module's docstring); one object per process is enough."""

    def __init__(self, provider: str, limits: Limits, directory: Path | None = None) -> None:
        self.provider = provider
        self.limits = limits
        self.directory = directory or governor_root() / provider
        self.counters = Counters()
        self._held: dict[str, Ticket] = {}
        self._doorbell: _doorbell.Doorbell | None = None
        self._queues: dict[object, anyio.Lock] = {}  # per event loop: its tasks ask the files one at a time

    # -- creating -------------------------------------------------------------------------
    async def acquire(self, deadline: float | None = None) -> Ticket:
        """Slots for one creation, once the shared concurrency, pause and rate allow it.

        ``deadline`` (``time.monotonic()``) defaults to ``acquire_timeout`` from now."""
        started = time.monotonic()
        deadline = started + self.limits.acquire_timeout if deadline is None else deadline
        if _HOLDING.get():  # never queued behind a waiter that the concurrency holds back
            return await self._acquire(started, deadline)
        async with self._queue():  # the first in line waits at the doorbell; the others wait for it
            return await self._acquire(started, deadline)

    async def _acquire(self, started: float, deadline: float) -> Ticket:
        place = None if _HOLDING.get() else self._join_line()
        try:
            return await self._wait_in_line(place, started, deadline)
        finally:
            if place is not None:
                self._leave_line(place)

    async def _wait_in_line(self, place: tuple[int, int] | None, started: float, deadline: float) -> Ticket:
        waited = False
        while True:
            now = time.time()
            with self._state() as state:  # one creation decides at a time: counting and taking are one step
                pause = state["paused_until"] - now
                ticket = None if pause > 0 or not self._first(place) else self._try_slots(state)
                start = now
                if ticket is not None and self.limits.per_second is not None:  # the shared rate: a start each 1/rate s
                    start = max(now, state["next_creation"])
                    state["next_creation"] = start + 1 / (self.limits.per_second * RATE_HEADROOM)
                described = self._describe(state)
            if ticket is not None:
                if start > now:
                    try:
                        await anyio.sleep(start - now)
                    except BaseException:  # cancelled while waiting for its moment: its slots go back
                        ticket.release()
                        raise
                if waited or start > now:
                    self.counters.waits += 1
                    self.counters.waited_seconds.append(time.monotonic() - started)
                return ticket
            waited = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise AcquireTimeout(
                    f"no {self.provider} sandbox slot came free within {self.limits.acquire_timeout:g} s "
                    f"(limits: {described}); raise acquire_timeout or lower the concurrency",
                    provider=self.provider,
                )
            await self._bell().wait(min(left, max(pause, RECHECK_SECONDS)))

    def _join_line(self) -> tuple[int, int]:
        """A place in the line of every process's waiters (first come, first served): its number, and
        the descriptor holding the lock of ``wait.<number>`` (dropped by the kernel if this process dies)."""
        with self._state() as state:
            number = int(state["next_number"])
            state["next_number"] = number + 1
            fd = os.open(self.directory / f"wait.{number}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        return number, fd

    def _first(self, place: tuple[int, int] | None) -> bool:
        """Whether no live waiter came before ``place`` (None: a holder's creation, never in line)."""
        if place is None:
            return True
        for path in self.directory.glob("wait.*"):
            number = path.name.partition(".")[2]
            if not number.isdigit() or int(number) >= place[0]:
                continue
            if _held_size(path) is not None:
                return False  # an earlier waiter, alive
            with contextlib.suppress(OSError):
                path.unlink()  # a waiter that died in line
        return True

    def _leave_line(self, place: tuple[int, int]) -> None:
        with contextlib.suppress(OSError):
            (self.directory / f"wait.{place[0]}").unlink()
        _close(place[1])
        _doorbell.ring(self.directory)  # the next in line may find a slot free now

    def _queue(self) -> anyio.Lock:
        loop = anyio.lowlevel.current_token()
        if loop not in self._queues:
            self._queues = {loop: anyio.Lock()}  # a lock of a finished event loop is of no use
        return self._queues[loop]

    def close(self) -> None:
        """Let go of the doorbell (the slots of sandboxes still alive stay held)."""
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None

    def _bell(self) -> _doorbell.Doorbell:
        if self._doorbell is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._doorbell = _doorbell.Doorbell(self.directory)
        return self._doorbell

    def keep(self, sandbox_id: str, ticket: Ticket) -> None:
        """The creation made ``sandbox_id``: its alive slot is held until ``release(sandbox_id)``."""
        ticket.created()
        if ticket.alive is not None:
            os.pwrite(ticket.alive, MADE, 0)  # marked: a sandbox, no longer a creation in flight
        self._held[sandbox_id] = ticket
        self.counters.peak_alive = max(self.counters.peak_alive, self.alive(made=True))

    def alive(self, *, made: bool = False) -> int:
        """How many alive slots all processes hold now: sandboxes made or being made (``made``: made only)."""
        held = 0
        for path in self.directory.glob("alive.*"):
            size = _held_size(path)
            if size is not None:
                held += not made or size > 0
        return held

    def release(self, sandbox_id: str) -> None:
        """``sandbox_id`` is destroyed: its slot is free (nothing when this process holds none for it)."""
        ticket = self._held.pop(sandbox_id, None)
        if ticket is not None:
            ticket.release()

    # -- what the provider answered ---------------------------------------------------------
    def throttled(self, retry_after: float | None = None) -> None:
        """A 429 or a resource-limit answer: every process slows down (halved, and paused for ``retry_after``)."""
        self.counters.throttled += 1
        now = time.time()
        with self._state() as state:
            if now - state["decreased_at"] > DECREASE_WINDOW_SECONDS:
                # From what is alive now, when that is less than allowed: the provider's real cap
                # (shared with other machines, or a lower plan) was met there, not at the limit.
                alive = max(1.0, float(self.alive()))
                state["concurrency"] = max(1.0, min(state["concurrency"], alive) / 2)
                state["decreased_at"] = now
            # Without a Retry-After, a pause that doubles with each refusal in a row (with jitter), so
            # that a provider refusing at any concurrency is not asked again at once, over and over.
            strikes = state["strikes"] = state["strikes"] + 1
            pause = retry_after if retry_after else min(MAX_PAUSE_SECONDS, FIRST_PAUSE_SECONDS * 2 ** (strikes - 1)) * random.uniform(0.5, 1.0)
            state["paused_until"] = max(state["paused_until"], now + pause)
            # The provider's cap is at most what was made when it refused: growing back stops there
            # for a while, instead of probing past it and being refused again and again.
            state["ceiling"] = max(1.0, float(self.alive(made=True)))
            state["ceiling_until"] = now + CEILING_SECONDS

    def succeeded(self) -> None:
        """A creation went through: the concurrency grows back, a slot per round of successes."""
        with self._state() as state:
            state["strikes"] = 0.0
            limit = float(self._cap())
            if time.time() < state["ceiling_until"]:
                limit = min(limit, state["ceiling"])
            if state["concurrency"] < limit:
                before = math.floor(state["concurrency"])
                state["concurrency"] = min(limit, state["concurrency"] + 1 / state["concurrency"])
                if math.floor(state["concurrency"]) > before:
                    _doorbell.ring(self.directory)  # one more may start now

    def concurrency(self) -> float:
        """The concurrency all processes allow now."""
        return float(self._read()["concurrency"])

    # -- the files ----------------------------------------------------------------------------
    def _cap(self) -> int:
        return self.limits.alive or UNLIMITED

    def _try_slots(self, state: dict[str, float]) -> Ticket | None:
        """Slots, when fewer are alive than the shared concurrency allows (called under the state's lock)."""
        allowed = self._cap() if _HOLDING.get() else min(self._cap(), math.floor(state["concurrency"]))
        if self.alive() >= allowed:
            return None
        alive = _take_any(self.directory, "alive", self._cap())
        if alive is None:
            return None
        if self.limits.creating is None:
            return Ticket(alive, None, self.directory)
        creating = _take_any(self.directory, "creating", self.limits.creating)
        if creating is None:
            _close(alive)
            return None
        return Ticket(alive, creating, self.directory)

    def _fresh(self) -> dict[str, float]:
        return {
            **{"concurrency": float(self._cap()), "paused_until": 0.0, "next_creation": 0.0, "decreased_at": 0.0},
            **{"strikes": 0.0, "ceiling": 0.0, "ceiling_until": 0.0, "next_number": 0.0},
        }

    def _read(self) -> dict[str, float]:
        with self._state() as state:
            return dict(state)

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, float]]:
        """The shared state, read and written back under its lock (held for microseconds)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.directory / "state.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.directory / "state"
            state = self._fresh()
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads(path.read_text())
                state.update({key: float(saved[key]) for key in state if isinstance(saved.get(key), int | float)})
            state["concurrency"] = min(max(state["concurrency"], 1.0), float(self._cap()))
            before = dict(state)
            yield state
            if state != before:
                temporary = path.with_name(f"state.{os.getpid()}")
                temporary.write_text(json.dumps(state))
                os.replace(temporary, path)
        finally:
            os.close(lock)  # the lock goes with it

    def _describe(self, state: dict[str, float]) -> str:
        alive = f"alive {self.limits.alive or 'unlimited'}"
        if state["concurrency"] < self._cap():
            alive += f" (now {math.floor(state['concurrency'])} after throttling)"
        parts = [alive]
        if self.limits.creating is not None:
            parts.append(f"creating {self.limits.creating}")
        if self.limits.per_second is not None:
            parts.append(f"{self.limits.per_second:g}/s")
        return ", ".join(parts)


def _take_any(directory: Path, kind: str, count: int) -> int | None:
    """A descriptor holding the lock of one free ``kind.N`` (N below ``count``), or None when all are held."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index in random.sample(range(count), count) if count <= 64 else range(count):
        fd = os.open(directory / f"{kind}.{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd
    return None


def _held_size(path: Path) -> int | None:
    """The size of ``path`` while a process holds its lock; None when it is free or gone.

    Opened read-only: closing it rings no one's doorbell watch."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
    return None


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
