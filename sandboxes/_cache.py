"""The user's cache directory for this project: below the drivers, so that any layer may use it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SANDBOXES_LOCAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-sandboxes`` (``~/.cache``).

    The local provider keeps its agent's bytecode and /etc snapshot here, and
    replay keeps each cassette's checked form; no sandbox ever sees it.
    """
    configured = os.environ.get("SANDBOXES_LOCAL_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "pytest-sandboxes"
