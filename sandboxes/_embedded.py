"""Embedded tests in the languages other than Python: how each is assembled, built and run.

The tests are appended to the program, as MultiPL-E and HumanEval-X do, and
built and run as the bare toolchain would (the README gives each
language's reference command). One addition per language, an epilogue that the toolchain
reaches only after the tests returned: it reads the run's nonce from stdin and
reports ``judge-outcome:<nonce>:completed`` on stderr. An exit before the tests
end (``exit(0)``, ``System.exit(0)``, ``process.exit(0)``, ``os.Exit(0)``,
``std::process::exit(0)``, an ``at_exit`` hook) never reaches it, and the
source holds no nonce to copy, so neither is a pass.

- C, C++ and Rust link the epilogue around ``main`` (``-Wl,--wrap=main``): the
  program's own ``main`` (or libtest's) runs unchanged and returns to it;
- Java runs the first class's ``main`` from a launcher class, Go from a
  ``TestMain``, JavaScript and TypeScript from a ``beforeExit`` listener that
  ``node -r`` loads first; Ruby and bash append it to the source's end (Ruby's
  runs Test::Unit there instead of at exit).

What runs is decided by the tests, never the program: Rust's ``--test`` when
the tests hold ``#[test]``, Java's class the one whose ``main`` the tests
declare. The tests get the toolchain's own asserts (C and C++ re-include
``assert.h`` after the program, with ``NDEBUG`` and ``main`` undefined; Rust
tests call ``::std::assert_eq!``), and test filters the program set (Go's
flags, Ruby's ARGV) are undone. A red team's passes are regression tests.

The limit, unlike Python's two processes: here the tests share the program's
process. A program written against this judge can take the nonce from stdin
first, or patch what the tests use (Ruby's ``Integer#==``, node's ``assert``,
a bash function named ``set``), and forge a pass. Judge untrusted Python
through the two-process harness; for these languages the nonce stops the
generic cheats (early exit, copying a marker), not a targeted one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .languages import Language, Recipe

Argv = tuple[str, ...]

EDITIONS = ("2015", "2018", "2021", "2024")
DEFAULT_EDITION = "2021"

LANGUAGES = ("python", "javascript", "typescript", "java", "go", "rust", "c", "cpp", "ruby", "bash")
"""The languages whose embedded tests are judged (python by the two-process harness in ``judging``)."""

_C_EPILOGUE = r"""/* sandboxes judge: linked with -Wl,--wrap=main, so the program's main returns here. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#ifdef __cplusplus
extern "C" {
#endif
int __real_main(int argc, char **argv, char **envp);
int __wrap_main(int argc, char **argv, char **envp) {
    int status = __real_main(argc, argv, envp);
    char nonce[128];
    ssize_t got;
    if (status != 0) return status;
    fflush(stdout);
    got = read(0, nonce, sizeof nonce - 1);
    nonce[got > 0 ? got : 0] = 0;
    nonce[strcspn(nonce, "\r\n")] = 0;
    fprintf(stderr, "judge-outcome:%s:completed\n", nonce);
    fflush(stderr);
    return 0;
}
#ifdef __cplusplus
}
#endif
"""

_C_GUARD = """#undef NDEBUG
#undef main
#undef assert
#include <assert.h>
#line {line}
"""
"""Between the program and the tests: the program cannot switch ``assert`` off (``NDEBUG``, its own
``assert``) nor rename the tests' ``main``; ``#line`` keeps the tests' line numbers."""

_NODE_ENDED = 'Symbol.for("sandboxes.judge.tests-ended")'
_NODE_EPILOGUE = r"""// sandboxes judge: loaded first (node -r); reports when the event loop is done, which an exit skips,
// and only when the line after the tests ran (a top-level return or a swallowed exception skips it).
'use strict';
const fs = require('fs');
process.once('beforeExit', () => {
  if (globalThis[Symbol.for('sandboxes.judge.tests-ended')] !== true) return;
  let nonce = '';
  try { nonce = fs.readFileSync(0, 'utf8').trim(); } catch (error) { nonce = ''; }
  fs.writeSync(2, `judge-outcome:${nonce}:completed\n`);
});
"""

_JAVA_LAUNCHER = "SandboxesJudgeMain"
_JAVA_EPILOGUE = r"""// sandboxes judge: runs the program's main class, then reports; System.exit in it skips the report.
// The candidates, nearest the tests' main first: the first top-level class that declares a static main.
public class SandboxesJudgeMain {
    public static void main(String[] args) throws Throwable {
        java.lang.reflect.Method main = null;
        for (String name : args) {
            try {
                Class<?> type = Class.forName(name, false, SandboxesJudgeMain.class.getClassLoader());
                java.lang.reflect.Method found = type.getDeclaredMethod("main", String[].class);
                if (java.lang.reflect.Modifier.isStatic(found.getModifiers())) {
                    main = found;
                    break;
                }
            } catch (ClassNotFoundException | NoSuchMethodException | LinkageError error) {
                continue;
            }
        }
        if (main == null) throw new IllegalStateException("sandboxes judge: no class declares the tests' static main(String[])");
        main.setAccessible(true);
        try {
            main.invoke(null, (Object) new String[0]);
        } catch (java.lang.reflect.InvocationTargetException error) {
            throw error.getCause();
        }
        System.out.flush();
        String nonce = new java.io.BufferedReader(new java.io.InputStreamReader(System.in)).readLine();
        System.err.println("judge-outcome:" + (nonce == null ? "" : nonce.trim()) + ":completed");
        System.err.flush();
    }
}
"""

_GO_EPILOGUE = """// sandboxes judge: the tests run from here, and a report follows only when they all passed.
package {package}

import (
\t"bufio"
\t"flag"
\t"fmt"
\t"os"
\t"strings"
\t"testing"
)

func TestMain(m *testing.M) {{
\t// Every test runs: flags an init() put in os.Args or set (-test.run=^$) are undone.
\tos.Args = os.Args[:1]
\tflag.Parse()
\tflag.VisitAll(func(f *flag.Flag) {{
\t\tif strings.HasPrefix(f.Name, "test.") {{
\t\t\t_ = f.Value.Set(f.DefValue)
\t\t}}
\t}})
\tcode := m.Run()
\tif code == 0 {{
\t\tnonce, _ := bufio.NewReader(os.Stdin).ReadString('\\n')
\t\tfmt.Fprintf(os.Stderr, "judge-outcome:%s:completed\\n", strings.TrimSpace(nonce))
\t}}
\tos.Exit(code)
}}
"""

_RUBY_EPILOGUE = """
# sandboxes judge: the tests run here (not at exit), then the report; an exit before this line is not a pass.
if defined?(Test::Unit::AutoRunner) && Test::Unit::AutoRunner.need_auto_run?
  Test::Unit::AutoRunner.need_auto_run = false
  ARGV.clear # options the program put there would choose which tests run
  exit(false) unless Test::Unit::AutoRunner.run
end
$stdout.flush
$stderr.write("judge-outcome:#{$stdin.read.to_s.strip}:completed\\n")
$stderr.flush
"""

_BASH_EPILOGUE = """
# sandboxes judge: reached only when the tests above ran to here.
read -r __sandboxes_judge_nonce || true
printf 'judge-outcome:%s:completed\\n' "$__sandboxes_judge_nonce" >&2
"""

_C_MAIN = "_judge_main.c"
_NODE_FIRST = "_judge_first.js"
_TSC = ("tsc", "--target", "es2022", "--module", "commonjs", "--outDir", ".build")  # exits non-zero on a type error


@dataclass(frozen=True)
class Plan:
    """One program with its tests, ready for ``prepare_code``: the language to build it as, its text, its helper files."""

    language: Language
    source: str
    files: dict[str, str]
    assertion: re.Pattern[str] | None
    """Output that says a test's assertion failed (a ``wrong_answer``); any other failure is a ``runtime_error``.
    None: every failing exit status is a test's (bash tests fail the script with ``set -e``), and a signal a crash."""
    crash: re.Pattern[str] | None = None
    """Output that says the program crashed, even where an assertion's failure shows too (a panicking Go test)."""

    def assertion_failed(self, output: str, exit_code: int) -> bool:
        if self.assertion is None:
            return 0 < exit_code < 128
        return bool(self.assertion.search(output)) and not (self.crash and self.crash.search(output))


def plan(language: Language, program: str, tests: str, edition: str | None = None) -> Plan:
    """How to judge ``program`` with its embedded ``tests`` in ``language`` (not python, which has its own harness)."""
    program = program.rstrip("\n") + "\n"
    tests = tests if tests.endswith("\n") else tests + "\n"
    source = program + tests
    name = language.name
    if edition is not None and name != "rust":
        raise ValueError(f"edition is Rust's (rustc --edition), not {name}'s; leave it out")
    if name in ("c", "cpp"):
        compiler = "gcc" if name == "c" else "g++"
        file = "main.c" if name == "c" else "main.cpp"
        libm = ("-lm",) if name == "c" else ()
        build = (compiler, "-O1", "-o", "{out}", file, _C_MAIN, *libm, "-Wl,--wrap=main")
        pattern = re.compile(r"Assertion [`'].*' failed")
        guarded = program + _C_GUARD.format(line=program.count("\n") + 1) + tests
        return _plan(language, file, guarded, (compiler,), (build,), ("{out}",), {_C_MAIN: _C_EPILOGUE}, pattern)
    if name == "rust":
        edition = edition or DEFAULT_EDITION
        if edition not in EDITIONS:
            raise ValueError(f"unknown Rust edition {edition!r}: use one of {', '.join(EDITIONS)}")
        test_mode = ("--test",) if re.search(r"#\[\s*test\s*\]", tests) else ()  # the tests' shape decides, never the program
        if edition != "2015":  # std's own macros, whatever macro_rules! the program defined under their names
            source = program + re.sub(r"(?<![\w:])(assert|assert_eq|assert_ne|panic)!", r"::std::\1!", tests)
        link = ("-C", "link-arg=-Wl,--wrap=main", "-C", "link-arg={dir}/_judge_main.o")
        builds = (
            ("cc", "-c", "-O1", "-o", "_judge_main.o", _C_MAIN),
            ("rustc", *test_mode, "--edition", edition, *link, "-o", "{out}", "main.rs"),
        )
        pattern = re.compile(r"panicked at (?:'assertion|[^\n]*\n(?:assertion failed|assertion `left [!=]= right` failed))")
        return _plan(language, "main.rs", source, ("rustc", "cc"), builds, ("{out}",), {_C_MAIN: _C_EPILOGUE}, pattern)
    if name in ("javascript", "typescript"):
        pattern = re.compile(r"AssertionError|ERR_ASSERTION")
        files = {_NODE_FIRST: _NODE_EPILOGUE}
        node = ("node", "-r", f"./{_NODE_FIRST}")
        if name == "javascript":
            source += f"globalThis[{_NODE_ENDED}] = true;\n"
            return _plan(language, "main.js", source, ("node",), (("node", "--check", "main.js"),), (*node, "main.js"), files, pattern)
        source += f"(globalThis as any)[{_NODE_ENDED}] = true;\n"
        return _plan(language, "main.ts", source, ("tsc", "node"), ((*_TSC, "main.ts"),), (*node, ".build/main.js"), files, pattern)
    if name == "java":
        public = re.search(r"^public\s+(?:(?:final|abstract|sealed|strictfp)\s+)*(?:class|interface|enum|record)\s+(\w+)", source, re.M)
        file = f"{public.group(1)}.java" if public else "Main.java"
        build = ("javac", "-encoding", "UTF-8", "-d", ".build", file, f"{_JAVA_LAUNCHER}.java")
        run = ("java", "-ea", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", ".build", _JAVA_LAUNCHER, *_java_main_classes(program, tests))
        pattern = re.compile(r"java\.lang\.AssertionError")
        return _plan(language, file, source, ("javac", "java"), (build,), run, {f"{_JAVA_LAUNCHER}.java": _JAVA_EPILOGUE}, pattern)
    if name == "go":
        package = re.search(r"^package\s+(\w+)", source, re.M)
        files = {"sandboxes_judge_main_test.go": _GO_EPILOGUE.format(package=package.group(1) if package else "main")}
        build = ("go", "test", "-c", "-o", "{out}", "main_test.go", "sandboxes_judge_main_test.go")
        pattern = re.compile(r"^\s*--- FAIL", re.M)
        return _plan(language, "main_test.go", source, ("go",), (build,), ("{out}",), files, pattern, crash=re.compile(r"^panic: ", re.M))
    if name == "ruby":
        pattern = re.compile(r"^Failure:", re.M)
        return _plan(language, "main.rb", source + _RUBY_EPILOGUE, ("ruby",), (("ruby", "-c", "main.rb"),), ("ruby", "main.rb"), {}, pattern)
    if name == "bash":
        return _plan(language, "main.sh", source + _BASH_EPILOGUE, ("bash",), (("bash", "-n", "main.sh"),), ("bash", "main.sh"), {}, None)
    raise ValueError(f"embedded tests are judged for {', '.join(LANGUAGES)}, not {name}; give stdin/stdout cases instead")


_NODE_TYPES = "_judge_node.d.ts"
_NODE_TYPES_TEXT = """// sandboxes judge: node's globals and modules as `any`, for a type check without @types/node.
declare var process: any;
declare var require: any;
declare var module: any;
declare var Buffer: any;
declare var __dirname: any;
declare var __filename: any;
declare module "*";
"""


def typescript_for_cases(language: Language) -> tuple[Language, dict[str, str]]:
    """TypeScript for stdin/stdout cases: type-checked by ``tsc`` (a type error is a ``compile_error``), then run by node.

    Node's own names are typed ``any`` by a declarations file, since @types/node
    is often absent: a program is checked for its own types, not node's.
    """
    as_built = _as_built(language, "main.ts", ("tsc", "node"), ((*_TSC, "main.ts", _NODE_TYPES),), ("node", ".build/main.js"))
    return as_built, {_NODE_TYPES: _NODE_TYPES_TEXT}


def _java_main_classes(program: str, tests: str) -> list[str]:
    """Where the tests' ``main`` is, the classes declared before it, nearest first (the class it closes, in
    MultiPL-E; its own, in HumanEval-X); tests with no ``main`` run the first class, as ``java Main.java`` does."""
    declared = r"\b(?:class|interface|enum|record)\s+(\w+)"
    found = re.search(r"\bstatic\s+(?:final\s+)?void\s+main\s*\(", tests)
    if found is None:
        return list(dict.fromkeys(re.findall(declared, program + tests))) or ["Main"]
    return list(dict.fromkeys(reversed(re.findall(declared, program + tests[: found.start()])))) or ["Main"]


def _plan(
    language: Language,
    file: str,
    source: str,
    requires: tuple[str, ...],
    build: tuple[Argv, ...],
    run: Argv,
    files: dict[str, str],
    assertion: re.Pattern[str] | None,
    crash: re.Pattern[str] | None = None,
) -> Plan:
    return Plan(_as_built(language, file, requires, build, run), source, files, assertion, crash)


def _as_built(language: Language, file: str, requires: tuple[str, ...], build: tuple[Argv, ...], run: Argv) -> Language:
    """``language`` with the one recipe the judge builds and runs it by."""
    recipe = Recipe(requires=requires, build=build, run=run)
    return Language(name=language.name, source=file, recipes=(recipe,), install_hint=language.install_hint, env=language.env)
