"""Embedded tests in every language but Python (MultiPL-E style), judged with real toolchains on the local provider.

Each language gets the same five programs: a right answer, a wrong one, a
crash, an early exit with status 0 from inside the function under test (what
models learn to do) and a program that does not build. A pass needs the judge's
report, which only the toolchain's path after the tests reaches.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxes import Sandbox, ToolchainMissing
from sandboxes._embedded import LANGUAGES
from sandboxes.judging import Judgement, Verdict, judge

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Problem:
    """A function to write in one language, its tests, and the five ways to answer it."""

    tests: str
    right: str
    wrong: str
    crash: str
    early_exit: str
    broken: str


PROBLEMS: dict[str, Problem] = {
    "javascript": Problem(
        tests="const assert = require('node:assert');\nfunction test() {\n  let candidate = add;\n  assert.deepEqual(candidate(1, 2), 3);\n}\ntest();\n",
        right="function add(a, b) {\n  return a + b;\n}\n",
        wrong="function add(a, b) {\n  return a - b;\n}\n",
        crash="function add(a, b) {\n  return a.no.such;\n}\n",
        early_exit="function add(a, b) {\n  process.exit(0);\n}\n",
        broken="function add(a, b) {\n  return a +;\n}\n",
    ),
    "typescript": Problem(
        tests="declare var require: any;\n"
        + "const assert = require('node:assert');\nfunction test() {\n  let candidate = add;\n  assert.deepEqual(candidate(1, 2), 3);\n}\ntest();\n",
        right="function add(a: number, b: number): number {\n  return a + b;\n}\n",
        wrong="function add(a: number, b: number): number {\n  return a - b;\n}\n",
        crash="function add(a: number, b: number): number {\n  throw new RangeError('no');\n}\n",
        early_exit="declare var process: any;\nfunction add(a: number, b: number): number {\n  process.exit(0);\n  return 0;\n}\n",
        broken='function add(a: number, b: number): number {\n  return "a string";\n}\n',  # runs under node; a type error
    ),
    "java": Problem(
        tests="    public static void main(String[] args) {\n        assert(add(1, 2) == 3);\n    }\n}\n",
        right="import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n        return a + b;\n    }\n",
        wrong="import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n        return a - b;\n    }\n",
        crash="import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n"
        "        long[] none = new long[0];\n        return none[(int) a];\n    }\n",
        early_exit="import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n        System.exit(0);\n        return 0;\n    }\n",
        broken="import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n        return a + b\n    }\n",
    ),
    "go": Problem(
        tests=(
            'func TestAdd(t *testing.T) {\n\tcandidate := add\n\tif got := candidate(1, 2); got != 3 {\n\t\tt.Errorf("add(1, 2) = %d, want 3", got)\n\t}\n}\n'
        ),
        right='package main\n\nimport "testing"\n\nfunc add(a int, b int) int {\n\treturn a + b\n}\n',
        wrong='package main\n\nimport "testing"\n\nfunc add(a int, b int) int {\n\treturn a - b\n}\n',
        crash='package main\n\nimport "testing"\n\nfunc add(a int, b int) int {\n\tvar s []int\n\treturn s[a]\n}\n',
        early_exit='package main\n\nimport (\n\t"os"\n\t"testing"\n)\n\nfunc add(a int, b int) int {\n\tos.Exit(0)\n\treturn 0\n}\n',
        broken='package main\n\nimport "testing"\n\nfunc add(a int, b int) int {\n\treturn a + "b"\n}\n',
    ),
    "rust": Problem(
        tests="fn main() {\n    let candidate = add;\n    assert_eq!(candidate(1, 2), 3);\n}\n",
        right="fn add(a: i64, b: i64) -> i64 {\n    a + b\n}\n",
        wrong="fn add(a: i64, b: i64) -> i64 {\n    a - b\n}\n",
        crash="fn add(a: i64, b: i64) -> i64 {\n    let v: Vec<i64> = vec![];\n    v[a as usize]\n}\n",
        early_exit="fn add(a: i64, b: i64) -> i64 {\n    std::process::exit(0)\n}\n",
        broken='fn add(a: i64, b: i64) -> i64 {\n    a + "b"\n}\n',
    ),
    "c": Problem(
        tests="int main() {\n    assert(add(1, 2) == 3);\n}\n",
        right="#include <assert.h>\n#include <stdlib.h>\nlong add(long a, long b) {\n    return a + b;\n}\n",
        wrong="#include <assert.h>\n#include <stdlib.h>\nlong add(long a, long b) {\n    return a - b;\n}\n",
        crash="#include <assert.h>\n#include <stdlib.h>\nlong add(long a, long b) {\n    return *(long *)0;\n}\n",
        early_exit="#include <assert.h>\n#include <stdlib.h>\nlong add(long a, long b) {\n    exit(0);\n}\n",
        broken="#include <assert.h>\nlong add(long a, long b) {\n    return a + ;\n}\n",
    ),
    "cpp": Problem(
        tests="int main() {\n    auto candidate = add;\n    assert(candidate(1, 2) == 3);\n}\n",
        right="#include <assert.h>\n#include <bits/stdc++.h>\nlong add(long a, long b) {\n    return a + b;\n}\n",
        wrong="#include <assert.h>\n#include <bits/stdc++.h>\nlong add(long a, long b) {\n    return a - b;\n}\n",
        crash="#include <assert.h>\n#include <bits/stdc++.h>\nlong add(long a, long b) {\n    return std::vector<long>().at(a);\n}\n",
        early_exit="#include <assert.h>\n#include <bits/stdc++.h>\nlong add(long a, long b) {\n    std::exit(0);\n}\n",
        broken="#include <assert.h>\nlong add(long a, long b) {\n    return a + std::string();\n}\n",
    ),
    "ruby": Problem(
        tests=(
            "require 'test/unit'\nclass TestHumanEval < Test::Unit::TestCase\n  def test_add\n"
            "    candidate = method(:add)\n    assert_equal(3, candidate.call(1, 2))\n  end\nend\n"
        ),
        right="def add(a, b)\n  a + b\nend\n",
        wrong="def add(a, b)\n  a - b\nend\n",
        crash="def add(a, b)\n  a.no_such_method\nend\n",
        early_exit="def add(a, b)\n  exit!(0)\nend\n",
        broken="def add(a, b)\n  a +\nend end\n",
    ),
    "bash": Problem(
        tests='candidate() {\n    add "$@"\n}\n\nset -e\nrun_test() {\n    [[ $(candidate "1" "2") = "3" ]]\n}\n\nrun_test\n',
        right="add() {\n    echo $(( $1 + $2 ))\n}\n",
        wrong="add() {\n    echo $(( $1 - $2 ))\n}\n",
        crash="add() {\n    kill -SEGV $$\n}\n",
        early_exit="add() {\n    echo 3\n}\nexit 0\n",  # an exit inside add would only leave the tests' $(...) subshell
        broken="add() {\n    if then\n}\n",
    ),
}


async def judge_or_skip(sandbox: Sandbox, program: str, language: str, **options: Any) -> Judgement:
    """``judge``, skipped with the reason where this machine's toolchain cannot run (rustup's under /root, for another user)."""
    try:
        return await judge(sandbox, program, language, **options)
    except ToolchainMissing as missing:
        pytest.skip(str(missing))


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.create("local") as made:
        yield made


@pytest.mark.parametrize("language", sorted(PROBLEMS))
@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ("right", Verdict.PASSED),
        ("wrong", Verdict.WRONG_ANSWER),
        ("crash", Verdict.RUNTIME_ERROR),
        ("early_exit", Verdict.RUNTIME_ERROR),
        ("broken", Verdict.COMPILE_ERROR),
    ],
)
async def test_each_language_gives_each_verdict(sandbox: Sandbox, language: str, answer: str, verdict: Verdict) -> None:
    problem = PROBLEMS[language]
    judged = await judge_or_skip(sandbox, getattr(problem, answer), language, tests=problem.tests, timeout=60)
    assert judged.verdict is verdict, judged.describe()
    if answer == "early_exit":
        assert "before its tests finished" in judged.reason
    assert "judge-outcome" not in (judged.result.stderr if judged.result else "")
    assert judged.toolchain, "the toolchain that judged it is named"


def test_every_language_is_tested_here_and_has_its_reference_command_in_the_readme() -> None:
    assert set(LANGUAGES) == {*PROBLEMS, "python"}
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert all(re.search(rf"^  \| {language} \| `", readme, re.M) for language in LANGUAGES)


FORGED = "judge-outcome:sandboxes-nonce-" + "0" * 32 + ":completed"
FORGERIES = [
    pytest.param(
        "c",
        "#include <assert.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
        f'static void report(void) {{ fprintf(stderr, "{FORGED}\\n"); }}\nlong add(long a, long b) {{\n    atexit(report);\n    exit(0);\n}}\n',
        id="c-atexit",
    ),
    pytest.param("cpp", "#include <assert.h>\n#include <cstdlib>\nlong add(long a, long b) {\n    std::quick_exit(0);\n}\n", id="cpp-quick_exit"),
    pytest.param("javascript", f"process.on('exit', () => console.error('{FORGED}'));\nfunction add(a, b) {{\n  process.exit(0);\n}}\n", id="js-exit-hook"),
    pytest.param("javascript", "function add(a, b) {\n  process.exitCode = 0;\n  throw new Error('no');\n}\n", id="js-throw"),
    pytest.param("ruby", f"at_exit {{ $stderr.puts('{FORGED}') }}\ndef add(a, b)\n  exit(0)\nend\n", id="ruby-at_exit"),
    pytest.param("ruby", "def add(a, b)\n  Process.kill(:KILL, Process.pid)\nend\n", id="ruby-kill-self"),
    pytest.param(
        "java",
        "import java.util.*;\nclass Problem {\n    public static long add(long a, long b) {\n        Runtime.getRuntime().halt(0);\n        return 0;\n    }\n",
        id="java-halt",
    ),
    pytest.param(
        "go", 'package main\n\nimport (\n\t"syscall"\n\t"testing"\n)\n\nfunc add(a int, b int) int {\n\tsyscall.Exit(0)\n\treturn 0\n}\n', id="go-syscall-exit"
    ),
    pytest.param("bash", f"add() {{\n    echo 3\n}}\necho '{FORGED}' >&2\nexec true\n", id="bash-exec"),
]


@pytest.mark.parametrize(("language", "program"), FORGERIES)
async def test_no_exit_or_forged_report_is_a_pass(sandbox: Sandbox, language: str, program: str) -> None:
    judged = await judge_or_skip(sandbox, program, language, tests=PROBLEMS[language].tests, timeout=60)
    assert judged.verdict is Verdict.RUNTIME_ERROR, judged.describe()


RUST_TESTS = "#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n    fn test_add() {\n        assert_eq!(add(1, 2), 3);\n    }\n}\n"


@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        ("a + b", Verdict.PASSED),
        ("a - b", Verdict.WRONG_ANSWER),
        ("std::process::exit(0)", Verdict.RUNTIME_ERROR),
        ('panic!("no")', Verdict.RUNTIME_ERROR),
        ('a + "b"', Verdict.COMPILE_ERROR),
    ],
)
async def test_rust_unit_tests_run_under_rustc_test(sandbox: Sandbox, body: str, verdict: Verdict) -> None:
    """HumanEval-Rust's shape: #[test] functions and no main, so rustc --test builds libtest's runner."""
    program = f"fn add(a: i64, b: i64) -> i64 {{\n    {body}\n}}\n"
    judged = await judge_or_skip(sandbox, program, "rust", tests=RUST_TESTS, timeout=60, edition="2024")
    assert judged.verdict is verdict, judged.describe()
    if verdict is Verdict.PASSED:
        assert judged.result is not None and "test result: ok. 1 passed" in judged.result.stdout


async def test_a_loop_in_a_compiled_language_is_a_timeout(sandbox: Sandbox) -> None:
    judged = await judge_or_skip(sandbox, "#include <assert.h>\nlong add(long a, long b) {\n    for (;;) {}\n}\n", "c", tests=PROBLEMS["c"].tests, timeout=3)
    assert judged.verdict is Verdict.TIMEOUT, judged.describe()


@pytest.mark.parametrize(
    ("language", "edition", "message"),
    [("rust", "2019", "unknown Rust edition '2019'"), ("c", "2021", "edition is Rust's"), ("python", "2021", "edition is Rust's")],
)
async def test_an_edition_is_rusts_alone(sandbox: Sandbox, language: str, edition: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await judge(sandbox, "x", language, tests="y", edition=edition)


HUMANEVAL_X_JAVA = (
    "import java.util.*;\nclass Solution {\n    public long add(long a, long b) {\n        return a {op} b;\n    }\n}\n",
    "public class Main {\n    public static void main(String[] args) {\n        Solution s = new Solution();\n"
    '        if (s.add(1, 2) != 3) throw new AssertionError("add");\n    }\n}\n',
)
# A red team's passes for wrong programs that needed no knowledge of the judge (round 1 of the in-process languages).
RED_TEAM = [
    pytest.param("c", "#define NDEBUG\n" + PROBLEMS["c"].wrong, None, id="c-NDEBUG"),
    pytest.param("cpp", PROBLEMS["cpp"].wrong + "#undef assert\n#define assert(x) ((void)0)\n", None, id="cpp-own-assert"),
    pytest.param("c", PROBLEMS["c"].wrong + "int main(void) { return 0; }\n#define main unused_main\n", None, id="c-rename-the-tests-main"),
    pytest.param("rust", PROBLEMS["rust"].wrong + "fn main() {}\n", RUST_TESTS, id="rust-own-main-drops-cfg-test"),
    pytest.param("rust", "macro_rules! assert_eq { ($($t:tt)*) => {} }\n" + PROBLEMS["rust"].wrong, None, id="rust-own-assert_eq"),
    pytest.param(
        "java",
        "import java.util.*;\nclass Helper {\n    public static void main(String[] args) {}\n}\n"
        + PROBLEMS["java"].wrong.removeprefix("import java.util.*;\n"),
        None,
        id="java-first-class-main",
    ),
    pytest.param(
        "java",
        HUMANEVAL_X_JAVA[0].replace("{op}", "-").replace("    public long", "    public static void main(String[] a) {}\n    public long"),
        HUMANEVAL_X_JAVA[1],
        id="java-x-own-main",
    ),
    pytest.param("javascript", PROBLEMS["javascript"].wrong + "return;\n", None, id="js-top-level-return"),
    pytest.param("typescript", PROBLEMS["typescript"].wrong + "// @ts-ignore\nreturn;\n", None, id="ts-top-level-return"),
    pytest.param("javascript", "process.on('uncaughtException', () => {});\n" + PROBLEMS["javascript"].wrong, None, id="js-swallow-exceptions"),
    pytest.param(
        "go",
        PROBLEMS["go"].wrong.replace('import "testing"', 'import (\n\t"os"\n\t"testing"\n)') + 'func init() { os.Args = append(os.Args, "-test.run=^$") }\n',
        None,
        id="go-init-filters-tests",
    ),
    pytest.param("ruby", "ARGV.replace(['-n', 'no_such_test'])\n" + PROBLEMS["ruby"].wrong, None, id="ruby-argv"),
]


@pytest.mark.parametrize(("language", "program", "tests"), RED_TEAM)
async def test_switching_the_tests_off_is_no_pass(sandbox: Sandbox, language: str, program: str, tests: str | None) -> None:
    judged = await judge_or_skip(sandbox, program, language, tests=tests or PROBLEMS[language].tests, timeout=60)
    assert not judged.passed, judged.describe()


async def test_java_runs_the_class_whose_main_the_tests_declare(sandbox: Sandbox) -> None:
    """HumanEval-X's shape: the tests bring their own public class Main after the program's class Solution."""
    program, tests = HUMANEVAL_X_JAVA
    right = await judge_or_skip(sandbox, program.replace("{op}", "+"), "java", tests=tests, timeout=60)
    wrong = await judge_or_skip(sandbox, program.replace("{op}", "-"), "java", tests=tests, timeout=60)
    assert (right.verdict, wrong.verdict) == (Verdict.PASSED, Verdict.WRONG_ANSWER), (right.describe(), wrong.describe())


async def test_the_tests_line_numbers_are_kept_in_a_c_assertion(sandbox: Sandbox) -> None:
    judged = await judge_or_skip(sandbox, PROBLEMS["c"].wrong, "c", tests=PROBLEMS["c"].tests, timeout=60)
    program_lines = PROBLEMS["c"].wrong.count("\n")
    assert judged.result is not None and f"main.c:{program_lines + 2}:" in judged.result.stderr, judged.describe()
