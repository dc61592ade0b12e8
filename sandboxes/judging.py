"""Judging a program: a verdict that tells a wrong answer from a crash, a timeout and a lost sandbox.

``judge(sandbox, program, language, ...)`` builds the program once and decides
one ``Verdict``. Two styles of problem:

- **Embedded tests** (HumanEval, MultiPL-E): ``tests`` are appended to the
  program, and a pass means they ran to their end and held. A program that
  exits early with status 0 is not a pass. Completion is proven by a nonce
  that the judge's harness reads from stdin before the program runs and
  writes, with the outcome, only after the tests returned: it is in no file
  and no variable the program is given. (Python is judged this way today; a
  program that searches the harness's own frames in memory could still find
  it, which a separate process would be needed to rule out.)
- **stdin/stdout cases** (competitive programming): each case's stdin is fed
  and its stdout compared (``compare``); the first failing case is named.

Model outcomes are ``passed``, ``wrong_answer``, ``compile_error``,
``runtime_error``, ``timeout``, ``memory_limit`` and ``output_limit``. A
failure of the provider (sandbox lost, provider error after retries) is
``infra_error``: not the model's fault, so left out of every score.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ProviderError, SandboxNotFoundError, ToolchainMissing
from .languages import PreparedRun, cleanup, get_language, prepare_code, toolchain_version
from .models import NONCE_PREFIX, ExecutionResult

if TYPE_CHECKING:
    from .sandbox import Sandbox

DEFAULT_TIMEOUT = 10.0
Compare = str | Callable[[str, str], bool]


class Verdict(enum.StrEnum):
    """How a judged program ended. ``infra_error`` is the provider's, every other one the program's."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    COMPILE_ERROR = "compile_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    INFRA_ERROR = "infra_error"

    @property
    def scored(self) -> bool:
        """Whether it counts in a score (an infrastructure failure never does)."""
        return self is not Verdict.INFRA_ERROR


@dataclass(repr=False)
class Judgement:
    """A verdict and how it was reached."""

    verdict: Verdict
    reason: str = ""
    result: ExecutionResult | None = None
    failing_case: int | None = None
    """Index (from 0) of the first stdin/stdout case that did not pass."""
    language: str = ""
    provider: str = ""
    toolchain: str = ""
    """The first line of the language tool's ``--version`` in the sandbox (provenance)."""
    build_ms: float = 0.0
    run_ms: float = 0.0
    cases: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASSED

    def __repr__(self) -> str:  # what pytest shows under a failed ``assert judgement.passed``
        return f"<Judgement {self.describe()}>"

    def describe(self) -> str:
        """A readable account for a failed assertion: the verdict, the failing case, the output's tails."""
        head = f"verdict: {self.verdict.value}" + (f" ({self.reason})" if self.reason else "")
        if self.failing_case is not None:
            head += f"; first failing case: #{self.failing_case}"
        return head + (f"\n{self.result.describe()}" if self.result is not None else "")


async def judge(
    sandbox: Sandbox,
    program: str,
    language: str,
    *,
    tests: str | None = None,
    stdin: str | bytes | None = None,
    expected_stdout: str | None = None,
    cases: Sequence[tuple[str | bytes, str]] | None = None,
    compare: Compare = "exact",
    timeout: float = DEFAULT_TIMEOUT,
    files: Mapping[str, str | bytes] | None = None,
) -> Judgement:
    """Build ``program`` once in ``sandbox`` and judge it.

    With ``tests``: embedded tests, appended to the program. With
    ``expected_stdout`` (and ``stdin``) or ``cases`` (a list of
    ``(stdin, expected_stdout)``): stdin/stdout cases, compared by ``compare``
    (``"exact"``, ``"whitespace"``, ``"float:1e-6"`` or a function of
    ``(expected, actual)``). ``timeout`` bounds the build and each run.
    """
    lang = get_language(language)
    comparer = _comparer(compare)
    if tests is not None and (cases is not None or expected_stdout is not None):
        raise ValueError("give either tests (embedded tests) or stdin/stdout cases, not both")
    if tests is not None and lang.name != "python":
        raise ValueError(f"embedded tests are judged for python only so far, not {lang.name}; give stdin/stdout cases instead")
    if cases is None:
        cases = [(stdin or b"", expected_stdout)] if expected_stdout is not None else []
    if tests is None and not cases:
        raise ValueError("nothing to judge by: give tests, expected_stdout or cases")
    judgement = Judgement(Verdict.INFRA_ERROR, language=lang.name, provider=sandbox.provider)
    try:
        judgement.toolchain = await toolchain_version(sandbox, lang)
        if tests is not None:
            await _judge_embedded(sandbox, program, tests, judgement, timeout, files)
        else:
            await _judge_cases(sandbox, program, lang.name, cases, comparer, judgement, timeout, files)
    except (ProviderError, SandboxNotFoundError) as error:
        judgement.verdict, judgement.reason = Verdict.INFRA_ERROR, f"{type(error).__name__}: {error}"
    except ToolchainMissing:
        raise
    return judgement


