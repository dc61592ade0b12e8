"""A quick end for a process whose work is done: no full collections over objects that are all alive.

As Python exits it collects garbage over every object still tracked, and
pytest's cleanup makes five full collections before that (to surface errors
in ``__del__``). A process that loaded a cloud SDK tracks a great many
objects: with Daytona's, the exit's collections cost 0.3 to 0.4 s of CPU; a
replayed pytest session spends 0.3 s in them. Frozen objects are not walked.

Freezing once the garbage is gone (one full collection, then young ones
for what its finalizers left) keeps what is already garbage collectable: its
``__del__`` still runs, and its errors still surface. What becomes garbage
later out of frozen objects is left to the process's end, as reference
cycles are at any exit. Nothing else about the exit changes: threads are
joined, ``atexit`` functions run, streams are flushed, the exit status is
the same. ``$SANDBOXES_QUICK_EXIT=0`` turns it off.
"""

from __future__ import annotations

import gc
import os

SWITCH = "SANDBOXES_QUICK_EXIT"


def freeze_once_clean(tries: int = 5) -> bool:
    """A full collection, then young ones until one finds nothing; then freeze every object, all alive.

    A second full collection would cost as much as the first (0.1 s with Daytona's SDK loaded), and
    only a finalizer run by the first makes garbage: new objects, which a young collection finds.
    False, and nothing frozen, if garbage keeps coming back (a ``__del__`` that makes more) or if
    ``$SANDBOXES_QUICK_EXIT`` is ``0``.
    """
    if os.environ.get(SWITCH) == "0":
        return False
    found = gc.collect()
    for _ in range(tries):
        if not found:
            gc.freeze()
            return True
        found = gc.collect(1)
    return False
