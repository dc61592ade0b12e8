"""A pytest run killed with SIGKILL leaves nothing billing once the next run starts (E2B emulated, real SDK)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.emulators.e2b import E2BEmulator, open_emulator

KILLED = """
import os, signal

def test_dies_holding_sandboxes(sandbox_factory):
    for _ in range(2):
        sandbox_factory()
    os.kill(os.getpid(), signal.SIGKILL)  # no teardown, no session-end sweep
"""

NEXT = """
def test_next(sandbox):
    assert sandbox.execute("echo ok").stdout == "ok\\n"
"""


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[E2BEmulator]:
    with open_emulator() as running:
        for name, value in running.environ().items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.mark.parametrize("keep", [False, True])
def test_the_next_run_sweeps_what_a_killed_run_left(pytester: pytest.Pytester, emulator: E2BEmulator, keep: bool) -> None:
    pytester.makepyfile(test_killed=KILLED)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sandbox-provider=e2b", *(["--sandbox-keep"] if keep else []))
    assert first.ret not in (0, 1)  # killed
    left = set(emulator.sandboxes)
    assert len(left) == 2
    pytester.makepyfile(test_killed="")
    pytester.makepyfile(test_next=NEXT)
    second = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sandbox-provider=e2b")
    second.assert_outcomes(passed=1)
    if keep:  # --sandbox-keep: any of its sandboxes may be one kept on purpose, so none carries a lease
        assert set(emulator.sandboxes) == left
        assert "swept" not in second.stdout.str()
        for sandbox_id in left:
            emulator.vanish(sandbox_id)
    else:
        assert not emulator.sandboxes
        second.stdout.fnmatch_lines(["e2b: swept 2 sandbox(es) left by a killed run or worker (their process gone, or their lease expired)"])
