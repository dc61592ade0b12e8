"""--sandbox-budget and --sandbox-trace in real pytest runs, with xdist, on E2B (its real SDK, an emulator)."""

from __future__ import annotations

import json

import pytest

from tests.emulators.e2b import open_emulator

HOLDING = """
import pytest

@pytest.mark.parametrize("n", range(16))
def test_one(sandbox, n):
    assert sandbox.execute("sleep 0.3; echo ok").stdout == "ok\\n"
"""


def test_a_budget_reached_mid_run_skips_the_rest_stops_the_run_and_leaks_nothing(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(HOLDING)
    trace = pytester.path / "trace.jsonl"
    with open_emulator() as emulator:
        for name, value in emulator.environ().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("SANDBOXES_PRICES", "e2b=1")  # a dollar a second: the budget runs out after a few tests
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "no:randomly", "-rs", "-n", "2", "--sandbox-provider=e2b", "--sandbox-budget=$2", f"--sandbox-trace={trace}"
        )
        assert not emulator.sandboxes  # nothing left billing
        created = emulator.created
    assert result.ret == pytest.ExitCode.INTERRUPTED
    outcomes = result.parseoutcomes()
    assert 2 <= outcomes["passed"] < 16 and outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0
    assert created == outcomes["passed"]  # a refused test made no sandbox
    result.stdout.fnmatch_lines(
        [
            f"e2b: {created} sandbox(es), * sandbox-seconds, about $*",
            "budget $2: spent * sandbox-seconds, about $* (reached: no sandbox was created past it)",
            "*Interrupted: sandbox budget: the run's budget of $2 is spent*",
        ]
    )
    result.stdout.fnmatch_lines(["SKIPPED *the run's budget of $2 is spent*no new sandbox is created*"])  # the tests left say why
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {e["event"] for e in events} >= {"create", "created", "destroyed", "budget_refused"}
    assert len({e["pid"] for e in events}) == 2  # both workers wrote to the one trace
    assert sum(e["event"] == "created" for e in events) == sum(e["event"] == "destroyed" for e in events) == created


def test_the_summary_gives_sandbox_seconds_and_cost_without_a_budget(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(HOLDING.replace("range(16)", "range(2)"))
    with open_emulator() as emulator:
        for name, value in emulator.environ().items():
            monkeypatch.setenv(name, value)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sandbox-provider=e2b")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["e2b: 2 sandbox(es), 0.* sandbox-seconds, about $0.0000[1-9]*"])  # E2B's published price: $0.00003 a second
    assert "budget " not in result.stdout.str()
