"""Run leases: how the next run, or ``sandboxes gc``, finds what a killed run left billing.

While a run lasts (a pytest session, a ``sandboxes eval``) its processes
hold a lease (``held(run_id)``), and every sandbox they create carries it in
reserved labels: the owner (host, pid, and the pid's start time, so that a
reused pid is not taken for it), the run's id, and when the lease expires
(the sandbox's lifetime, which the provider also enforces). A sandbox is
stale when its lease expired, or when its owner ran on this host and is
gone; ``sweep`` destroys the stale ones. A sandbox made outside a run
(``sandboxes run --keep``, ``Sandbox.create()`` from a script, a pytest
session with ``--sandbox-keep``) carries no lease and is never swept this way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from .driver import RESERVED_LABEL_PREFIX
from .errors import SandboxNotFoundError

if TYPE_CHECKING:
    from .models import SandboxInfo
    from .provider import SandboxProvider

log = logging.getLogger("sandboxes")
LEASE_LABEL = RESERVED_LABEL_PREFIX + "lease"
"""``<host> <pid> <start time of pid> <run id>``."""
EXPIRES_LABEL = RESERVED_LABEL_PREFIX + "lease-expires"
"""Unix seconds after which the lease holds nothing, whoever owns it."""
MARGIN_SECONDS = 60.0
"""Added to a lease's expiry: the provider's own clock and the creation's latency."""

_runs: list[str] = []


def active() -> str | None:
    """The run this process works for now, if any."""
    return _runs[-1] if _runs else None


@contextlib.contextmanager
def held(run_id: str) -> Iterator[None]:
    """Sandboxes this process creates meanwhile carry a lease of ``run_id``."""
    begin(run_id)
    try:
        yield
    finally:
        end(run_id)


def begin(run_id: str) -> None:
    _runs.append(run_id)


def end(run_id: str) -> None:
    with contextlib.suppress(ValueError):
        _runs.remove(run_id)


def labels(lifetime: float) -> dict[str, str]:
    """The reserved labels of a sandbox created now with this lifetime; none outside a run."""
    run = active()
    if run is None:
        return {}
    owner = f"{socket.gethostname()} {os.getpid()} {start_time(os.getpid())} {run}"
    return {LEASE_LABEL: owner, EXPIRES_LABEL: str(int(time.time() + lifetime + MARGIN_SECONDS))}


def stale(labels: Mapping[str, str], now: float | None = None) -> str | None:
    """Why a sandbox with these labels is stale, or None (no lease, or one still held)."""
    lease = labels.get(LEASE_LABEL)
    if not lease:
        return None
    now = time.time() if now is None else now
    try:
        expires = float(labels.get(EXPIRES_LABEL, ""))
    except ValueError:
        expires = None
    if expires is not None and now > expires:
        return "its run's lease expired"
    host, pid, start, run = [*lease.split(" "), "", "", "", ""][:4]
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid), start):
        return f"run {run}'s process {pid} is gone"
    return None


async def stale_sandboxes(provider: SandboxProvider) -> list[tuple[SandboxInfo, str]]:
    """The provider's stale sandboxes, each with why."""
    found = []
    for info in await provider.driver.list({}):  # the driver's list: with the reserved labels
        why = stale(info.labels)
        if why is not None:
            found.append((info, why))
    return found


def run_of(labels: Mapping[str, str]) -> str | None:
    """The id of the run whose lease a sandbox carries, if any."""
    lease = labels.get(LEASE_LABEL, "").split(" ")
    return lease[3] if len(lease) > 3 else None


async def sweep(provider: SandboxProvider, run_id: str | None = None) -> list[str]:
    """Destroy the provider's stale sandboxes, or with ``run_id`` every sandbox of that run (at its end,
    what a lost answer left there); the ids destroyed."""
    if run_id is None:
        found = await stale_sandboxes(provider)
    else:
        found = [(info, f"run {run_id} ended") for info in await provider.driver.list({}) if run_of(info.labels) == run_id]
    destroyed = []
    for info, why in found:
        try:
            existed = await provider.destroy_sandbox(info.id)
        except SandboxNotFoundError:
            continue  # gone meanwhile (another process swept it)
        if existed:
            log.info("%s: destroyed sandbox %s: %s", provider.name, info.id, why)
            destroyed.append(info.id)
    return destroyed


def describe_swept(provider: str, count: int) -> str:
    """The summary line of a sweep that destroyed ``count`` sandboxes."""
    return f"{provider}: swept {count} sandbox(es) left by a killed run or worker (their process gone, or their lease expired)"


def process_alive(pid: int, start: str) -> bool:
    """Whether process ``pid``, started at ``start`` (``start_time``), still runs: not a later one with its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: alive
    now = start_time(pid)
    return not start or not now or now == start  # unreadable either time: taken as alive


def start_time(pid: int) -> str:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22); "" if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return fields[19].decode() if len(fields) > 19 else ""
