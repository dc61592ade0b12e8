"""Warm Python: a program forked from a started interpreter sees what ``python3 main.py`` would.

Each program runs through ``run_code`` twice, warm (the default in a
recyclable sandbox) and cold (``warm_python=False``), and what it prints, its
exit status and its stderr (run directories aside) must be the same.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandboxes import Sandbox, SandboxConfig, judge
from sandboxes.driver import WARM_PYTHON, warm_marker
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local import _warm as warm_module
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


async def test_a_program_compiled_once_is_run_as_compiled_from_its_own_file(pair: tuple[Sandbox, Sandbox]) -> None:
    # The zygote keeps the code of a source it compiled without a warning (the judge's harness):
    # a later run of the same bytes, from another directory, names its own file in a traceback.
    failing = "def f():\n    raise ValueError('no')\nf()\n"
    ran = [await pair[0].run_code(failing, "python") for _ in range(3)]
    files = [re.findall(r'File "([^"]+)"', r.stderr) for r in ran]
    assert all(len(set(names)) == 1 and names[0].endswith("/main.py") for names in files), files
    assert len({names[0] for names in files}) == 3, files  # each run's own directory
    # A compile-time warning is printed by every run, as by every python3 main.py.
    warned = "x = 1\nprint(x is 1)\n"
    for box in pair:
        for _ in range(2):
            assert "SyntaxWarning" in (await box.run_code(warned, "python")).stderr


PLANTED_PROVIDER = (
    "#include <fcntl.h>\n#include <unistd.h>\n"
    'static void planted(void) __attribute__((constructor));\nstatic void planted(void) { close(open("/tmp/planted-ran", O_CREAT | O_WRONLY, 0644)); }\n'
    "int OSSL_provider_init(void) { return 0; }\n"
)
PLANTED_CONFIG = "openssl_conf = init\n[init]\nproviders = providers\n[providers]\nplanted = planted\n[planted]\nmodule = /tmp/planted.so\nactivate = 1\n"


async def test_a_lease_cannot_have_a_zygote_load_its_code_through_openssl(pair: tuple[Sandbox, Sandbox]) -> None:
    # OpenSSL reads the file $OPENSSL_CONF names and loads the modules it lists. A zygote that
    # loaded OpenSSL (hashlib, to check a shared script) would run them, and keep them running
    # in every later run of every later lease.
    warm, _ = pair
    await warm.write_files({"/tmp/planted.c": PLANTED_PROVIDER, "/tmp/planted.cnf": PLANTED_CONFIG, "/tmp/x.py": "print('ran')\n"})
    built = await warm.execute("gcc -shared -fPIC -o /tmp/planted.so /tmp/planted.c")
    if built.exit_code != 0:
        pytest.skip(f"no C compiler in the sandbox: {built.describe()}")
    env = {"OPENSSL_CONF": "/tmp/planted.cnf"}
    proof = await warm.execute(["python3", "-c", "import hashlib, os; print(os.path.exists('/tmp/planted-ran'))"], env=env)
    if proof.stdout != "True\n":
        pytest.skip(f"this OpenSSL does not load a provider from $OPENSSL_CONF: {proof.describe()}")
    await warm.execute("rm /tmp/planted-ran")
    for marker in (WARM_PYTHON, warm_marker("0" * 64), warm_marker(hashlib.sha256(b"print('ran')\n").hexdigest())):
        ran = await warm.execute([marker, "python3", "/tmp/x.py"], env=env)
        assert ran.stdout == "ran\n", ran.describe()
    assert (await warm.execute("test -e /tmp/planted-ran")).exit_code == 1, "the zygote ran the lease's OpenSSL module"


async def test_a_judged_program_has_the_builtins_site_adds_warm_and_cold(pair: tuple[Sandbox, Sandbox]) -> None:
    program = "import builtins\nNAMES = [n for n in ('exit', 'quit', 'copyright', 'credits', 'license', 'help') if hasattr(builtins, n)]\n"
    for box in pair:
        judged = await judge(box, program, "python", tests="assert NAMES == ['exit', 'quit', 'copyright', 'credits', 'license', 'help'], NAMES\n")
        assert judged.verdict == "passed", judged.describe()


PLANTING = "import builtins\nbuiltins.PLANTED = getattr(builtins, 'PLANTED', 0) + 1\nprint(builtins.PLANTED)\n\n\ndef __sandbox_main__():\n    pass\n"
CALLER = "import sys\nHARNESS = sys._getframe(1).f_globals['__name__']\n"


async def test_only_the_judges_own_harness_is_run_once_in_the_zygote_and_then_only_called(pair: tuple[Sandbox, Sandbox]) -> None:
    # A script said to be shared, which asks to be run once (it has a __sandbox_main__), still runs
    # whole in each run and leaves nothing in the zygote, whose memory every later run starts from.
    warm, _ = pair
    await warm.write_file("/workspace/planting.py", PLANTING)
    marker = warm_marker(hashlib.sha256(PLANTING.encode()).hexdigest())
    ran = [await warm.execute([marker, "python3", "planting.py"], cwd="/workspace") for _ in range(2)]
    assert [r.stdout for r in ran] == ["1\n", "1\n"], [r.describe() for r in ran]
    assert (await warm.run_code("import builtins; print(getattr(builtins, 'PLANTED', 'clean'))", "python")).stdout == "clean\n"
    # The harness of the agent's own bundle is: the program's caller is its _child, made in the zygote.
    for box, made_in in zip(pair, ("__sandbox_prepared__", "__main__"), strict=True):
        for _ in range(2):
            judged = await judge(box, CALLER + "def f(x):\n    return x\n", "python", tests=f"assert f(1) == 1\nassert HARNESS == {made_in!r}\n")
            assert judged.verdict == "passed", judged.describe()


async def test_a_timeout_ends_the_run_and_a_killed_zygote_is_replaced(pair: tuple[Sandbox, Sandbox]) -> None:
    warm, _ = pair
    looped = await warm.run_code("while True:\n    pass\n", "python", timeout=1)
    assert looped.timed_out
    await warm.execute("pkill -9 -f '[_]zygote.py'")
    again = await warm.run_code("print('after')", "python")
    assert again.stdout == "after\n" and again.exit_code == 0


ZYGOTE = "pgrep -f '[_]zygote.py 3$'"


async def test_a_zygote_serves_later_leases_until_one_changes_it() -> None:
    provider = LocalProvider()
    try:
        pids = []
        for tamper in ("", "renice -n 5 -p $(pgrep -f '[_]zygote.py 3$') >/dev/null", ""):
            box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
            await box.run_code("print(1)", "python")
            pids.append((await box.execute(ZYGOTE)).stdout.strip())
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


async def test_a_zygote_started_while_a_leases_process_lived_ends_with_that_lease() -> None:
    # Python is dumpable until the zygote makes itself undumpable: a process of the lease could
    # open its memory in that moment, and write into it later. The reset starts it again, with
    # no lease left, and that one serves the next lease.
    provider = LocalProvider()
    try:
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        await box.execute("sleep 60 >/dev/null 2>&1 &")
        await box.run_code("print(1)", "python")
        started_during = (await box.execute(ZYGOTE)).stdout.strip()
        await box.destroy()
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        waiting = (await box.execute(ZYGOTE)).stdout.strip()  # before any run of this lease
        await box.run_code("print(2)", "python")
        assert started_during and waiting and waiting != started_during
        assert (await box.execute(ZYGOTE)).stdout.strip() == waiting
        await box.destroy()
    finally:
        IDLE.drain()


# Few allocations before the scan (no imports): freed memory the run inherited stays as it was.
SCAN_OWN_MEMORY = """
present = "sk-" + "present" * 3  # in this run's memory: the scan must find it
maps = open("/proc/self/maps", "rb").read()
memory = open("/proc/self/mem", "rb", 0)
tokens = set()
for line in maps.splitlines():
    span, perms = line.split()[:2]
    if perms[:1] != b"r":
        continue
    low, high = (int(part, 16) for part in span.split(b"-"))
    try:
        memory.seek(low)
        chunk = memory.read(high - low)
    except OSError:
        continue
    at = chunk.find(b"sk-")
    while at >= 0:
        end = at + 3
        while end < len(chunk) and end - at < 64 and (chr(chunk[end]).isalnum() or chunk[end] == 45):
            end += 1
        if end - at >= 13:
            tokens.add(chunk[at:end])
        at = chunk.find(b"sk-", at + 1)
