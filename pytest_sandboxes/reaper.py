"""The session-end sweep: destroys every sandbox carrying this run's label (and a worker's).

Each test destroys its own sandboxes at teardown; this catches what one
left. Each xdist worker sweeps its own at its end, with the provider it has
loaded; the controller sweeps only after a worker crashed or could not
sweep. It finds sandboxes by labels, so it works from another process (the
xdist controller, or ``sandboxes gc``).
"""

from __future__ import annotations

from collections.abc import Collection

from sandboxes.provider import SandboxProvider

from .session import RUN_LABEL, WORKER_LABEL


async def sweep(provider: SandboxProvider, run_id: str, keep: Collection[str] = (), worker: str | None = None) -> tuple[int, int]:
    """Destroy the run's sandboxes, or one ``worker``'s (except ``keep``); returns (destroyed, still alive)."""
    labels = {RUN_LABEL: run_id, **({WORKER_LABEL: worker} if worker is not None else {})}
    found = await provider.list_sandboxes(labels)
    destroyed = 0
    for info in found:
        if info.id not in keep and await provider.destroy_sandbox(info.id):
            destroyed += 1
    remaining = [i for i in await provider.list_sandboxes(labels) if i.id not in keep]
    return destroyed, len(remaining)
