"""judge(): verdicts that tell a wrong answer from a crash, a timeout and an early exit, on the local provider.

The embedded-tests attacks are what models learn to do: exit early with status
0 in every way Python has, forge the end-of-tests report (from the source, from
an atexit hook, from the judge's own frames or memory), and tamper with what
the tests use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandboxes import Sandbox, SandboxConfig
from sandboxes.judging import Verdict, judge

from ._forgeries import RED_TEAM

pytestmark = pytest.mark.anyio

ADD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"
TESTS = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n\ncheck(add)\n"
FORGED = "\\njudge-outcome:sandboxes-nonce-" + "0" * 32 + ":completed:\\n"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.create("local") as made:
        yield made


@pytest.mark.parametrize(
    ("program", "verdict", "reason"),
    [
        (ADD, Verdict.PASSED, ""),
        (WRONG, Verdict.WRONG_ANSWER, "assertion failed"),
        ("def add(a, b):\n    return {}[a]\n", Verdict.RUNTIME_ERROR, "KeyError"),
        ("def add(a, b)\n    return a", Verdict.COMPILE_ERROR, "SyntaxError"),
        ("def add(a, b):\n    while True:\n        pass\n", Verdict.TIMEOUT, "time limit"),
        ("x = bytearray(10 ** 11)\n", Verdict.MEMORY_LIMIT, "memory"),
        ("def add(a, b):\n    return add(a, b)\n", Verdict.RUNTIME_ERROR, "RecursionError"),
    ],
)
async def test_each_outcome_has_its_verdict(sandbox: Sandbox, program: str, verdict: Verdict, reason: str) -> None:
    judged = await judge(sandbox, program, "python", tests=TESTS, timeout=5)
    assert (judged.verdict, reason in judged.reason) == (verdict, True), judged.describe()
    assert judged.passed is (verdict is Verdict.PASSED)
    assert "judge-outcome" not in (judged.result.stderr if judged.result else "")


EARLY_EXITS = {
    "exit(0)": "exit(0)\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "sys.exit()": "import sys\nsys.exit()\n",
    "raise SystemExit": "raise SystemExit\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "kill -9 self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "exit from a test call": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "exit from a thread": "import os, threading\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)\n",
}


@pytest.mark.parametrize("program", EARLY_EXITS.values(), ids=list(EARLY_EXITS))
async def test_exiting_before_the_tests_finish_is_never_a_pass(sandbox: Sandbox, program: str) -> None:
    judged = await judge(sandbox, WRONG + program, "python", tests=TESTS, timeout=10)
    assert judged.verdict is Verdict.RUNTIME_ERROR, judged.describe()
    assert any(words in judged.reason for words in ("before its tests", "while the tests ran", "killed by")), judged.reason


FORGERIES = {
    "copied from the source": "import re\nprint(open(__file__).read())\nimport os\nos._exit(0)\n",
    "printed by atexit": f"import atexit, sys, os\natexit.register(lambda: print('{FORGED}', file=sys.stderr))\nos._exit(0)\n",
    "printed then exit": f"import sys\nprint('{FORGED}', file=sys.stderr)\nsys.exit(0)\n",
    "the nonce from the judge's frames": (
        "import sys, os\nf = sys._getframe()\nwhile f:\n    n = f.f_locals.get('nonce')\n    if n:\n"
        "        os.write(2, ('\\njudge-outcome:%s:completed:\\n' % n).encode()); os._exit(0)\n    f = f.f_back\n"
    ),
    "the nonce from other threads' frames": "import sys\nfor frame in sys._current_frames().values():\n    print(frame.f_locals)\n",
    "the judge's state through gc": "import gc\nfor o in gc.get_objects():\n    if isinstance(o, list) and not o:\n        o.append(True)\n",
    "the completion event raised by hand": "import sys\nsys.audit('judge.completed')\nsys.audit('judge.restore')\n",
    "the harness read from disk": "print(open('_judge_harness.py').read()[:100])\n",
    "stdin read for the nonce": "import sys\nprint(sys.stdin.read())\n",
    "its own memory through a link": "import os\nos.symlink('/proc/self/mem', '/tmp/judge-mem')\nopen('/tmp/judge-mem', 'rb').read(1)\n",
    "its memory from a child": "import os, subprocess\nsubprocess.run(['head', '-c', '1', '/proc/%d/mem' % os.getpid()], check=True)\n",
    "ctypes": "import ctypes\nctypes.CDLL(None)\n",
    "a replaced code object": "import threading\nt = threading.current_thread()\n(lambda: 0).__code__ = (lambda: 1).__code__\n",
    **RED_TEAM,  # found by a red team against the first, single-process harness
}


@pytest.mark.parametrize("program", FORGERIES.values(), ids=list(FORGERIES))
async def test_the_end_of_tests_report_cannot_be_forged(sandbox: Sandbox, program: str) -> None:
    judged = await judge(sandbox, WRONG + program, "python", tests=TESTS, timeout=10)
    assert judged.verdict is not Verdict.PASSED, judged.describe()


async def test_a_stop_iteration_from_the_program_never_ends_the_tests_early(sandbox: Sandbox) -> None:
    # Raised inside the tests' map(), a StopIteration would end it as if exhausted: all() of nothing is True.
    tests = "assert all(map(lambda case: add(*case[0]) == case[1], [((1, 2), 3), ((2, 2), 4)]))\n"
    assert (await judge(sandbox, "def add(a, b):\n    return a + b\n", "python", tests=tests)).passed
    judged = await judge(sandbox, "def add(a, b):\n    raise StopIteration\n", "python", tests=tests)
    assert not judged.passed and "StopIteration" in judged.describe(), judged.describe()


SEARCH_FOR_THE_TESTS = """\
import os, sys
MARK = b"the-expected-" + b"answer"  # split: this program's own text must not hold it
found = []
frame = sys._getframe().f_back  # its callers, not its own globals (MARK)
while frame is not None:  # up its own stack: the judge's frames, as they were at the fork
    for value in list(frame.f_locals.values()):
        text = value if isinstance(value, bytes) else value.encode() if isinstance(value, str) else b""
        if MARK in text or "_judge_tests" in getattr(value, "co_filename", ""):
            found.append("in a frame")
    frame = frame.f_back
