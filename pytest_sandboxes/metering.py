"""The run's ledger, budget and trace in a pytest session (``--sandbox-budget``, ``--sandbox-trace``).

The controller (or the only process) chooses the ledger's file and gives its
path to every xdist worker, so that all of them count against one budget;
the file is written at the run's first sandbox, and removed with the run.
A creation refused for the budget skips its test with the reason, and asks
the session to stop: the tests judged so far keep their results.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandboxes.budget import BudgetExhausted, Ledger
from sandboxes.manager import get_manager
from sandboxes.trace import Trace

from .session import SessionState

LEDGER_INPUT = "sandboxes_ledger"


def start(config: pytest.Config, state: SessionState) -> None:
    """Keep this process's sandboxes in the run's ledger (and trace) from now on."""
    workerinput = getattr(config, "workerinput", None)
    trace = None
    if state.settings.trace is not None:
        try:
            trace = Trace(state.settings.trace, fresh=workerinput is None)
        except OSError as error:
            raise pytest.UsageError(f"--sandbox-trace={state.settings.trace}: cannot write there ({error.strerror})") from None
    manager = get_manager()
    before = manager.ledger, manager.trace  # a pytester run inside a session gives the outer one's back
    if workerinput is not None and workerinput.get(LEDGER_INPUT):
        state.ledger = Ledger(workerinput[LEDGER_INPUT], state.settings.budget, manager.prices)
    else:
        state.ledger = Ledger.temporary(state.settings.budget, manager.prices)
    manager.meter(state.ledger, trace)
    config.add_cleanup(lambda: manager.meter(*before))


def refused_for_budget(item: pytest.Item, call: pytest.CallInfo[None], rep: pytest.TestReport) -> None:
    """A test whose sandbox the budget refused is skipped, not failed, and the session stops after it."""
    if call.excinfo is None or not isinstance(call.excinfo.value, BudgetExhausted):
        return
    message = str(call.excinfo.value)
    rep.outcome = "skipped"
    rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {message}")
    item.session.shouldstop = f"sandbox budget: {message}"


def summary_lines(state: SessionState) -> list[str]:
    """Sandbox-seconds and estimated cost by provider, and the budget."""
    return state.ledger.summary_lines() if state.ledger is not None else []


def worker_input(state: SessionState) -> dict[str, Any]:
    return {LEDGER_INPUT: str(state.ledger.path) if state.ledger is not None else ""}
