"""pytester runs real pytest sessions of the plugin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest



@pytest.fixture
def live_sandboxes() -> "callable":
    """The local sandboxes alive in this test's private state dir (ids)."""

    def alive() -> list[str]:
        root = Path(os.environ["SANDBOXES_LOCAL_STATE_DIR"])
        if not root.exists():
            return []
        from sandboxes.providers.local import LocalProvider

        return [info.id for info in LocalProvider(state_dir=root)._list({})]

    return alive