for fd in os.listdir("/proc/self/fd"):
    try:
        if "_judge_tests" in os.readlink("/proc/self/fd/" + fd):
            found.append("an open file")
    except OSError:
        pass
try:
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as memory:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if "rw" in line.split()[1] and end - start < 1 << 28:
                try:
                    memory.seek(start)
                    if MARK in memory.read(end - start):
                        found.append("in its memory")
                except (OSError, ValueError, OverflowError):
                    pass
except OSError:
    pass
print("FOUND" if found else "NOTHING", found)


def add(a, b):
    return 0
"""


async def test_the_program_finds_the_tests_nowhere_it_can_look(sandbox: Sandbox) -> None:
    # Its process is a fork of the judge's: had the judge read or compiled the tests before the
    # fork, their text and code would be up the program's own stack, and in its memory.
    judged = await judge(sandbox, SEARCH_FOR_THE_TESTS, "python", tests="assert add(1, 2) == 3, 'the-expected-answer'\n", timeout=30)
    assert judged.result is not None and "NOTHING []" in judged.result.stdout, judged.describe()
    assert judged.verdict is Verdict.WRONG_ANSWER, judged.describe()


REACH_THE_JUDGE = """\
import os

JUDGE = os.getppid()


def opened(name):
    try:
        os.close(os.open("/proc/%d/%s" % (JUDGE, name), os.O_RDONLY))
    except OSError:
        return False
    return True


def add(a, b):
    return [name for name in ("mem", "environ", "maps") if opened(name)] or a + b
