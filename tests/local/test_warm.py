"""Warm Python: a program forked from a started interpreter sees what ``python3 main.py`` would.

Each program runs through ``run_code`` twice, warm (the default in a
recyclable sandbox) and cold (``warm_python=False``), and what it prints, its
exit status and its stderr (run directories aside) must be the same.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from sandboxes import Sandbox, SandboxConfig, judge
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local.recycling import IDLE

pytestmark = pytest.mark.anyio

PROGRAMS = {
    "identity": '"""the docstring"""\nimport sys, os\nprint(__name__, __doc__, sys.argv, __file__ == os.path.abspath("main.py"), sys.path[0] == os.getcwd(),'
    " type(__loader__).__name__, __spec__, __package__, type(__builtins__).__name__, sorted(k for k in globals()))\n",
    "modules at start": "import sys\nprint(sorted(sys.modules))\n",
    "flags, streams and environment": "import sys, os\nprint(sys.flags, sys.stdout.encoding, sys.stdout.line_buffering, sys.stdin.isatty(), os.getcwd(),"
    " sorted(os.environ.items()), os.umask(0o22), os.getsid(0) == os.getpid(), sys.getrecursionlimit())\n",
    "arguments and stdin": "import sys\nprint(sys.argv[1:], sys.orig_argv, sys.stdin.read())\n",
    "exit status": "import sys\nprint('before')\nsys.exit(3)\n",
    "exit with a message": "import sys\nsys.exit('a message')\n",
    "uncaught exception": "def f():\n    raise ValueError('no')\nprint('out')\nf()\n",
    "syntax error": "def f(:\n",
    "atexit, threads and buffered output": "import atexit, threading, time, sys\natexit.register(print, 'at exit')\n"
    "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\nsys.stdout.write('no newline')\n",
    "killed by a signal": "import os, signal\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "limits and priority": "import resource, os\nprint([resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith('RLIMIT_')],"
    " os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0), open('/proc/self/status').read().count('Seccomp:\\t2'))\n",
    "objects torn down at exit": "class Loud:\n    def __del__(self):\n        print('bye from __del__')\n"
    "kept = Loud()\nopen_file = open('/tmp/left-open.txt', 'w')\nopen_file.write('data')\n"
    "import atexit\natexit.register(lambda: None)\n",
    "a child process": "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.environ)[:3])'],"
    " capture_output=True, text=True).stdout)\n",
}


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Sandbox, Sandbox]]:
    warm, cold = LocalProvider(), LocalProvider(warm_python=False, recycle=False)
    first = Sandbox(warm, await warm.create_sandbox(SandboxConfig()))
    second = Sandbox(cold, await cold.create_sandbox(SandboxConfig()))
    try:
        yield first, second
    finally:
        await first.destroy()
        await second.destroy()
        IDLE.drain()


def _plain(text: str) -> str:
    return re.sub(r"/tmp/sandboxes-run/[0-9a-f]+", "<run>", text)


@pytest.mark.parametrize("name", list(PROGRAMS))
async def test_a_warm_run_is_a_cold_run(pair: tuple[Sandbox, Sandbox], name: str) -> None:
    warm, cold = pair
    code = PROGRAMS[name]
    ran = [await box.run_code(code, "python", stdin="the input\n", args=["one", "two"]) for box in (warm, cold)]
    seen = [(r.exit_code, _plain(r.stdout), _plain(r.stderr)) for r in ran]
    assert seen[0] == seen[1], f"warm {seen[0]}\ncold {seen[1]}"
    assert all(r.cpu_ms is not None for r in ran)


async def test_a_file_a_program_left_open_is_written_at_its_exit(pair: tuple[Sandbox, Sandbox]) -> None:
    leave = "f = open('/tmp/left-open.txt', 'w')\nf.write('data')\n"
    look = "print(open('/tmp/left-open.txt').read())\n"
    for box in pair:
        assert (await box.run_code(leave, "python")).exit_code == 0
        assert (await box.run_code(look, "python")).stdout == "data\n"


async def test_it_is_warm_each_run_is_its_own_and_random_state_is_fresh(pair: tuple[Sandbox, Sandbox]) -> None:
    warm, _ = pair
    code = "import os, random\nprint(os.getpid(), os.getppid(), random.random(), os.urandom(8).hex())\n"
    runs = [(await warm.run_code(code, "python")).stdout.split() for _ in range(3)]
    assert len({run[0] for run in runs}) == 3 and len({run[2] for run in runs}) == 3 and len({run[3] for run in runs}) == 3
    zygotes = (await warm.execute("pgrep -f '[_]zygote.py'")).stdout.split()
    assert len(zygotes) == 1 and all(run[1] == zygotes[0] for run in runs), (zygotes, runs)  # forked from it


async def test_a_judged_program_is_warm_and_judged_the_same(pair: tuple[Sandbox, Sandbox]) -> None:
    program, tests = "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n"
    for wrong in (False, True):
        source = program.replace("+", "-") if wrong else program
        verdicts = [(await judge(box, source, "python", tests=tests)).verdict for box in pair]
        assert verdicts[0] == verdicts[1] == ("wrong_answer" if wrong else "passed")


async def test_a_timeout_ends_the_run_and_a_killed_zygote_is_replaced(pair: tuple[Sandbox, Sandbox]) -> None:
    warm, _ = pair
    looped = await warm.run_code("while True:\n    pass\n", "python", timeout=1)
    assert looped.timed_out
    await warm.execute("pkill -9 -f '[_]zygote.py'")
    again = await warm.run_code("print('after')", "python")
    assert again.stdout == "after\n" and again.exit_code == 0


async def test_the_zygote_is_kept_across_leases_unless_a_lease_changed_it() -> None:
    provider = LocalProvider()
    try:
        pids = []
        for tamper in ("", "renice -n 5 -p $(pgrep -f '[_]zygote.py') >/dev/null", ""):
            box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
            await box.run_code("print(1)", "python")
            pids.append((await box.execute("pgrep -f '[_]zygote.py'")).stdout.strip())
            if tamper:
                assert (await box.execute(tamper)).exit_code == 0
            await box.destroy()
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        last = (await box.run_code("import os; print(os.getpriority(os.PRIO_PROCESS, 0))", "python")).stdout.strip()
        await box.destroy()
        assert pids[0] == pids[1] != pids[2], pids  # kept after a clean lease, replaced after the renice
        assert last == "0"
    finally:
        IDLE.drain()


@pytest.mark.parametrize("how", ["argument", "environment"])
async def test_warm_python_can_be_turned_off(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "environment":
        monkeypatch.setenv("SANDBOXES_WARM_PYTHON", "0")
    provider = LocalProvider(warm_python=False) if how == "argument" else LocalProvider()
    box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
    try:
        ran = await box.run_code("import os; print(os.getppid())", "python")
        assert ran.exit_code == 0
        assert (await box.execute("pgrep -f '[_]zygote.py' || echo none")).stdout.strip() == "none"
    finally:
        await box.destroy()
        IDLE.drain()
