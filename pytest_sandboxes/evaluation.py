"""Tests that judge samples of a task: their verdicts are gathered for pass@k, per task set.

A test carries a task through ``@pytest.mark.sandbox(task="HumanEval/0")`` or
a ``task_id`` parameter. Its samples are the verdicts of the judgements it
made through ``sandbox_judge``; a test that made none counts as one sample,
passed or wrong. A sandbox the provider failed to give is an ``infra_error``,
left out of the scores. The task set is the task id before its last ``/``.
Workers send theirs to the controller (``SessionState.export``), which prints
the summary and writes ``--sandbox-eval-report``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandboxes.errors import ProviderError, SandboxNotFoundError
from sandboxes.judging import Verdict
from sandboxes.passk import Summary, summarize

from .fixtures import JUDGED
from .markers import spec_for
from .session import STATE, SessionState


def task_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and isinstance(callspec.params.get("task_id"), str):
        return str(callspec.params["task_id"])
    return spec_for(item).task


def gather(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """After each phase: a task's samples, once its test is decided."""
    state = item.config.stash.get(STATE, None)
    task = task_of(item) if state is not None else None
    if state is None or task is None:
        return
    verdicts: list[str] = []
    if call.when == "setup" and report.failed and call.excinfo is not None and isinstance(call.excinfo.value, ProviderError | SandboxNotFoundError):
        verdicts = [Verdict.INFRA_ERROR.value]  # no sandbox to judge in: the provider's failure, not the sample's
    elif call.when == "call" and not report.skipped:
        verdicts = list(item.stash.get(JUDGED, None) or ()) or [Verdict.PASSED.value if report.passed else Verdict.WRONG_ANSWER.value]
    if verdicts:
        state.samples.setdefault(task, []).extend(verdicts)


def task_sets(state: SessionState) -> dict[str, dict[str, list[str]]]:
    sets: dict[str, dict[str, list[str]]] = {}
    for task, verdicts in sorted(state.samples.items()):
        sets.setdefault(task.rsplit("/", 1)[0] if "/" in task else "tasks", {})[task] = verdicts
    return sets


def finish(terminalreporter: Any, state: SessionState) -> None:
    """The controller's summary per task set, and the report file when asked."""
    sets = task_sets(state)
    if not sets:
        return
    ks = state.settings.eval_k
    summaries = {name: summarize(tasks, ks) for name, tasks in sets.items()}
    terminalreporter.write_sep("-", "sandboxes eval")
    for name, summary in summaries.items():
        terminalreporter.write_line(describe(name, summary, len(sets[name])))
    if state.settings.eval_report is not None:
        report = {"task_sets": {name: summary.as_dict() for name, summary in summaries.items()}, "tasks": state.samples}
        state.settings.eval_report.parent.mkdir(parents=True, exist_ok=True)
        state.settings.eval_report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        terminalreporter.write_line(f"eval report: {state.settings.eval_report}")


def describe(name: str, summary: Summary, tasks: int) -> str:
    parts = [f"{name}: {summary.samples} samples over {tasks} tasks"]
    parts += [f"pass@{k} {s.value:.4f} ({s.low:.4f} to {s.high:.4f})" for k, s in summary.scores.items()]
    parts += [f"pass@{k} left out ({why})" for k, why in summary.skipped.items()]
    parts.append("verdicts " + ", ".join(f"{v} {n}" for v, n in sorted(summary.verdicts.items())))
    parts.append(f"infra errors {summary.infra_errors} (left out)")
    return "; ".join(parts)
