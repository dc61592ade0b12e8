"""Finding a sandbox's processes from the host, as a test that acts from outside must."""

from __future__ import annotations

from sandboxes.providers.local import LocalProvider


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def agent_pid(provider: LocalProvider, sandbox_id: str) -> int:
    """The host pid of a sandbox's agent: the sandbox's init (an ordinary user's), or its child (root's)."""
    init = provider._load(sandbox_id).pid
    for candidate in (init, *_children(init)):
        with open(f"/proc/{candidate}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
        if not argv[0].endswith(b"bwrap") and b"agent.main()" in argv[-2]:  # bubblewrap's init has it in its argv too
            return candidate
    raise AssertionError(f"no agent under pid {init}")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]