"""


@pytest.mark.parametrize("warm", [True, False], ids=["forked-warm", "cold"])
async def test_the_program_cannot_open_the_judges_memory(warm: bool) -> None:
    # Forked warm, the judge is undumpable from the zygote on; started cold, it makes itself so
    # before the program's process exists. Either way its /proc files are closed to the program.
    from sandboxes.providers.local import LocalProvider

    provider = LocalProvider(warm_python=warm)
    async with Sandbox(provider, await provider.create_sandbox(SandboxConfig())) as made:
        for _ in range(2):  # the second judgement warm: a zygote that already served one
            judged = await judge(made, REACH_THE_JUDGE, "python", tests=TESTS)
            assert judged.passed, judged.describe()


async def test_a_value_that_is_not_plain_data_never_reaches_the_tests(sandbox: Sandbox) -> None:
    always_equal = (
        "class Equal(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\ndef add(a, b):\n    return Equal(a - b)\n"
    )
    judged = await judge(sandbox, always_equal, "python", tests=TESTS)
    assert (judged.verdict, "not plain data" in judged.reason) == (Verdict.RUNTIME_ERROR, True), judged.describe()


async def test_a_builtin_the_program_shadows_is_still_the_builtin_in_the_tests(sandbox: Sandbox) -> None:
    shadowing = WRONG + "\ndef abs(x):\n    return 0\n"
    judged = await judge(sandbox, shadowing, "python", tests="assert abs(add(1, 2) - 3) < 1e-9\n")
    assert judged.verdict is Verdict.WRONG_ANSWER, judged.describe()


async def test_the_program_cannot_read_the_tests(sandbox: Sandbox) -> None:
    peeking = "import os\nSEEN = os.path.exists('_judge_tests.py')\ndef add(a, b):\n    assert not SEEN, 'the tests were readable'\n    return a + b\n"
    judged = await judge(sandbox, peeking, "python", tests=TESTS)
    assert judged.passed, judged.describe()


async def test_tests_that_hand_the_program_a_function_are_refused_clearly(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="cannot be judged as embedded tests"):
        await judge(sandbox, "def apply(f, x):\n    return f(x)\n", "python", tests="assert apply(lambda v: v + 1, 1) == 2\n")


async def test_builtins_the_program_patched_are_restored_before_the_tests(sandbox: Sandbox) -> None:
    tampering = "import builtins\nbuiltins.all = lambda values: True\n" + WRONG
    tests = "def check(candidate):\n    assert all([candidate(1, 2) == 3])\n\ncheck(add)\n"
    assert (await judge(sandbox, tampering, "python", tests=tests)).verdict is Verdict.WRONG_ANSWER


async def test_the_program_runs_as_python3_main_py_would_run_it(sandbox: Sandbox) -> None:
    program = (
        "import sys, __main__, collections, logging\n"
        "assert __name__ == '__main__' and __main__.__file__.endswith('main.py') and sys.argv == ['main.py']\n"
        "Point = collections.namedtuple('Point', 'x y')\nlogging.basicConfig()\n"
        "def add(a, b):\n    return Point(a, b).x + b\n"
    )
    judged = await judge(sandbox, program, "python", tests=TESTS)
    assert judged.passed, judged.describe()


async def test_the_program_finds_only_the_modules_python3_main_py_starts_with(sandbox: Sandbox) -> None:
    """The judge imports nothing into the program's process: each module would cost every run, and show."""
    listing = "import sys\nMODULES = sorted(sys.modules)\n"
    fresh = await sandbox.run_code(listing + "print(' '.join(MODULES))\n", "python")
    assert fresh.success, fresh.stderr
    tests = f"assert sorted(set(MODULES) - set({fresh.stdout.split()!r})) == []\n"
    judged = await judge(sandbox, listing, "python", tests=tests)
    assert judged.passed, judged.describe()


async def test_a_failing_test_shows_where_in_the_program_and_the_tests(sandbox: Sandbox) -> None:
    judged = await judge(sandbox, WRONG, "python", tests=TESTS)
    assert judged.result is not None
    assert "_judge_tests.py" in judged.result.stderr and "AssertionError" in judged.result.stderr
    assert "_judge_harness" not in judged.result.stderr


# -- stdin/stdout cases ------------------------------------------------------------------------------
DOUBLE = {
    "python": "print(int(input()) * 2)",
    "c": '#include <stdio.h>\nint main(void) { int n; scanf("%d", &n); printf("%d\\n", n * 2); return 0; }\n',
    "javascript": "const n = parseInt(require('fs').readFileSync(0, 'utf8')); console.log(n * 2);",
    "bash": "read n; echo $((n * 2))",
}


