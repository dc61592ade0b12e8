"""What one pytest process knows: run id, worker, live providers, counters, kept sandboxes."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandboxes import leases, specs, sync
from sandboxes.budget import Ledger
from sandboxes.cassette import CassetteStats
from sandboxes.errors import ProviderUnavailable, SandboxError
from sandboxes.governor import Counters
from sandboxes.manager import current_manager, get_manager, provider_class
from sandboxes.provider import SandboxProvider

from .options import Settings

RUN_LABEL = "sandboxes_run"
HOST_LABEL = "sandboxes_host"
WORKER_LABEL = "sandboxes_worker"


def unavailable_reason(name: str) -> str | None:
    """Why a provider cannot run here (SDK, credentials, bubblewrap), or None when it can."""
    entry = specs.spec(name)
    if not entry.has_credentials():  # checked first: no SDK import needed
        return f"provider {name!r} has no credentials: {entry.credential_hint or 'see its documentation'}"
    try:
        provider_class(name)
    except ProviderUnavailable as error:
        return str(error)
    if name == "local":
        from sandboxes.providers.local.layout import find_bwrap

        try:
            find_bwrap()
        except ProviderUnavailable as error:
            return str(error)
    return None


@dataclass
class SessionState:
    settings: Settings
    run_id: str
    worker: str
    providers: dict[str, SandboxProvider] = field(default_factory=dict)
    stats: dict[str, CassetteStats] = field(default_factory=dict)
    kept: list[tuple[str, str]] = field(default_factory=list)
    swept: dict[str, int] = field(default_factory=dict)
    left_behind: dict[str, int] = field(default_factory=dict)
    crashed_workers: list[str] = field(default_factory=list)
    used: bool = False
    samples: dict[str, list[str]] = field(default_factory=dict)
    """task id -> the verdicts of its judged samples (tests that carry a task), for pass@k."""
    governors: dict[str, Counters] = field(default_factory=dict)
    """provider -> what its governor did (waits, refusals absorbed, peak alive), every process's added."""
    leaked: dict[str, int] = field(default_factory=dict)
    """provider -> sandboxes of earlier runs (their process gone, or their lease expired) swept at first use."""
    ledger: Ledger | None = None
    """The run's sandbox-seconds and cost, one file for every worker (``metering``)."""
    _reasons: dict[str, str | None] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        # The host, so `sandboxes gc` finds what a killed run left; under the
        # reserved prefix, so cassettes recorded on one machine replay on another.
        return {RUN_LABEL: self.run_id, WORKER_LABEL: self.worker, HOST_LABEL: socket.gethostname()}

    def reason(self, name: str) -> str | None:
        if name not in self._reasons:
            self._reasons[name] = unavailable_reason(name)
        return self._reasons[name]

    def stats_for(self, name: str) -> CassetteStats:
        self.used = True
        return self.stats.setdefault(name, CassetteStats())

    def provider(self, name: str) -> SandboxProvider:
        """The live provider of this process (one per name), built on first use.

        It comes from the library's Manager, so the tests get the retry
        policy, the circuit breaker and whatever ``Sandbox.configure`` set.
        """
        if name not in self.providers:
            reason = self.reason(name)
            if reason:
                raise ProviderUnavailable(reason, provider=name)

            self.providers[name] = get_manager().get_provider(name)
            self._sweep_earlier_runs(name)
        return self.providers[name]

    def _sweep_earlier_runs(self, name: str) -> None:
        """At this process's first live use of a provider: what killed runs left billing there goes."""
        try:
            destroyed = sync.portal().call(leases.sweep, self.providers[name])
        except SandboxError as error:
            print(f"sandboxes: could not look for sandboxes earlier runs left on {name}: {error}")
            return
        if destroyed:
            self.leaked[name] = self.leaked.get(name, 0) + len(destroyed)

    def collect_governors(self) -> None:
        """This process's governor counters, into the session's."""
        manager = current_manager()
        for name, governor in (manager.governors if manager is not None else {}).items():
            self.governors.setdefault(name, Counters()).merge(governor.counters.as_dict())
            governor.counters = Counters()  # counted once

    def export(self) -> dict[str, Any]:
        """What a worker sends to the controller (plain data for execnet)."""
        self.collect_governors()
        return {
            "stats": {name: s.as_dict() for name, s in self.stats.items()},
            "kept": [list(k) for k in self.kept],
            "providers": sorted(self.providers),
            "samples": self.samples,
            "governors": {name: counters.as_dict() for name, counters in self.governors.items()},
            "leaked": self.leaked,
            "swept": self.swept,
            "left_behind": self.left_behind,
        }

    def merge(self, data: dict[str, Any]) -> None:
        for name, stats in data.get("stats", {}).items():
            self.stats_for(name).merge(stats)
        for name, counters in data.get("governors", {}).items():
            self.governors.setdefault(name, Counters()).merge(counters)
        for name, count in data.get("leaked", {}).items():
            self.leaked[name] = self.leaked.get(name, 0) + count
        for name, count in data.get("swept", {}).items():
            self.swept[name] = self.swept.get(name, 0) + count
        for name, count in data.get("left_behind", {}).items():  # -1: that worker could not look
            known = self.left_behind.get(name, 0)
            self.left_behind[name] = -1 if -1 in (known, count) else known + count
        self.kept.extend(tuple(k) for k in data.get("kept", ()))
        for task, verdicts in data.get("samples", {}).items():
            self.samples.setdefault(task, []).extend(verdicts)


def new_run_id() -> str:
    return f"{os.getpid():x}{secrets.token_hex(4)}"


STATE = pytest.StashKey[SessionState]()
