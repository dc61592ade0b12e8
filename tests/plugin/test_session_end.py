"""The session's end: once every test is done, a process of its own freezes its heap (``sandboxes._quick_exit``).

pytest's cleanup then makes its five full collections, and the exit its own,
without walking the objects of the SDKs and modules the run loaded.
"""

from __future__ import annotations

import gc
import re

import pytest

REPORTER = """
import gc, os
from pathlib import Path

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    name = getattr(config, "workerinput", {}).get("workerid", "main")
    Path(os.environ["FREEZE_REPORT"], name).write_text(str(gc.get_freeze_count()))
"""


def _frozen(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, test_body: str, *args: str) -> dict[str, int]:
    """Each process's frozen objects as pytest unconfigured, by worker name ("main" for the controller)."""
    report = pytester.mkdir("freeze-report")
    monkeypatch.setenv("FREEZE_REPORT", str(report))
    pytester.makeconftest("import pytest\n" + REPORTER)
    pytester.makepyfile(test_body)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", *args).assert_outcomes(passed=2)
    return {path.name: int(path.read_text()) for path in report.iterdir()}


SANDBOXED = """
import pytest

@pytest.mark.parametrize("n", range(2))
def test_runs(sandbox, n):
    assert sandbox.execute(["true"]).exit_code == 0
"""


def test_a_lone_session_that_used_sandboxes_ends_frozen(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = _frozen(pytester, monkeypatch, SANDBOXED)
    assert frozen["main"] > 10_000


def test_the_workers_and_their_controller_end_frozen(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = _frozen(pytester, monkeypatch, SANDBOXED, "-n", "2")
    assert sorted(frozen) == ["gw0", "gw1", "main"]
    assert min(frozen.values()) > 10_000


def test_a_session_that_used_no_sandbox_is_left_alone(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = _frozen(pytester, monkeypatch, "import pytest\n\n@pytest.mark.parametrize('n', range(2))\ndef test_plain(n):\n    assert n >= 0\n")
    assert frozen == {"main": 0}


def test_an_in_process_run_leaves_the_host_process_collectable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SANDBOXED)
    before = gc.get_freeze_count()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert gc.get_freeze_count() == before, re.sub(r"\s+", " ", result.stdout.str())[-500:]


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["lone", "xdist"])
def test_garbage_a_test_left_is_still_collected_and_its_del_errors_still_shown(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makepyfile(
        """
        import gc

        class Bad:
            def __del__(self):
                raise RuntimeError("boom from __del__")

        def test_leaves_a_cycle(sandbox):
            assert sandbox.execute(["true"]).exit_code == 0
            gc.disable()  # left for the session's end to find
            bad = Bad()
            bad.me = bad
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=1)
    assert "boom from __del__" in result.stdout.str() + result.stderr.str()