@pytest.mark.parametrize("language", DOUBLE)
async def test_cases_name_the_first_failing_one(sandbox: Sandbox, language: str) -> None:
    passing = await judge(sandbox, DOUBLE[language], language, cases=[("2\n", "4\n"), ("21\n", "42\n")])
    assert passing.passed and passing.cases == [Verdict.PASSED, Verdict.PASSED], passing.describe()
    failing = await judge(sandbox, DOUBLE[language], language, cases=[("2\n", "4\n"), ("3\n", "7\n"), ("4\n", "8\n")])
    assert (failing.verdict, failing.failing_case) == (Verdict.WRONG_ANSWER, 1)


async def test_a_build_that_fails_is_a_compile_error(sandbox: Sandbox) -> None:
    judged = await judge(sandbox, "int main(void) { return 0", "c", expected_stdout="")
    assert judged.verdict is Verdict.COMPILE_ERROR and judged.result is not None and "error" in judged.result.stderr


async def test_a_crash_a_timeout_and_a_flood(sandbox: Sandbox) -> None:
    crash = await judge(sandbox, "#include <stdlib.h>\nint main(void) { abort(); }\n", "c", expected_stdout="")
    assert (crash.verdict, crash.reason) == (Verdict.RUNTIME_ERROR, "killed by SIGABRT")
    slow = await judge(sandbox, "while True: pass", "python", expected_stdout="", timeout=1)
    assert slow.verdict is Verdict.TIMEOUT
    flood = await judge(sandbox, "print('x' * (3 << 20))", "python", expected_stdout="x\n")
    assert flood.verdict is Verdict.OUTPUT_LIMIT


