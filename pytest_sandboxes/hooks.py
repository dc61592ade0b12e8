"""The plugin's own hooks, declared with ``pytest_addhooks`` as pytest-xdist and pytest-html do.

Implement them in a ``conftest.py`` or a plugin::

    def pytest_sandboxes_configure(item, config):
        if item.get_closest_marker("big"):
            return config.replace(memory_mb=4096)

    def pytest_sandboxes_result(item, result):
        print(item.nodeid, result.exit_code, result.duration_ms)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sandboxes.models import ExecutionResult, SandboxConfig


@pytest.hookspec(firstresult=True)
def pytest_sandboxes_configure(item: pytest.Item, config: SandboxConfig) -> SandboxConfig | None:
    """Adjust the config of a sandbox a test is about to get (the ``sandbox`` fixture's, each ``sandbox_factory`` one's).

    Return a new ``SandboxConfig`` (``config.replace(...)``) to use instead, or
    None to leave it. The first implementation that returns one wins.
    """


@pytest.hookspec
def pytest_sandboxes_result(item: pytest.Item, result: ExecutionResult) -> None:
    """See every result of ``execute`` in a test's sandboxes, for custom reporting. Its return value is ignored."""
