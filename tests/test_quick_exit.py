"""Freezing once clean: garbage found first is collected, never frozen; the process's exit is otherwise the same.

Each case runs in its own process: a frozen heap would outlive the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CLEAN = """
import gc
from sandboxes import _quick_exit

class Cycle:
    def __del__(self):
        print("garbage finalized", gc.get_freeze_count() == 0)

garbage = Cycle(); garbage.me = garbage; del garbage
kept = Cycle(); kept.me = kept
print("frozen", _quick_exit.freeze_once_clean(), gc.get_freeze_count() > 0)
"""

FOREVER = """
import gc
from sandboxes import _quick_exit

class Spawner:
    def __del__(self):  # every collection leaves a new cycle behind
        more = Spawner(); more.me = more

first = Spawner(); first.me = first; del first
print("frozen", _quick_exit.freeze_once_clean(), gc.get_freeze_count())
"""


def _run(source: str, **env: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_garbage_is_collected_before_the_freeze_and_what_is_alive_is_frozen() -> None:
    assert _run(CLEAN)[:2] == ["garbage finalized True", "frozen True True"]


def test_the_switch_turns_it_off() -> None:
    assert _run(CLEAN, SANDBOXES_QUICK_EXIT="0")[:1] == ["frozen False False"]


def test_nothing_is_frozen_while_garbage_keeps_coming_back() -> None:
    assert _run(FOREVER) == ["frozen False 0"]


@pytest.mark.parametrize("exit_code", [0, 3])
def test_the_cli_exits_with_its_status_and_its_atexit_functions_run(exit_code: int) -> None:
    source = f"""
    import atexit, gc, sys
    from sandboxes.cli import main
    atexit.register(lambda: print("atexit ran; frozen", gc.get_freeze_count() > 0, flush=True))
    main(["run", "exit {exit_code}"])
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (exit_code, ["atexit ran; frozen True"]), done.stderr
