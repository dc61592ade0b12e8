"""Tests that judge a task's samples are gathered: verdict counts and pass@k per task set, in the terminal and
in --sandbox-eval-report, the same with pytest-xdist as without."""

from __future__ import annotations

import json

import pytest

SUITE = """
import pytest

ADD = "def add(a, b):\\n    return a + b\\n"
WRONG = "def add(a, b):\\n    return a - b\\n"
TESTS = "assert add(1, 2) == 3\\n"

@pytest.mark.parametrize("task_id", ["Toy/add-1", "Toy/add-2"])
@pytest.mark.parametrize("program", [ADD, WRONG], ids=["right", "wrong"])
def test_sample(sandbox_judge, task_id, program):
    assert sandbox_judge(program, "python", tests=TESTS).passed

@pytest.mark.sandbox(task="Other/echo")
def test_marked(sandbox_judge):
    assert sandbox_judge("print(input())", "python", stdin="hi\\n", expected_stdout="hi\\n").passed

@pytest.mark.sandbox(task="Other/plain")
def test_without_a_judgement(sandbox):
    assert sandbox.execute("true").exit_code == 0

def test_not_a_task(sandbox):
    assert sandbox.execute("true").exit_code == 0
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_verdicts_and_pass_at_k_per_task_set(pytester: pytest.Pytester, live_sandboxes, workers: list[str]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    report = pytester.path / "out" / "eval.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *workers, f"--sandbox-eval-report={report}", "--sandbox-eval-k=1,2")
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines([
        "*- sandboxes eval -*",
        "Other: 2 samples over 2 tasks; pass@1 1.0000*; pass@2 left out (2 problem(s) have fewer than 2 scored samples*",
        "Toy: 4 samples over 2 tasks; pass@1 0.5000*; pass@2 1.0000*; verdicts passed 2, wrong_answer 2; infra errors 0 (left out)",
    ])  # fmt: skip
    data = json.loads(report.read_text())
    tasks = {task: sorted(verdicts) for task, verdicts in data["tasks"].items()}  # workers finish in any order
    assert tasks == {"Other/echo": ["passed"], "Other/plain": ["passed"], "Toy/add-1": ["passed", "wrong_answer"], "Toy/add-2": ["passed", "wrong_answer"]}
    assert data["task_sets"]["Toy"]["pass_at_k"]["pass@1"]["value"] == 0.5
    assert data["task_sets"]["Toy"]["verdicts"] == {"passed": 2, "wrong_answer": 2}
    assert live_sandboxes() == []


def test_a_bad_task_or_k_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.sandbox(task=5)\ndef test_it(sandbox):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0 and "task must be a task id such as 'HumanEval/0'" in result.stdout.str() + result.stderr.str()
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-eval-k=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "--sandbox-eval-k='0': give whole numbers of at least 1" in result.stderr.str()
