"""pytester runs real pytest sessions of the plugin."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Inner sessions set pytest-asyncio's fixture loop scope, as pyproject does here.

    Unset, pytest-asyncio warns at configure time; in an in-process run the
    warning meets this session's filterwarnings=error and the run dies.
    """
    if importlib.util.find_spec("pytest_asyncio") is not None:
        addopts = os.environ.get("PYTEST_ADDOPTS", "")
        monkeypatch.setenv("PYTEST_ADDOPTS", f"{addopts} -o asyncio_default_fixture_loop_scope=function".strip())
    return pytester


@pytest.fixture
def live_sandboxes() -> callable:
    """The local sandboxes alive in this test's private state dir (ids)."""

    def alive() -> list[str]:
        root = Path(os.environ["SANDBOXES_LOCAL_STATE_DIR"])
        if not root.exists():
            return []
        from sandboxes.providers.local import LocalProvider

        return [info.id for info in LocalProvider(state_dir=root)._list({})]

    return alive
