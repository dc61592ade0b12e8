"""Run leases: a sandbox tells which process of which run holds it, until when; a stale one is swept.

The end-to-end attacks (a run killed with SIGKILL, then the next run or
`sandboxes gc`) are in tests/cli/test_cli_emulated.py and tests/plugin/test_leases_swept.py.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from sandboxes import leases


@pytest.fixture(autouse=True)
def _outside_this_pytest_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "_runs", [])  # the plugin holds a lease for this very session


def test_outside_a_run_a_sandbox_carries_no_lease() -> None:
    assert leases.active() is None
    assert leases.labels(600) == {}


def test_inside_a_run_the_lease_names_this_process_and_expires_with_the_lifetime() -> None:
    with leases.held("run-1"):
        labels = leases.labels(600)
    assert leases.active() is None
    host, pid, start, run = labels[leases.LEASE_LABEL].split(" ")
    assert (host, int(pid), run) == (socket.gethostname(), __import__("os").getpid(), "run-1") and start.isdigit()
    assert abs(float(labels[leases.EXPIRES_LABEL]) - (time.time() + 600 + leases.MARGIN_SECONDS)) < 5
    assert leases.stale(labels) is None  # held: this process is alive


def _lease_of(pid: int, start: str, *, host: str | None = None, expires: float | None = None) -> dict[str, str]:
    return {
        leases.LEASE_LABEL: f"{host or socket.gethostname()} {pid} {start} run-2",
        leases.EXPIRES_LABEL: str(int(expires if expires is not None else time.time() + 3600)),
    }


def test_a_lease_whose_process_is_gone_is_stale() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = leases.start_time(child.pid)
    labels = _lease_of(child.pid, start)
    assert leases.stale(labels) is None
    child.kill()
    child.wait()
    assert leases.stale(labels) == f"run run-2's process {child.pid} is gone"


def test_a_reused_pid_does_not_keep_a_lease() -> None:
    # The pid is alive (this process), but it started at another time: not the lease's owner.
    labels = _lease_of(__import__("os").getpid(), "1")
    assert leases.stale(labels) is not None


@pytest.mark.parametrize(("expires_in", "stale"), [(-1, True), (3600, False)])
def test_another_hosts_lease_counts_only_by_its_expiry(expires_in: float, stale: bool) -> None:
    labels = _lease_of(1, "1", host="another-host", expires=time.time() + expires_in)
    assert (leases.stale(labels) == "its run's lease expired") is stale
    if not stale:
        assert leases.stale(labels) is None


def test_a_sandbox_with_no_lease_or_a_garbled_one_is_never_swept() -> None:
    assert leases.stale({}) is None
    assert leases.stale({"run": "x"}) is None
    assert leases.stale({leases.LEASE_LABEL: "garbled", leases.EXPIRES_LABEL: "soon"}) is None
