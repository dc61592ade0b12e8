"""Each candidate graded in its own fresh sandbox."""

from __future__ import annotations

import pytest
from candidates import CASES, Case


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_candidate(sandbox, grader, case: Case) -> None:
    timeout = 1 if case.verdict == "timeout" else 5
    assert grader(sandbox, case, timeout=timeout) == case.verdict


@pytest.mark.sandbox(env={"LANG": "C.UTF-8"}, labels={"suite": "eval"})
def test_unicode_output_survives(sandbox) -> None:
    result = sandbox.execute(["python3", "-c", "print('héllo ✓')"])
    assert result.stdout == "héllo ✓\n"
