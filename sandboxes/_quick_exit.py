"""A quick end for a process that loaded a cloud SDK.

At exit, Python's last garbage collections walk every object still alive. A
cloud SDK leaves a great many (Daytona's pydantic models: its import is
1.4 s), and those walks cost 0.3 to 0.4 s of CPU per process, for memory the
process is about to give back. Frozen objects are not walked. Nothing else
about the exit changes: threads are joined, ``atexit`` functions run, streams
are flushed, objects whose last reference goes are still finalized, and the
exit status is the same; only reference cycles still alive at exit are left
to the end of the process, as they would be for a process killed there.
"""

from __future__ import annotations

import atexit
import gc


def freeze_survivors() -> None:
    """Call as the process ends: its objects so far are left out of the collections that the exit makes."""
    gc.freeze()


def freeze_survivors_at_exit() -> None:
    """Freeze once the interpreter starts its exit, before the ``atexit`` functions registered earlier run."""
    atexit.register(freeze_survivors)
