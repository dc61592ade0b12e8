"""Judging a program: a verdict that tells a wrong answer from a crash, a timeout and a lost sandbox.

``judge(sandbox, program, language, ...)`` builds the program once and decides
one ``Verdict``. Two styles of problem:

- **Embedded tests** (HumanEval): the program and its ``tests`` run in two
  processes. The program's process runs the program as ``python3 main.py``
  would and serves calls into it; the judge's process runs the tests (trusted
  code), whose names for the program's functions are proxies. Every value the
  tests compare is plain data (numbers, text, lists, tuples, dicts, sets) the
  judge decoded itself: an object of the program's, such as one whose
  ``__eq__`` always agrees, is a ``runtime_error``. The tests file is gone
  before the program starts, and nothing the program does to its own process
  (patching ``os`` or ``sys``, reading frames, interrupting threads) reaches
  the judge's, which reads the nonce only after the fork and is not dumpable.
  A pass is the judge's report, with the nonce, after the tests returned; a
  program that exits early, or dies, is not a pass. The other languages
  run their tests in the program's process (``_embedded``).
  Unlike ``python3 main.py``, an argument the program mutates is not seen by
  the tests, and tests that hand the program a function are refused.
  The nonce comes on stdin. On a provider without a stdin stream (Daytona,
  Cloudflare) stdin is a file that lives until the harness starts, so a
  process the program left running from an earlier command in the same
  sandbox could race to read it: judge each untrusted sample in a fresh
  sandbox there (``sandboxes eval`` does; ``sandbox_judge`` retries do).
- **stdin/stdout cases** (competitive programming): each case's stdin is fed
  and its stdout compared (``compare``); the first failing case is named.

Model outcomes are ``passed``, ``wrong_answer``, ``compile_error``,
``runtime_error``, ``timeout``, ``memory_limit`` and ``output_limit``. A
failure of the provider (sandbox lost, provider error after retries) is
``infra_error``: not the model's fault, so left out of every score.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _embedded
from .cassette import name_content
from .driver import warm_marker
from .errors import ProviderError, SandboxNotFoundError
from .languages import Language, PreparedRun, cleanup, get_language, prepare_code, toolchain_version
from .models import NONCE_PREFIX, ExecutionResult

if TYPE_CHECKING:
    from .sandbox import Sandbox

DEFAULT_TIMEOUT = 10.0
INFRA_RETRIES = 2
"""Tries on a fresh sandbox after an ``infra_error``, before it counts."""
log = logging.getLogger("sandboxes")
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
    cpu_ms: float | None = None
    """CPU time (user + system) of the runs, not the build, where the provider measures it (local does)."""
    cases: list[Verdict] = field(default_factory=list)
    lost: bool = False
    """The sandbox vanished while judging (an ``infra_error``, unless it happens on every fresh try)."""

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
    edition: str | None = None,
) -> Judgement:
    """Build ``program`` once in ``sandbox`` and judge it.

    With ``tests``: embedded tests, appended to the program (``edition`` is
    Rust's, 2021 unless given). With
    ``expected_stdout`` (and ``stdin``) or ``cases`` (a list of
    ``(stdin, expected_stdout)``): stdin/stdout cases, compared by ``compare``
    (``"exact"``, ``"whitespace"``, ``"float:1e-6"`` or a function of
    ``(expected, actual)``). ``timeout`` bounds the build and each run.
    """
    lang = get_language(language)
    comparer = _comparer(compare)
    if tests is not None and (cases is not None or expected_stdout is not None):
        raise ValueError("give either tests (embedded tests) or stdin/stdout cases, not both")
    plan = _embedded.plan(lang, program, tests, edition) if tests is not None and lang.name != "python" else None
    if edition is not None and plan is None:
        raise ValueError(f"edition is Rust's (rustc --edition) for embedded tests, not for {lang.name} {'tests' if tests else 'cases'}; leave it out")
    if cases is None:
        cases = [(stdin or b"", expected_stdout)] if expected_stdout is not None else []
    if tests is None and not cases:
        raise ValueError("nothing to judge by: give tests, expected_stdout or cases")
    judgement = Judgement(Verdict.INFRA_ERROR, language=lang.name, provider=sandbox.provider)
    try:
        built, extra = _embedded.typescript_for_cases(lang) if lang.name == "typescript" and plan is None else (lang, {})
        judgement.toolchain = await toolchain_version(sandbox, plan.language if plan else built)
        if plan is not None:
            await _judge_in_process(sandbox, plan, judgement, timeout, files)
        elif tests is not None:
            await _judge_embedded(sandbox, program, tests, judgement, timeout, files)
        else:
            await _judge_cases(sandbox, program, built, cases, comparer, judgement, timeout, {**(files or {}), **extra})
    except (ProviderError, SandboxNotFoundError) as error:
        judgement.verdict, judgement.reason = Verdict.INFRA_ERROR, f"{type(error).__name__}: {error}"
        judgement.lost = isinstance(error, SandboxNotFoundError)
    return judgement


async def judge_retrying(
    sandboxes: Callable[[int], AbstractAsyncContextManager[Sandbox]],
    program: str,
    language: str,
    *,
    retries: int = INFRA_RETRIES,
    provider: str = "",
    **options: Any,
) -> Judgement:
    """``judge`` in ``sandboxes(0)``; after an ``infra_error``, again in ``sandboxes(1)`` and on, ``retries`` more times.

    ``sandboxes(attempt)`` enters a sandbox (made fresh for a retry) and leaves
    it destroyed or kept, as its owner decides. A sandbox lost on every try was
    lost by the program (on a cloud provider, it can kill what runs it): that counts as
    a ``runtime_error``, or a program could opt out of being scored. Any other
    ``infra_error`` stays one.
    """
    judgement: Judgement | None = None
    lost_each_time = True
    for attempt in range(retries + 1):
        this: Judgement | None = None
        try:
            async with sandboxes(attempt) as sandbox:
                this = await judge(sandbox, program, language, **options)
        except (ProviderError, SandboxNotFoundError) as error:  # making or leaving the sandbox failed: the provider's
            if this is None:
                this = Judgement(Verdict.INFRA_ERROR, f"{type(error).__name__}: {error}", language=get_language(language).name, provider=provider)
            else:
                log.warning("could not let go of the sandbox after judging: %s", error)
        judgement = this
        if judgement.verdict is not Verdict.INFRA_ERROR:
            return judgement
        lost_each_time = lost_each_time and judgement.lost
    assert judgement is not None
    if lost_each_time:
        tries = f"each of {retries + 1} tries" if retries else "its only try"
        judgement.verdict, judgement.reason = Verdict.RUNTIME_ERROR, f"the sandbox was lost on {tries} ({judgement.reason})"
    return judgement


# -- stdin/stdout cases -------------------------------------------------------------------------
async def _judge_cases(
    sandbox: Sandbox,
    program: str,
    language: str | Language,
    cases: Sequence[tuple[str | bytes, str | None]],
    comparer: Callable[[str, str], bool],
    judgement: Judgement,
    timeout: float,
    files: Mapping[str, str | bytes] | None,
) -> None:
    prepared = await _build(sandbox, program, language, judgement, timeout, files)
    if prepared is None:
        return
    cpu_times: list[float | None] = []
    try:
        for index, (case_stdin, expected) in enumerate(cases):
            started = time.monotonic()
            result = await sandbox.execute(prepared.argv, cwd=prepared.directory, env=prepared.env, stdin=case_stdin, timeout=timeout)
            judgement.run_ms += (time.monotonic() - started) * 1000
            cpu_times.append(result.cpu_ms)
            judgement.cpu_ms = None if None in cpu_times else math.fsum(t or 0.0 for t in cpu_times)
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
    sandbox: Sandbox, program: str, language: str | Language, judgement: Judgement, timeout: float, files: Mapping[str, str | bytes] | None
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


# -- embedded tests in the program's process (every language but python) -------------------------
async def _judge_in_process(sandbox: Sandbox, plan: _embedded.Plan, judgement: Judgement, timeout: float, files: Mapping[str, str | bytes] | None) -> None:
    """Program and tests built as one, run with the epilogue that reports the nonce once the tests returned."""
    prepared = await _build(sandbox, plan.source, plan.language, judgement, timeout, {**(files or {}), **plan.files})
    if prepared is None:
        return
    try:
        result, kind, _ = await _run_reporting(sandbox, prepared, prepared.argv, judgement, timeout)
        judgement.verdict, judgement.reason = _in_process_verdict(result, kind == "completed", plan)
    finally:
        await cleanup(sandbox, prepared, now=False)


def _in_process_verdict(result: ExecutionResult, reported: bool, plan: _embedded.Plan) -> tuple[Verdict, str]:
    ended, why = _ended(result)
    if ended in (Verdict.TIMEOUT, Verdict.MEMORY_LIMIT):
        return ended, why
    if ended is None:
        if reported:
            return Verdict.PASSED, ""
        return Verdict.RUNTIME_ERROR, "the process ended with status 0 before its tests finished (no report from the judge)"
    if plan.assertion_failed(result.stdout + "\n" + result.stderr, result.exit_code):
        return Verdict.WRONG_ANSWER, f"a test failed ({why})"
    return Verdict.RUNTIME_ERROR, f"the process {'was ' if why.startswith('killed') else ''}{why} before its tests finished"


# -- embedded tests (python) -----------------------------------------------------------------------------
HARNESS = "_judge_harness.py"
TESTS = "_judge_tests.py"
SOURCE = "main.py"
_NONCE_BYTES = 16
_OUTCOME = re.compile(r"judge-outcome:(" + NONCE_PREFIX + r"[0-9a-f]{32}):([a-z_]+):?(.*)$")
_HARNESS_CODE = (Path(__file__).parent / HARNESS).read_text(encoding="utf-8")  # a program of its own, for the sandbox's python3
_HARNESS_SHA256 = hashlib.sha256(_HARNESS_CODE.encode()).hexdigest()  # the same in every run: its compiled code may be kept
HARNESS_PROTOCOL = "the judge's harness, protocol 1"
"""What a cassette matches the harness by, whatever its bytes: its inputs (``main.py``, ``_judge_tests.py``,
the nonce on stdin) and its report (the ``judge-outcome`` line and the exit status). Change it with them."""
name_content(_HARNESS_CODE.encode(), HARNESS_PROTOCOL)


async def _judge_embedded(sandbox: Sandbox, program: str, tests: str, judgement: Judgement, timeout: float, files: Mapping[str, str | bytes] | None) -> None:
    """Program and tests in ``main.py``, run by a harness as ``python3 main.py`` runs it; a pass needs its nonce."""
    prepared = await prepare_code(sandbox, program, "python", files={**(files or {}), HARNESS: _HARNESS_CODE, TESTS: tests}, timeout=timeout, name=SOURCE)
    try:
        # Cold, the harness sets up site-packages when the program first needs them (-S); warm, the
        # zygote set them up once, as python3 main.py has them.
        argv = [warm_marker(_HARNESS_SHA256), "python3", "-S", HARNESS]
        result, kind, detail = await _run_reporting(sandbox, prepared, argv, judgement, timeout)
        if kind == "unsupported":
            raise ValueError(f"these tests cannot be judged as embedded tests: {detail}")
        judgement.verdict, judgement.reason = _embedded_verdict(result, kind, detail)
    finally:
        await cleanup(sandbox, prepared, now=False)


async def _run_reporting(
    sandbox: Sandbox, prepared: PreparedRun, argv: Sequence[str], judgement: Judgement, timeout: float
) -> tuple[ExecutionResult, str | None, str]:
    """The run, with a fresh nonce on stdin; the judge's report (kind, detail) when it carries that nonce."""
    nonce = NONCE_PREFIX + secrets.token_hex(_NONCE_BYTES)  # the prefix lets a cassette replay it
    started = time.monotonic()
    result = await sandbox.execute(list(argv), cwd=prepared.directory, env=prepared.env, stdin=nonce + "\n", timeout=timeout)
    judgement.run_ms, judgement.cpu_ms, judgement.result = (time.monotonic() - started) * 1000, result.cpu_ms, result
    kind, detail = _outcome(result, nonce)
    return result, kind, detail


def _outcome(result: ExecutionResult, nonce: str) -> tuple[str | None, str]:
    """The harness's report, only when it carries this run's nonce; its line is taken out of stderr
    (or out of stdout, on a provider that merges the two: Daytona)."""
    for stream in ("stderr", "stdout"):
        lines = getattr(result, stream).split("\n")
        for index in range(len(lines) - 1, -1, -1):
            found = _OUTCOME.search(lines[index])
            if found and found.group(1) == nonce:
                setattr(result, stream, "\n".join(lines[: index - 1 if index and not lines[index - 1] else index] + lines[index + 1 :]))
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
    if kind == "ended":  # the program's process failed a call from the tests: it died, exited, or returned no plain value
        return Verdict.RUNTIME_ERROR, detail
    if kind == "vanished":
        status = int(detail) if detail.lstrip("-").isdigit() else 0
        return Verdict.RUNTIME_ERROR, f"the program's process {_exit_reason(status)} before its tests ran"
    if kind == "unsupported":
        raise ValueError(f"these tests cannot be judged: {detail}")
    if kind == "completed":  # the tests held, then something at exit failed it
        return Verdict.RUNTIME_ERROR, f"the tests finished, then the process {_exit_reason(result.exit_code)}"
    if result.exit_code == 0:
        return Verdict.RUNTIME_ERROR, "the process ended with status 0 before its tests finished (no report from the judge)"
    return Verdict.RUNTIME_ERROR, f"the process {_exit_reason(result.exit_code)} before its tests finished"
