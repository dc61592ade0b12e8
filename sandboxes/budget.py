"""What a run's sandboxes cost, in sandbox-seconds and estimated dollars, and a cap on it.

A run (a pytest session with its xdist workers, a ``sandboxes eval``) keeps
one ``Ledger``: a file that every process of the run updates under a lock.
It holds the sandboxes alive now (their start and price per second) and the
totals of those destroyed. A ``Budget`` caps either total: once it is spent,
no new sandbox is created (``BudgetExhausted``); the sandboxes alive finish
their work, so a run may overshoot by what they spend meanwhile.

Dollars are an estimate from the price table below (the providers' published
per-second prices for the resources a sandbox is given). Override it with
``$SANDBOXES_PRICES`` (``e2b=0.00003,modal=0.00001``: USD per sandbox-second)
or ``Sandbox.configure(prices={"e2b": 0.00003})``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import secrets
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SandboxError
from .leases import process_alive, start_time
from .models import SandboxConfig

PRICES_VARIABLE = "SANDBOXES_PRICES"
LEDGER_PREFIX = "sandboxes-ledger-"
_OWNED_LEDGER = re.compile(re.escape(LEDGER_PREFIX) + r"(\d+)-(\d+)-(\d+)-[0-9a-f]{16}\.json")  # pid namespace, pid, start


@dataclass(frozen=True)
class Price:
    """USD per second of a sandbox: per vCPU and per GiB it is given (its default size unless its config sets one)."""

    cpu: float = 0.0
    memory_gib: float = 0.0
    default_cpus: float = 1.0
    default_memory_gib: float = 1.0
    flat: float | None = None
    """USD per sandbox-second whatever its size (an override)."""

    def per_second(self, config: SandboxConfig) -> float:
        if self.flat is not None:
            return self.flat
        cpus = config.cpus if config.cpus is not None else self.default_cpus
        memory = config.memory_mb / 1024 if config.memory_mb is not None else self.default_memory_gib
        return cpus * self.cpu + memory * self.memory_gib


FREE = Price()
PRICES: dict[str, Price] = {
    # Published per-second prices (checked 2026-12); the sizes are each provider's default sandbox.
    "local": FREE,
    "e2b": Price(cpu=0.000014, memory_gib=0.0000045, default_cpus=2, default_memory_gib=0.5),
    "modal": Price(cpu=0.00003942, memory_gib=0.00000672, default_cpus=0.125, default_memory_gib=0.125),  # per physical core
    "daytona": Price(cpu=0.000014, memory_gib=0.0000045, default_cpus=1, default_memory_gib=1),
}


def prices(overrides: Mapping[str, float] | None = None) -> dict[str, Price]:
    """The table, then ``$SANDBOXES_PRICES``, then ``overrides`` (USD per sandbox-second by provider)."""
    table = dict(PRICES)
    variable = os.environ.get(PRICES_VARIABLE, "").strip()
    for part in filter(None, (p.strip() for p in variable.split(","))):
        name, _, value = part.partition("=")
        table[name.strip()] = Price(flat=_price(value, f"${PRICES_VARIABLE} ({part!r})"))
    for provider, price in (overrides or {}).items():
        table[provider] = Price(flat=_price(price, f"prices[{provider!r}]"))
    return table


def _price(value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]  # anything float() takes; the rest is the caller's mistake
    except (TypeError, ValueError):
        number = -1.0
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: give a price in USD per sandbox-second, a number of 0 or more, such as 0.00003")
    return number


@dataclass(frozen=True)
class Budget:
    """A cap on a run's sandbox-seconds, or on its estimated cost in dollars."""

    seconds: float | None = None
    dollars: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``600s``, ``10m``, ``2h`` (sandbox-seconds) or ``$5``, ``5usd`` (dollars)."""
        cleaned = str(text).strip().lower().replace(" ", "")
        dollars = re.fullmatch(r"\$(\d+(?:\.\d*)?)|(\d+(?:\.\d*)?)(?:\$|usd)", cleaned)
        seconds = re.fullmatch(r"(\d+(?:\.\d*)?)(s|m|h)", cleaned)
        if dollars:
            return cls(dollars=_positive(float(dollars.group(1) or dollars.group(2)), text))
        if seconds:
            return cls(seconds=_positive(float(seconds.group(1)) * {"s": 1, "m": 60, "h": 3600}[seconds.group(2)], text))
        raise ValueError(f"budget {text!r}: give sandbox-seconds (600s, 10m, 2h) or dollars ($5, 5usd)")

    def __str__(self) -> str:
        if self.dollars is not None:
            return f"${self.dollars:g}"
        return f"{self.seconds:g} sandbox-seconds"

    def spent(self, seconds: float, dollars: float) -> bool:
        return (self.seconds is not None and seconds >= self.seconds) or (self.dollars is not None and dollars >= self.dollars)


def _positive(value: float, text: str) -> float:
    if value <= 0:
        raise ValueError(f"budget {text!r}: give more than zero")
    return value


class BudgetExhausted(SandboxError):
    """The run's budget is spent: no new sandbox is created (the caller's limit, not the provider's failure)."""