# -- stdin/stdout cases -------------------------------------------------------------------------
async def _judge_cases(
    sandbox: Sandbox,
    program: str,
    language: str,
    cases: Sequence[tuple[str | bytes, str | None]],
    comparer: Callable[[str, str], bool],
    judgement: Judgement,
    timeout: float,
    files: Mapping[str, str | bytes] | None,
) -> None:
    prepared = await _build(sandbox, program, language, judgement, timeout, files)
    if prepared is None:
        return
    try:
        for index, (case_stdin, expected) in enumerate(cases):
            started = time.monotonic()
            result = await sandbox.execute(prepared.argv, cwd=prepared.directory, env=prepared.env, stdin=case_stdin, timeout=timeout)
            judgement.run_ms += (time.monotonic() - started) * 1000
            verdict, reason = _ended(result)
            if verdict is None:
                if result.truncated:
                    verdict, reason = Verdict.OUTPUT_LIMIT, "the output passed the cap, so it cannot be compared"
                elif expected is not None and not comparer(expected, result.stdout):
                    verdict, reason = Verdict.WRONG_ANSWER, "the output differs from the expected output"
                else:
                    verdict = Verdict.PASSED
            judgement.cases.append(verdict)
            judgement.result = result
            if verdict is not Verdict.PASSED:
                judgement.verdict, judgement.reason, judgement.failing_case = verdict, reason, index
                return
        judgement.verdict = Verdict.PASSED
    finally:
        await cleanup(sandbox, prepared, now=False)


async def _build(
    sandbox: Sandbox, program: str, language: str, judgement: Judgement, timeout: float, files: Mapping[str, str | bytes] | None
) -> PreparedRun | None:
    """The program written and built; None (and a ``compile_error``) when the build failed."""
    started = time.monotonic()
    prepared = await prepare_code(sandbox, program, language, files=files, timeout=timeout)
    judgement.build_ms = (time.monotonic() - started) * 1000
    if prepared.failed is not None:
        judgement.result = prepared.failed
        ended, why = _ended(prepared.failed)
        judgement.verdict = Verdict.COMPILE_ERROR
        judgement.reason = "the build timed out" if ended is Verdict.TIMEOUT else why or "the build failed"
        await cleanup(sandbox, prepared, now=False)
        return None
    return prepared


def _ended(result: ExecutionResult) -> tuple[Verdict | None, str]:
    """The verdict a run's end alone decides (timeout, memory, crash), or None when it exited 0."""
    if result.timed_out:
        return Verdict.TIMEOUT, "killed at the time limit"
    if result.oom_killed:
        return Verdict.MEMORY_LIMIT, "killed for passing the memory limit"
    if result.exit_code != 0:
        return Verdict.RUNTIME_ERROR, _exit_reason(result.exit_code)
    return None, ""


def _exit_reason(code: int) -> str:
    number = -code if code < 0 else code - 128 if 128 < code < 160 else None
    if number is not None:
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            pass
    return f"exited with status {code}"


# -- comparing output ------------------------------------------------------------------------------
def _comparer(compare: Compare) -> Callable[[str, str], bool]:
    if callable(compare):
        return compare
    if compare == "exact":
        return lambda expected, actual: expected == actual
    if compare == "whitespace":
        return lambda expected, actual: _lines(expected) == _lines(actual)
    if isinstance(compare, str) and compare.startswith("float:"):
        try:
            tolerance = float(compare.removeprefix("float:"))
        except ValueError:
            tolerance = -1.0
        if not tolerance >= 0:
            raise ValueError(f"compare={compare!r}: the tolerance after 'float:' must be a number >= 0, such as float:1e-6")
        return lambda expected, actual: _close(expected.split(), actual.split(), tolerance)
    raise ValueError(f"compare must be 'exact', 'whitespace', 'float:<tolerance>' or a function of (expected, actual), not {compare!r}")


def _lines(text: str) -> list[str]:
    """Lines without trailing spaces, and no trailing empty lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _close(expected: list[str], actual: list[str], tolerance: float) -> bool:
    """Token by token: numbers within ``tolerance`` (absolute or relative), anything else equal."""
    if len(expected) != len(actual):
        return False
    for want, got in zip(expected, actual, strict=True):
        if want == got:
            continue
        try:
            a, b = float(want), float(got)
        except ValueError:
            return False
        if not (math.isfinite(a) and math.isfinite(b)) or not math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance):
            return False
    return True


# -- embedded tests (python) -----------------------------------------------------------------------------
HARNESS = "_judge_harness.py"
TESTS = "_judge_tests.py"
SOURCE = "main.py"
_NONCE_BYTES = 16
_OUTCOME = re.compile(r"judge-outcome:(" + NONCE_PREFIX + r"[0-9a-f]{32}):([a-z_]+):?(.*)$")
_HARNESS_CODE = r"""
import builtins, os, sys, threading, types  # few imports: each is paid for by every judged program