print(sorted(token.decode() for token in tokens))
"""
SECRET = "sk-lease-a-0123456789"


async def test_a_lease_finds_nothing_of_the_last_ones_programs_in_its_own_memory() -> None:
    # A run is a fork of the zygote: whatever the zygote held of the last lease (its program's
    # text, compiled code, interned names) would be in the next lease's memory.
    provider = LocalProvider()
    try:
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        for _ in range(2):
            assert (await box.run_code(f"API_KEY = {SECRET!r}\nprint(len(API_KEY))", "python")).stdout == "21\n"
        served = (await box.execute(ZYGOTE)).stdout
        await box.destroy()
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        for _ in range(2):
            scanned = await box.run_code(SCAN_OWN_MEMORY, "python")
            assert "sk-presentpresentpresent" in scanned.stdout and SECRET not in scanned.stdout, scanned.describe()
        assert (await box.execute(ZYGOTE)).stdout == served  # the same zygote served both leases
        await box.destroy()
    finally:
        IDLE.drain()


PLANT_A_USER_SITE = """
import os, signal, site
packages = site.getusersitepackages()
os.makedirs(packages, exist_ok=True)
with open(os.path.join(packages, "lease.pth"), "w") as pth:
    pth.write("import builtins; builtins.LEASE_A = 'was here'\\n")