@pytest.mark.parametrize(
    ("compare", "expected", "printed", "passes"),
    [
        ("exact", "1 2\n", "1 2\n", True),
        ("exact", "1 2\n", "1 2 \n", False),
        ("whitespace", "1 2\n", "1 2   \n\n\n", True),
        ("whitespace", "1 2\n", "1  2\n", False),
        ("float:1e-6", "0.3333333\n", "0.33333331\n", True),
        ("float:1e-6", "0.3333\n", "0.3334\n", False),
        ("float:1e-6", "nan\n", "nan\n", True),
        (lambda expected, actual: actual.strip().lower() == expected.strip().lower(), "YES", "yes\n", True),
    ],
)
async def test_compare_modes(sandbox: Sandbox, compare: object, expected: str, printed: str, passes: bool) -> None:
    judged = await judge(sandbox, f"import sys\nsys.stdout.write({printed!r})", "python", expected_stdout=expected, compare=compare)  # type: ignore[arg-type]
    assert judged.passed is passes, judged.describe()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tests": "pass", "expected_stdout": "x"}, "not both"),
        ({}, "nothing to judge by"),
        ({"expected_stdout": "x", "compare": "fuzzy"}, "compare must be"),
        ({"expected_stdout": "x", "compare": "float:abc"}, "tolerance"),
    ],
)
async def test_a_bad_request_is_a_clear_error(sandbox: Sandbox, options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await judge(sandbox, "print(1)", "python", **options)  # type: ignore[arg-type]


async def test_judgements_replay_from_a_cassette_with_the_same_verdicts(tmp_path: object) -> None:
    from pathlib import Path

    from sandboxes.cassette import Cassette, cassette_provider
    from sandboxes.providers.local import LocalProvider

    path = Path(str(tmp_path)) / "judged.yaml"
    verdicts, cpu_times = [], []
    for mode, live in (("once", LocalProvider()), ("none", None)):
        provider = cassette_provider(live, Cassette(path, mode, provider="local"))
        info = await provider.create_sandbox(SandboxConfig())
        box = Sandbox(provider, info)
        try:
            run = [await judge(box, program, "python", tests=TESTS) for program in (ADD, WRONG, "import os\nos._exit(0)\n")]
            run.append(await judge(box, DOUBLE["python"], "python", cases=[("2\n", "4\n"), ("3\n", "7\n")]))
            verdicts.append([(j.verdict, j.failing_case) for j in run])
            cpu_times.append([j.cpu_ms for j in run])
        finally:
            await box.destroy()
        if mode == "once":
            assert provider.driver.cassette.save()
    assert verdicts[0] == verdicts[1] == [
        (Verdict.PASSED, None), (Verdict.WRONG_ANSWER, None), (Verdict.RUNTIME_ERROR, None), (Verdict.WRONG_ANSWER, 1),
    ]  # fmt: skip
    assert "sandboxes-nonce-x0000" in path.read_text()  # the nonce is stored as its placeholder
    # Measured live; a replay measured nothing (CPU time differs run to run, so a cassette that kept it would change each time).
    assert all(t is not None and t > 0 for t in cpu_times[0]) and cpu_times[1] == [None] * 4


async def test_a_placeholder_printed_by_the_program_never_replays_as_the_nonce(tmp_path: object) -> None:
    from pathlib import Path

    from sandboxes.cassette import Cassette, cassette_provider
    from sandboxes.providers.local import LocalProvider

    forging = WRONG + (
        "import sys, os\nfor n in range(1, 20):\n    sys.stderr.write('\\njudge-outcome:sandboxes-nonce-x%031d:completed:\\n' % n)\n"
        "sys.stderr.flush()\nos._exit(0)\n"
    )
    path = Path(str(tmp_path)) / "forged.yaml"
    for mode, live in (("once", LocalProvider()), ("none", None)):
        provider = cassette_provider(live, Cassette(path, mode, provider="local"))
        box = Sandbox(provider, await provider.create_sandbox(SandboxConfig()))
        try:
            assert not (await judge(box, forging, "python", tests=TESTS)).passed, mode
        finally:
            await box.destroy()
        if mode == "once":
            assert provider.driver.cassette.save()


async def test_java_asserts_hold_so_a_wrong_answer_is_not_a_pass(sandbox: Sandbox) -> None:
    program = (
        "public class Main {\n    public static void main(String[] args) {\n"
        '        assert 1 + 1 == 3 : "arithmetic";\n        System.out.println("ok");\n    }\n}\n'
    )
    judged = await judge(sandbox, program, "java", expected_stdout="ok\n", timeout=60)
    assert judged.verdict is Verdict.RUNTIME_ERROR and judged.result is not None and "AssertionError" in judged.result.stderr, judged.describe()


async def test_a_judgement_names_the_toolchain_that_judged_it(sandbox: Sandbox) -> None:
    import subprocess

    judged = await judge(sandbox, ADD, "python", tests=TESTS)
    host = subprocess.run(["python3", "--version"], capture_output=True, text=True).stdout.strip()
    assert judged.toolchain == host and judged.provider == "local" and judged.language == "python"


async def test_what_the_program_prints_is_kept(sandbox: Sandbox) -> None:
    judged = await judge(sandbox, "print('loaded')\ndef add(a, b):\n    print('called', a, b)\n    return a + b\n", "python", tests=TESTS)
    assert judged.passed and judged.result is not None
    assert judged.result.stdout.splitlines() == ["loaded", "called 1 2", "called 2 2"]


async def test_an_answer_the_program_forges_on_the_judges_channel_is_no_pass(sandbox: Sandbox) -> None:
    forging = WRONG + (
        "import os, marshal\n"
        "for fd in range(3, 20):\n"
        "    try:\n"
        "        data = marshal.dumps({'value': 3})\n"
        "        os.write(fd, len(data).to_bytes(8, 'big') + data + b'garbage')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    assert not (await judge(sandbox, forging, "python", tests=TESTS)).passed


TS_DOUBLE = (
    "import * as readline from 'readline';\n"
    "const lines: string[] = [];\n"
    "readline.createInterface({ input: process.stdin }).on('line', (line: string) => lines.push(line)).on('close', () => {\n"
    "  const n: number = parseInt(lines[0], 10);\n"
    "  console.log({typed} * 2);\n"
    "});\n"
)


async def test_typescript_cases_are_type_checked_without_node_types(sandbox: Sandbox) -> None:
    """A type error is a compile_error, as MultiPL-E's tsc has it; node's own names need no @types/node."""
    typed = await judge(sandbox, TS_DOUBLE.replace("{typed}", "n"), "typescript", cases=[("21\n", "42\n")], timeout=60)
    assert typed.verdict is Verdict.PASSED, typed.describe()
    mistyped = await judge(sandbox, TS_DOUBLE.replace("{typed}", "lines[0]"), "typescript", cases=[("21\n", "42\n")], timeout=60)
    assert mistyped.verdict is Verdict.COMPILE_ERROR and "TS2362" in (mistyped.result.stdout if mistyped.result else ""), mistyped.describe()
    assert typed.toolchain.startswith("Version"), typed.toolchain  # tsc's, which judged it