@dataclass
class Usage:
    """One provider's share of a run: sandboxes created, sandbox-seconds and estimated dollars."""

    sandboxes: int = 0
    seconds: float = 0.0
    dollars: float = 0.0

    def describe(self, provider: str) -> str:
        return f"{provider}: {self.sandboxes} sandbox(es), {spent(self.seconds, self.dollars)}"


def spent(seconds: float, dollars: float) -> str:
    """``12.5 sandbox-seconds, about $0.0004`` (no dollars where nothing is charged)."""
    return f"{seconds:.1f} sandbox-seconds" + (f", about {dollar_amount(dollars)}" if dollars else "")


def dollar_amount(dollars: float) -> str:
    """Cents for dollars, and the digits that matter for a short run's fractions of a cent."""
    return f"${dollars:,.2f}" if dollars >= 1 else f"${dollars:.4f}" if dollars >= 0.01 else f"${dollars:.6f}"


class Ledger:
    """A run's sandbox-seconds and estimated cost, in one file shared (under ``flock``) by its processes."""

    def __init__(self, path: str | os.PathLike[str], budget: Budget | None = None, price_overrides: Mapping[str, float] | None = None) -> None:
        self.path = Path(path)
        self.budget = budget
        self.price_overrides = price_overrides  # read at each creation: Sandbox.configure(prices=...) may come later

    @classmethod
    def temporary(cls, budget: Budget | None = None, price_overrides: Mapping[str, float] | None = None) -> Ledger:
        """A new run's ledger, its file removed with it (its processes get its ``path``); nothing is
        written until the run's first sandbox, so a session that makes none leaves no trace."""
        scratch, namespace, me = _scratch_dir(), _pid_namespace(), os.getpid()
        _remove_dead_ledgers(scratch, namespace)
        path = scratch / f"{LEDGER_PREFIX}{namespace}-{me}-{start_time(me)}-{secrets.token_hex(8)}.json"
        ledger = cls(path, budget, price_overrides)
        weakref.finalize(ledger, _remove, path)
        return ledger

    def price(self, provider: str, config: SandboxConfig) -> float:
        """USD per second of a sandbox made from ``config``; a ValueError when a dollar budget meets an unpriced provider."""
        known = prices(self.price_overrides).get(provider)
        if known is None:
            if self.budget is not None and self.budget.dollars is not None:
                raise ValueError(
                    f"no price for provider {provider!r}, so a budget in dollars cannot be kept: set ${PRICES_VARIABLE}={provider}=<USD per sandbox-second>"
                )
            return 0.0
        return known.per_second(config)

    def check(self) -> None:
        """``BudgetExhausted`` when the budget is spent (the sandboxes alive now count up to this moment)."""
        if self.budget is None:
            return
        with self._state() as state:
            usage = _totals(state, time.time())
        seconds = sum(u.seconds for u in usage.values())
        dollars = sum(u.dollars for u in usage.values())
        if self.budget.spent(seconds, dollars):
            raise BudgetExhausted(f"the run's budget of {self.budget} is spent ({spent(seconds, dollars)}): no new sandbox is created")

    def opened(self, provider: str, sandbox_id: str, per_second: float) -> None:
        with self._state(write=True) as state:
            state["open"][f"{provider}/{sandbox_id}"] = [provider, time.time(), per_second]

    def closed(self, provider: str, sandbox_id: str) -> float | None:
        """The seconds the sandbox lived, or None when the ledger did not know it (made before the run)."""
        with self._state(write=True) as state:
            entry = state["open"].pop(f"{provider}/{sandbox_id}", None)
            if entry is None:
                return None
            _, started, per_second = entry
            lived = max(0.0, time.time() - float(started))
            done = state["closed"].setdefault(provider, [0, 0.0, 0.0])
            done[0] += 1
            done[1] += lived
            done[2] += lived * per_second
        return lived

    def summary_lines(self) -> list[str]:
        """Sandbox-seconds and estimated cost by provider, then the budget (for a run's summary)."""
        usage = self.usage()
        lines = [entry.describe(name) for name, entry in sorted(usage.items())]
        if self.budget is not None:
            seconds, dollars = sum(u.seconds for u in usage.values()), sum(u.dollars for u in usage.values())
            reached = " (reached: no sandbox was created past it)" if self.budget.spent(seconds, dollars) else ""
            lines.append(f"budget {self.budget}: spent {spent(seconds, dollars)}{reached}")
        return lines

    def usage(self) -> dict[str, Usage]:
        """By provider: the destroyed sandboxes, and those alive counted up to now."""
        with self._state() as state:
            return _totals(state, time.time())

    @contextlib.contextmanager
    def _state(self, write: bool = False) -> Iterator[dict[str, Any]]:
        """The ledger, locked; made at the first write (made again, from nothing, if someone deleted it)."""
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if write else 0), 0o600)
        except FileNotFoundError:
            if write:
                raise OSError(f"the run's ledger {self.path} cannot be written: its directory is gone") from None
            yield {"open": {}, "closed": {}}  # nothing recorded yet
            return
        with os.fdopen(fd, "r+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            text = handle.read()
            state: dict[str, Any] = json.loads(text) if text else {}
            state.setdefault("open", {})
            state.setdefault("closed", {})
            yield state
            if write:
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(state))


