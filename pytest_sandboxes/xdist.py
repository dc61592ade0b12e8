"""pytest-xdist support: the run id goes to every worker, counters come back.

Registered only when xdist is present, so its hooks are never unknown.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import metering
from .session import STATE

WORKER_INPUT = "sandboxes_run_id"
WORKER_OUTPUT = "sandboxes"


class XdistHooks:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        """Controller: every worker labels its sandboxes with the controller's run id, and keeps its ledger."""
        state = self.config.stash[STATE]
        node.workerinput[WORKER_INPUT] = state.run_id
        node.workerinput.update(metering.worker_input(state))

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """Controller: add up a worker's counters; remember a crash for the sweep."""
        state = self.config.stash[STATE]
        output = getattr(node, "workeroutput", None) or {}
        if WORKER_OUTPUT in output:
            state.merge(output[WORKER_OUTPUT])
        if error is not None or WORKER_OUTPUT not in output:
            state.crashed_workers.append(str(node.gateway.id) if hasattr(node, "gateway") else "?")

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        self.config.stash[STATE].crashed_workers.append(crashitem)


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    return not is_worker(config) and getattr(config.option, "numprocesses", None) not in (None, 0) and getattr(config.option, "dist", "no") != "no"
