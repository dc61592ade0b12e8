"""The session-end sweep: destroys every sandbox carrying this run's label.

Each worker destroys its own sandboxes at teardown; this catches what a
crashed worker left. It finds sandboxes by the run-id label, so it works
from another process (the xdist controller, or ``sandboxes gc``).
"""

from __future__ import annotations

from collections.abc import Collection

from sandboxes.provider import SandboxProvider

from .session import RUN_LABEL


async def sweep(provider: SandboxProvider, run_id: str, keep: Collection[str] = ()) -> tuple[int, int]:
    """Destroy the run's sandboxes (except ``keep``); returns (destroyed, still alive)."""
    found = await provider.list_sandboxes({RUN_LABEL: run_id})
    destroyed = 0
    for info in found:
        if info.id not in keep and await provider.destroy_sandbox(info.id):
            destroyed += 1
    remaining = [i for i in await provider.list_sandboxes({RUN_LABEL: run_id}) if i.id not in keep]
    return destroyed, len(remaining)
