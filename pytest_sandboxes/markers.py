"""The ``@pytest.mark.sandbox(...)`` marker: keyword-only, checked strictly.

How a test's sandbox configuration is composed, last one wins:

1. the ``sandbox_config`` fixture (by default built from the options; override
   it in a conftest or module at any scope);
2. ``--sandbox-image`` / ``--sandbox-timeout`` fill what that config leaves unset;
3. the marker, closest first (function over class over module): ``image``,
   ``timeout`` (per command), ``lifetime``, ``network`` replace; ``env`` and
   ``labels`` are merged on top; ``providers`` replaces the session's list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sandboxes import specs

MARKER = "sandbox"
KEYS = ("providers", "image", "timeout", "env", "labels", "network", "lifetime", "task")
MARKER_HELP = (
    "sandbox(providers=..., image=..., timeout=..., env=..., labels=..., network=..., lifetime=..., task=...): "
    "configure the sandbox fixture for this test (keyword arguments only); task names the problem it judges, for pass@k"
)


@dataclass(frozen=True)
class MarkerSpec:
    providers: tuple[str, ...] | None = None
    image: str | None = None
    timeout: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    network: bool | None = None
    lifetime: float | None = None
    task: str | None = None


def spec_for(node: pytest.Item | pytest.Function | Any) -> MarkerSpec:
    """The merged markers of a test (closest wins); UsageError on a bad one."""
    where = getattr(node, "nodeid", "?")
    merged: dict[str, Any] = {}
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    for marker in reversed(list(node.iter_markers(MARKER))):  # farthest first
        values = _check(marker, where)
        env.update(values.pop("env", {}))
        labels.update(values.pop("labels", {}))
        merged.update(values)
    return MarkerSpec(env=env, labels=labels, **merged)


def _check(marker: pytest.Mark, where: str) -> dict[str, Any]:
    if marker.args:
        raise pytest.UsageError(f"{where}: @pytest.mark.sandbox takes keyword arguments only, got positional {marker.args!r}; valid keys: {', '.join(KEYS)}")
    unknown = [k for k in marker.kwargs if k not in KEYS]
    if unknown:
        raise pytest.UsageError(f"{where}: unknown @pytest.mark.sandbox key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    for key, value in marker.kwargs.items():
        values[key] = _value(key, value, where)
    return values


def _value(key: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> pytest.UsageError:
        return pytest.UsageError(f"{where}: @pytest.mark.sandbox({key}={value!r}): {key} must be {expected}")

    if key == "providers":
        names = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else None
        if not names or not all(isinstance(n, str) for n in names):
            raise bad(f"a provider name or a list of them ({', '.join(specs.names())})")
        unknown = [n for n in names if n not in specs.specs()]
        if unknown:
            raise bad(f"among {', '.join(specs.names())} (unknown: {', '.join(unknown)})")
        return tuple(dict.fromkeys(names))
    if key in ("timeout", "lifetime"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise bad("a positive number of seconds")
        return float(value)
    if key in ("env", "labels"):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of names to strings")
        return {k: str(v) for k, v in value.items()}
    if key == "network":
        if value not in (None, True, False):
            raise bad("True, False or None")
        return value
    if key == "image":
        if value is not None and not isinstance(value, str):
            raise bad("a string")
        return value
    if key == "task":
        if not isinstance(value, str) or not value:
            raise bad("a task id such as 'HumanEval/0'")
        return value
    raise bad("known")  # pragma: no cover - KEYS is checked first
