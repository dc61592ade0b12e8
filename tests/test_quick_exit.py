"""The quick exit: the collections at exit skip what was frozen, and nothing else about the exit changes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import atexit, gc, sys, threading, time
    from sandboxes import _quick_exit

    atexit.register(lambda: print("registered before: frozen", gc.get_freeze_count() > 0, flush=True))
    _quick_exit.freeze_survivors_at_exit()
    atexit.register(lambda: print("registered after: frozen", gc.get_freeze_count() > 0, flush=True))
    worker = threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined", flush=True)))
    worker.start()
    print("main done", flush=True)
    sys.exit(3)
    """
)


def test_at_exit_the_heap_is_frozen_after_the_later_exit_functions_and_before_the_earlier_ones() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["main done", "thread joined", "registered after: frozen False", "registered before: frozen True"]