# Started with -S: the site-packages are set up when the program first imports something the
# standard library does not have (as python3 main.py has them), not paid for by every program.


class _LazySite:
    def find_spec(self, name, path=None, target=None):
        if path is not None or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)
        import importlib.util, site
        site.main()
        return importlib.util.find_spec(name)

# The program runs in a thread of its own. The nonce lives only in the main
# thread's frame and in an audit hook's closure, neither of which the program
# can reach: frames of another thread, gc walks, ctypes and /proc/*/mem are
# refused while it runs. The tests count as finished only when the genuine
# runner, in the program's thread, says so after both parts returned: the
# hook checks the calling frames' code objects, which the program cannot forge.



def _memory(path):
    # /proc/<self|thread-self|pid>[/task/<tid>]/<mem|environ>
    parts = path.split("/")
    if len(parts) == 6 and parts[3] == "task" and parts[4].isdigit():
        parts = parts[:3] + parts[5:]
    return len(parts) == 4 and parts[:2] == ["", "proc"] and (parts[2] in ("self", "thread-self") or parts[2].isdigit()) and parts[3] in ("mem", "environ")


def _read_nonce():
    wanted, got = 49, b""
    while len(got) < wanted:
        part = os.read(0, wanted - len(got))
        if not part:
            break
        got += part
    return got[:48].decode("ascii", "replace")


def _undumpable():
    # Other processes of this user (a child the program starts) cannot read this one's memory.
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _run(program, tests, module, outcome):
    try:
        exec(program, module.__dict__)
        sys.audit("judge.restore")  # what the program did to the builtins (a patched abs or len) does not reach the tests
        exec(tests, module.__dict__)
    except SystemExit as exited:
        outcome.append(("exit", exited.code))
        return
    except BaseException as error:
        outcome.append(("error", error))
        return
    sys.audit("judge.completed")


class _Runner(threading.Thread):
    def run(self):
        _run(*self.work)


def _main():
    nonce = _read_nonce()
    _undumpable()
    cwd = os.getcwd()
    source_path = os.path.join(cwd, "main.py")
    with open(source_path, "rb") as handle:
        source = handle.read()
    with open(os.path.join(cwd, "_judge_tests.py"), "rb") as handle:  # the tests: a file of their own
        tests_source = handle.read()
    try:
        program = compile(source, source_path, "exec")
    except (SyntaxError, ValueError) as error:
        import traceback

        traceback.print_exception(type(error), error, None)
        _report(nonce, "compile", type(error).__name__)
        return 1
    tests_path = os.path.join(cwd, "_judge_tests.py")
    tests = compile(tests_source, tests_path, "exec")
    sys.argv = ["main.py"]
    sys.path[0] = cwd
    module = types.ModuleType("__main__")  # the program's module is __main__, as under python3 main.py
    module.__file__ = source_path
    sys.modules["__main__"] = module
    sys.meta_path.append(_LazySite())
    import site  # with -S, its module only: the builtins it adds (exit, quit, help...) without the .pth files

    site.setquit()
    site.setcopyright()
    site.sethelper()
    outcome = []
    completed = []
    armed = [True]
    threading.stack_size(256 << 20)  # deep recursion as in a main thread
    runner = _Runner(daemon=True)
    runner.work = (program, tests, module, outcome)
    pristine = dict(vars(builtins))
    genuine = (_run.__code__, _Runner.run.__code__, threading.Thread._bootstrap_inner.__code__)
    main = threading.get_ident()
    inside = []

    def from_runner():
        # Called by the genuine runner, in the program's thread: frames cannot be forged.
        frame = sys._getframe(2)
        chain = (frame, frame.f_back, frame.f_back.f_back if frame.f_back else None)
        return threading.get_ident() == runner.ident and all(f is not None and f.f_code is c for f, c in zip(chain, genuine))

    def hook(event, args):
        if threading.get_ident() in (main, *inside) or not armed[0]:
            return  # the judge's own calls
        if event in ("judge.completed", "judge.restore"):
            inside.append(threading.get_ident())
            try:
                if not from_runner():
                    return
                if event == "judge.completed":
                    completed.append(True)
                else:
                    current = vars(builtins)
                    for name in [name for name in current if name not in pristine]:
                        del current[name]
                    current.update(pristine)
            finally:
                inside.pop()
            return
        if event in ("sys._current_frames", "sys._current_exceptions", "gc.get_objects", "gc.get_referrers", "gc.get_referents") or event.startswith("ctypes."):
            raise RuntimeError("the judge does not allow %s while the tests run" % event)
        if event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__",):
            raise RuntimeError("the judge does not allow replacing a function's code while the tests run")
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            inside.append(threading.get_ident())
            try:
                target = os.path.realpath(os.fsdecode(args[0]))  # through any link the program made
            finally:
                inside.pop()
            if _memory(target):
                raise PermissionError("the judge does not allow opening %s while the tests run" % os.fsdecode(args[0]))

    sys.addaudithook(hook)
    runner.start()
    runner.join()
    armed[0] = False
    if completed:
        _report(nonce, "completed")
        return 0
    kind, value = outcome[0] if outcome else ("vanished", None)
    if kind == "exit":
        number = 0 if value is None else value if isinstance(value, int) else 1
        if isinstance(value, str):
            print(value, file=sys.stderr)
        _report(nonce, "exit", str(number))
        return number or 0
    if kind == "error":
        import traceback

        tb = value.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename not in (source_path, tests_path):
            tb = tb.tb_next
        traceback.print_exception(type(value), value, tb)
        _report(nonce, "assertion" if isinstance(value, AssertionError) else "exception", type(value).__name__)
        return 1
    _report(nonce, "vanished")
    return 1


