"""pytest-xdist: labels, counters sent to the controller, and the sweep after a worker dies."""

from __future__ import annotations

import pytest


def test_two_workers_label_their_sandboxes_and_report_once(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_labelled(sandbox, n):
            labels = sandbox.labels
            assert labels["sandboxes_worker"].startswith("gw")
            assert len(labels["sandboxes_run"]) >= 8
            assert sandbox.execute(["python3", "-c", f"print({n} * 2)"]).stdout == f"{n * 2}\\n"
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=6)
    output = result.stdout.str()
    assert output.count("left behind") == 1  # the summary is printed by the controller only
    result.stdout.fnmatch_lines(["local*6*18*0*0*ms/*ms*ms/*ms*0"])  # counters of both workers
    assert live_sandboxes() == []


def test_each_worker_sweeps_what_its_tests_left_without_touching_the_others(pytester: pytest.Pytester, live_sandboxes) -> None:
    """A sandbox made with a test's run labels and never destroyed: its own worker's sweep takes it at its end."""
    pytester.makepyfile(
        """
        import time

        import pytest
        from sandboxes.sync import Sandbox

        @pytest.mark.parametrize("n", range(2))
        def test_leaks(sandbox, n):
            Sandbox.create("local", labels=dict(sandbox.labels))  # no one destroys it
            time.sleep(1)  # both workers at work: the first to end must leave the other's sandboxes alone

        def test_outlives(sandbox):
            time.sleep(3)
            assert sandbox.execute("true").success
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-n", "2", "--dist", "load")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["local: the session-end sweep destroyed 2 sandbox(es) a test or crashed worker left behind"])
    result.stdout.fnmatch_lines(["local*0"])  # left behind: 0
    assert live_sandboxes() == []


def test_a_worker_killed_mid_run_leaves_nothing_behind(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        import os
        import signal

        def test_dies(sandbox):
            sandbox.execute("sleep 300 &")
            os.kill(os.getpid(), signal.SIGKILL)

        def test_lives(sandbox):
            assert sandbox.execute("true").success
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1, failed=1)
    # The session-end sweep destroys it, unless the worker that replaced the dead one used the
    # provider first: its lease (the dead worker's pid) is stale, and that sweep takes it.
    swept = ("the session-end sweep destroyed 1 sandbox(es)", "local: swept 1 sandbox(es) left by a killed run or worker")
    assert sum(line in result.stdout.str() for line in swept) == 1, result.stdout.str()
    result.stdout.fnmatch_lines(["local*0"])  # left behind: 0
    assert live_sandboxes() == []


def test_replay_under_xdist_needs_no_provider(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_replayed(sandbox, n):
            assert sandbox.execute(f"echo {n}").stdout == f"{n}\\n"
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--sandbox-record-mode=once").assert_outcomes(passed=4)
    monkeypatch.setenv("SANDBOXES_RECORD_MODE", "none")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["local*0*0*12*0*"])
    assert live_sandboxes() == []
