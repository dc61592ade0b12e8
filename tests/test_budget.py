"""Budgets and the run's ledger: parsing, prices, and one ledger kept by several processes at once."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandboxes import SandboxConfig
from sandboxes.budget import PRICES_VARIABLE, Budget, BudgetExhausted, Ledger, Price, prices


@pytest.mark.parametrize(
    ("text", "budget"),
    [("600s", Budget(seconds=600)), ("10m", Budget(seconds=600)), ("1.5h", Budget(seconds=5400)), ("$5", Budget(dollars=5)),
     ("2.5usd", Budget(dollars=2.5)), ("3$", Budget(dollars=3)), (" 4 USD ", Budget(dollars=4))],
)  # fmt: skip
def test_a_budget_is_sandbox_seconds_or_dollars(text: str, budget: Budget) -> None:
    assert Budget.parse(text) == budget


@pytest.mark.parametrize("text", ["5", "five dollars", "-3s", "0s", "$0", "10 minutes", "$", ""])
def test_a_budget_without_a_unit_or_above_zero_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"budget .*(give sandbox-seconds \(600s, 10m, 2h\) or dollars \(\$5, 5usd\)|give more than zero)"):
        Budget.parse(text)


def test_the_price_of_a_sandbox_follows_its_size_and_overrides_replace_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    e2b = prices()["e2b"]
    assert e2b.per_second(SandboxConfig()) == pytest.approx(2 * 0.000014 + 0.5 * 0.0000045)  # E2B's default: 2 vCPU, 512 MiB
    assert e2b.per_second(SandboxConfig(cpus=4, memory_mb=2048)) == pytest.approx(4 * 0.000014 + 2 * 0.0000045)
    assert prices()["local"].per_second(SandboxConfig()) == 0
    monkeypatch.setenv(PRICES_VARIABLE, "e2b=0.001, daytona=0.002")
    assert prices()["e2b"] == Price(flat=0.001) and prices()["daytona"].per_second(SandboxConfig(cpus=8)) == 0.002
    assert prices({"e2b": 0.003})["e2b"].per_second(SandboxConfig()) == 0.003  # configure(prices=...) wins
    monkeypatch.setenv(PRICES_VARIABLE, "e2b=cheap")
    with pytest.raises(ValueError, match=r"\$SANDBOXES_PRICES \('e2b=cheap'\): give a price in USD per sandbox-second"):
        prices()


def test_a_dollar_budget_on_a_provider_without_a_price_is_refused_with_how_to_give_one(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", Budget(dollars=1))
    with pytest.raises(ValueError, match=r"no price for provider 'cloudflare'.*SANDBOXES_PRICES=cloudflare="):
        ledger.price("cloudflare", SandboxConfig())
    assert Ledger(tmp_path / "other.json", Budget(seconds=60)).price("cloudflare", SandboxConfig()) == 0  # seconds need no price


def test_the_ledger_counts_alive_sandboxes_up_to_now_and_refuses_once_spent(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", Budget(seconds=0.3))
    ledger.check()
    ledger.opened("e2b", "a", 0.01)
    ledger.opened("e2b", "b", 0.01)
    time.sleep(0.1)
    ledger.check()  # 0.2 s so far
    time.sleep(0.1)
    with pytest.raises(BudgetExhausted, match=r"the run's budget of 0.3 sandbox-seconds is spent \(0\.[4-9] sandbox-seconds, about \$0\.00[4-9]\d+\)"):
        ledger.check()
    lived = ledger.closed("e2b", "a")
    assert lived is not None and 0.2 <= lived < 1
    assert ledger.closed("e2b", "a") is None  # known once
    usage = ledger.usage()["e2b"]
    assert usage.sandboxes == 2 and 0.4 <= usage.seconds < 2 and usage.dollars == pytest.approx(usage.seconds * 0.01)
    assert ledger.summary_lines()[-1].startswith("budget 0.3 sandbox-seconds: spent ")
    assert ledger.summary_lines()[-1].endswith("(reached: no sandbox was created past it)")


def test_processes_of_one_run_add_to_one_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    script = textwrap.dedent(
        f"""
        import sys
        from sandboxes.budget import Ledger
        ledger = Ledger({str(path)!r})
        for n in range(50):
            ledger.opened("modal", f"{{sys.argv[1]}}-{{n}}", 0.0)
            ledger.closed("modal", f"{{sys.argv[1]}}-{{n}}")
        """
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(n)]) for n in range(4)]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0, 0]
    assert Ledger(path).usage()["modal"].sandboxes == 200  # no update lost between processes


def test_a_temporary_ledger_writes_nothing_until_a_sandbox_and_is_removed_with_it() -> None:
    ledger = Ledger.temporary()
    path = ledger.path
    if os.access("/dev/shm", os.W_OK):
        assert path.parent == Path("/dev/shm")  # in memory: rewritten at each creation, it is cheaper there than on a disk
    assert ledger.usage() == {} and not path.exists()  # a session that makes no sandbox leaves nothing
    ledger.opened("local", "a", 0.0)
    assert path.exists()
    path.unlink()  # deleted under the run (a /tmp cleaner): counted again from nothing, never an error
    ledger.closed("local", "a")
    ledger.opened("local", "b", 0.0)
    assert ledger.usage()["local"].sandboxes == 1
    del ledger
    gc.collect()
    assert not path.exists()


RUN = """
import sys, time
from pathlib import Path
import sandboxes.budget as budget
budget._scratch_dir = lambda: Path(sys.argv[1])
ledger = budget.Ledger.temporary()
ledger.opened("local", "a", 0.0)
print(ledger.path, flush=True)
time.sleep(60)
"""


def test_a_killed_runs_ledger_is_removed_when_the_next_run_starts_and_a_live_ones_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandboxes.budget._scratch_dir", lambda: tmp_path)
    runs = [subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        paths = [Path(run.stdout.readline().strip()) for run in runs if run.stdout is not None]
        killed = runs[0]
        killed.kill()  # its finalizer never runs
        killed.wait(timeout=10)
        assert all(path.exists() for path in paths)
        namespace = os.stat("/proc/self/ns/pid").st_ino
        unknown = [tmp_path / "sandboxes-ledger-0123456789abcdef.json", tmp_path / f"sandboxes-ledger-{namespace + 1}-1-1-0123456789abcdef.json"]
        for path in unknown:  # no owner in its name, or one in another pid namespace: not ours to judge
            path.write_text("{}")
        Ledger.temporary()
        assert [path.exists() for path in paths] == [False, True]
        assert all(path.exists() for path in unknown)
    finally:
        for run in runs:
            run.kill()
            run.communicate(timeout=10)  # and its pipe closed
