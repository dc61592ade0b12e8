"""A run's lifecycle events, one JSON line each, for post-mortems (``--sandbox-trace=PATH.jsonl``).

Every process of a run appends to the same file; each line is one
``O_APPEND`` write, so lines from several processes never interleave. A line
has the wall time ``t``, the ``event``, the ``provider``, the writing ``pid``,
and the event's own fields:

- ``create``: a creation was asked for;
- ``created``: ``sandbox``, ``seconds`` (the whole creation: waiting for a slot, retries), ``waited``
  (of it, for the governor's slots);
- ``create_failed``: ``error`` (its type) and ``message``;
- ``waited``: ``seconds`` spent waiting for the governor's slot;
- ``throttled``: the provider refused for load (a 429), ``retry_after``;
- ``budget_refused``: the run's budget is spent, ``message``;
- ``destroyed``: ``sandbox``, ``lived`` (seconds from creation, when this run made it);
- ``stray_destroyed``: ``sandbox``, made by a creation whose answer was lost, found by its token and destroyed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import specs
from ._jsonl import append_line
from .secrets import scrub


class Trace:
    """Appends one line per event to ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, fresh: bool = False) -> None:
        """``fresh``: empty the file first (the run's first process; its workers then append)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A bad path fails here, at the start of the run (OSError), not at its first event.
        if fresh:
            self.path.write_bytes(b"")
        else:
            self.path.touch(exist_ok=True)

    def emit(self, event: str, provider: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 6), "event": event, "provider": provider, "pid": os.getpid(), **fields}
        if "message" in record:
            record["message"] = scrub(str(record["message"]), *_credentials())
        append_line(self.path, record)


def _credentials() -> list[str]:
    """The values of the providers' credential variables set here (never written to a trace)."""
    return [os.environ[name] for name in specs.secret_variables() if "*" not in name and os.environ.get(name)]