def _report(nonce, kind, detail=""):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(2, ("\njudge-outcome:%s:%s:%s\n" % (nonce, kind, detail)).encode("utf-8", "replace"))


sys.exit(_main())
"""


async def _judge_embedded(sandbox: Sandbox, program: str, tests: str, judgement: Judgement, timeout: float, files: Mapping[str, str | bytes] | None) -> None:
    """Program and tests in ``main.py``, run by a harness as ``python3 main.py`` runs it; a pass needs its nonce."""
    prepared = await prepare_code(sandbox, program, "python", files={**(files or {}), HARNESS: _HARNESS_CODE, TESTS: tests}, timeout=timeout, name=SOURCE)
    try:
        nonce = NONCE_PREFIX + secrets.token_hex(_NONCE_BYTES)  # the prefix lets a cassette replay it
        started = time.monotonic()
        argv = ["python3", "-S", HARNESS]  # the harness sets up site-packages when the program first needs them
        result = await sandbox.execute(argv, cwd=prepared.directory, env=prepared.env, stdin=nonce + "\n", timeout=timeout)
        judgement.run_ms = (time.monotonic() - started) * 1000
        kind, detail = _outcome(result, nonce)
        judgement.result = result
        judgement.verdict, judgement.reason = _embedded_verdict(result, kind, detail)
    finally:
        await cleanup(sandbox, prepared, now=False)


def _outcome(result: ExecutionResult, nonce: str) -> tuple[str | None, str]:
    """The harness's report, only when it carries this run's nonce; its line is taken out of stderr."""
    lines = result.stderr.split("\n")
    for index in range(len(lines) - 1, -1, -1):
        found = _OUTCOME.search(lines[index])
        if found and found.group(1) == nonce:
            result.stderr = "\n".join(lines[: index - 1 if index and not lines[index - 1] else index] + lines[index + 1 :])
            return found.group(2), found.group(3)
    return None, ""


def _embedded_verdict(result: ExecutionResult, kind: str | None, detail: str) -> tuple[Verdict, str]:
    ended, why = _ended(result)
    if ended in (Verdict.TIMEOUT, Verdict.MEMORY_LIMIT):
        return ended, why
    if kind == "completed" and result.exit_code == 0:
        return Verdict.PASSED, ""
    if kind == "compile":
        return Verdict.COMPILE_ERROR, f"{detail} in the program"
    if kind == "assertion":
        return Verdict.WRONG_ANSWER, "a test's assertion failed"
    if kind == "exception":
        if detail == "MemoryError":
            return Verdict.MEMORY_LIMIT, "MemoryError: the program passed the memory limit"
        if detail == "RecursionError":
            return Verdict.RUNTIME_ERROR, "RecursionError"
        return Verdict.RUNTIME_ERROR, f"{detail} raised outside an assertion"
    if kind == "exit":
        return Verdict.RUNTIME_ERROR, f"the program exited (status {detail}) before its tests finished"
    if kind == "completed":  # the tests held, then something at exit failed it
        return Verdict.RUNTIME_ERROR, f"the tests finished, then the process {_exit_reason(result.exit_code)}"
    if result.exit_code == 0:
        return Verdict.RUNTIME_ERROR, "the process ended with status 0 before its tests finished (no report from the judge)"
    return Verdict.RUNTIME_ERROR, f"the process {_exit_reason(result.exit_code)} before its tests finished"
