"""What the plugin prints: the terminal summary and readable failures of ExecutionResults."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from sandboxes import leases
from sandboxes.models import ExecutionResult

from . import metering
from .session import SessionState


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}ms"


def summary_lines(state: SessionState) -> list[str]:
    header = ("provider", "created", "live ops", "replayed", "recorded", "create p50/p95", "execute p50/p95", "left behind")
    rows = [header]
    for name in sorted(set(state.stats) | set(state.left_behind)):
        s = state.stats_for(name)
        rows.append((
            name, str(s.created), str(s.live), str(s.replayed), str(s.recorded),
            f"{_ms(percentile(s.create_seconds, 0.5))}/{_ms(percentile(s.create_seconds, 0.95))}",
            f"{_ms(percentile(s.execute_seconds, 0.5))}/{_ms(percentile(s.execute_seconds, 0.95))}",
            str(state.left_behind.get(name, 0)),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]
    state.collect_governors()
    for name, counters in sorted(state.governors.items()):
        line = counters.describe(name)
        if line:
            lines.append(line)
    lines.extend(metering.summary_lines(state))
    for name, count in sorted(state.leaked.items()):
        lines.append(leases.describe_swept(name, count))
    for name, count in sorted(state.swept.items()):
        if count:
            lines.append(f"{name}: the session-end sweep destroyed {count} sandbox(es) a test or crashed worker left behind")
    for provider, sandbox_id in state.kept:
        lines.append(f"kept for debugging (--sandbox-keep): {sandbox_id} on {provider}")
    return lines


def terminal_summary(terminalreporter: Any, state: SessionState) -> None:
    terminalreporter.write_sep("-", "sandboxes")
    for line in summary_lines(state):
        terminalreporter.write_line(line)


def assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    results = [side for side in (left, right) if isinstance(side, ExecutionResult)]
    if not results:
        return None
    lines = [f"{_brief(left)} {op} {_brief(right)}"]
    for result in results:
        lines.extend(result.describe().splitlines())
    return lines


def _brief(value: object) -> str:
    if isinstance(value, ExecutionResult):
        return f"ExecutionResult(exit_code={value.exit_code}{', timed_out' if value.timed_out else ''})"
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def failure_section(item: pytest.Item, excinfo: pytest.ExceptionInfo[BaseException]) -> str | None:
    """The ExecutionResults in the failing test's own frame, told plainly (exit code, output tails)."""
    code = getattr(getattr(item, "obj", None), "__code__", None)
    if code is None:
        return None
    seen: set[int] = set()
    parts = []
    for entry in excinfo.traceback:
        if entry.frame.code.raw is not code:
            continue
        for name, value in entry.frame.f_locals.items():
            if isinstance(value, ExecutionResult) and id(value) not in seen:
                seen.add(id(value))
                label = "in the assertion" if name.startswith("@py_assert") else name  # pytest's rewritten temporaries
                parts.append(f"{label}: {value.describe()}")
    return "\n\n".join(parts) or None