import builtins
if not hasattr(builtins, "LEASE_A"):
    os.kill(os.getppid(), signal.SIGKILL)  # its zygote: the next run starts one that runs lease.pth
print(getattr(builtins, "LEASE_A", "not yet"))
"""

TAINTS = {
    # Untrusted code alone: a zygote started after it wrote a user site ran that site's .pth.
    "a user site": [["run_code", PLANT_A_USER_SITE], ["run_code", PLANT_A_USER_SITE]],
    # An interpreter a lease wrote, and a command line with a lease's words (anyone can read it).
    "an interpreter in the workspace": [["execute", "cp $(command -v python3) /workspace/py"], ["warm", "/workspace/py", "main.py"]],
    "free words on its command line": [["warm", "python3", "-X", "lease-a-secret", "main.py"]],
    # A link to the sandbox's python3 in a venv the lease made: Python reads the venv's pyvenv.cfg.
    "a venv in the workspace": [["execute", "python3 -m venv --without-pip /workspace/venv"], ["warm", "/workspace/venv/bin/python3", "main.py"]],
}


@pytest.mark.parametrize("taint", list(TAINTS))
async def test_a_zygote_that_may_have_run_a_leases_code_ends_with_that_lease(taint: str) -> None:
    provider = LocalProvider()
    try:
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        born = (await box.execute("cut -d' ' -f22 /proc/1/stat")).stdout
        await box.write_file("/workspace/main.py", "print('main')\n")
        outputs = []
        for how, *what in TAINTS[taint]:
            if how == "run_code":
                outputs.append((await box.run_code(what[0], "python")).stdout)
            elif how == "execute":
                assert (await box.execute(what[0])).exit_code == 0
            else:
                ran = await box.execute([WARM_PYTHON, *what], cwd="/workspace")
                assert ran.stdout == "main\n", ran.describe()
        assert (await box.execute("pgrep -f '[_]zygote.py'")).stdout.strip(), "no zygote: the test tests nothing"
        if taint == "a user site":
            assert outputs == ["not yet\n", "was here\n"]  # the second run's zygote ran the lease's .pth
        await box.destroy()
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        assert (await box.execute("cut -d' ' -f22 /proc/1/stat")).stdout == born  # the same sandbox, leased again
        assert (await box.execute("pgrep -f '[_]zygote.py' || echo none")).stdout.strip() == "none"
        ran = await box.run_code("import builtins; print(getattr(builtins, 'LEASE_A', 'clean'))", "python")
        assert ran.stdout == "clean\n", ran.describe()
        await box.destroy()
    finally:
        IDLE.drain()


async def test_a_zygote_counts_against_the_sandboxs_memory() -> None:
    provider = LocalProvider(memory_mb=128)
    box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
    try:
        # A user site whose .pth holds 256 MiB in every interpreter that starts: the zygote too.
        plant = (
            "import os, site\nos.makedirs(site.getusersitepackages())\n"
            "open(site.getusersitepackages() + '/big.pth', 'w').write('import builtins; builtins.BIG = bytearray(256 << 20)\\n')\n"
            "os.kill(os.getppid(), 9)\n"  # its zygote: the next run starts one, which runs big.pth
        )
        await box.run_code(plant, "python")
        assert (await box.execute("ls /workspace/.local/lib/*/site-packages")).stdout == "big.pth\n"
        ran = await box.run_code("import builtins; print(len(builtins.BIG))", "python")
        assert ran.exit_code != 0 and "268435456" not in ran.stdout, ran.describe()
        assert ran.oom_killed or "MemoryError" in ran.stderr, ran.describe()
    finally:
        await box.destroy()
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


def test_a_zygote_that_ended_never_hides_the_process_that_took_its_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    # The clean check skips the agent's own zygotes. One that ended must not be skipped by its
    # pid, which a process of the lease may have taken since (a red team cycled pids to get it).
    monkeypatch.syspath_prepend(str(Path(warm_module.__file__).parent))  # the agent's imports, as in its bundle
    agent_module = importlib.import_module("sandboxes.providers.local.agent")

    taker = subprocess.Popen(["sleep", "30"])
    try:
        mine = SimpleNamespace(pid=taker.pid, alive=True, started_at=warm_module.start_time(taker.pid))
        ended = SimpleNamespace(pid=taker.pid, alive=False, started_at=mine.started_at)
        before = SimpleNamespace(pid=taker.pid, alive=True, started_at="1")  # the pid's last owner started at tick 1
        assert agent_module._living([mine]) == {taker.pid}
        assert agent_module._living([ended]) == set() == agent_module._living([before])
    finally:
        taker.kill()
        taker.wait()