def _scratch_dir() -> Path:
    """Where a run's ledger goes: ``/dev/shm`` (memory) where there is one we may write, else the
    temporary directory. It is rewritten at every creation and destroy: on a disk's journal
    that cost each sandbox some 0.5 ms, in memory 0.1 ms."""
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK | os.X_OK):
        return memory
    return Path(tempfile.gettempdir())


def _totals(state: Mapping[str, Any], now: float) -> dict[str, Usage]:
    totals: dict[str, Usage] = {}
    for provider, (count, seconds, dollars) in state["closed"].items():
        totals[provider] = Usage(count, seconds, dollars)
    for provider, started, per_second in state["open"].values():
        usage = totals.setdefault(provider, Usage())
        lived = max(0.0, now - started)
        usage.sandboxes += 1
        usage.seconds += lived
        usage.dollars += lived * per_second
    return totals


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError, PermissionError):  # gone already, or another user's
        path.unlink()


def _remove_dead_ledgers(directory: Path, namespace: int) -> None:
    """The ledgers of runs whose process is gone: killed, it never ran the finalizer that removes its own.
    Its name says which process made it (its pid namespace, pid and start time: a pid means nothing
    in another namespace, such as a container's that shares this directory); one of a live run, of
    another namespace, or of unknown making, stays. ``namespace``: this process's (0: unknown, none is judged)."""
    for path in directory.glob(LEDGER_PREFIX + "*.json"):
        owner = _OWNED_LEDGER.fullmatch(path.name)
        if owner and namespace and int(owner[1]) == namespace and not process_alive(int(owner[2]), owner[3]):
            _remove(path)


def _pid_namespace() -> int:
    """This process's pid namespace (its inode), 0 if unreadable."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0
