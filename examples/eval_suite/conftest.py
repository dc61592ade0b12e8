"""The grader: writes a candidate into a fresh sandbox and runs it."""

from __future__ import annotations

import pytest
from candidates import Case

RUNNERS = {
    "python": ("main.py", ["python3", "main.py"]),
    "javascript": ("main.js", ["node", "main.js"]),
    "bash": ("main.sh", ["bash", "main.sh"]),
}


def grade(sandbox, case: Case, timeout: float = 5) -> str:
    """pass, wrong, error or timeout: what the candidate did with the input."""
    filename, argv = RUNNERS[case.language]
    sandbox.write_file(f"/workspace/{filename}", case.source)  # through the file API, no shell quoting
    result = sandbox.execute(argv, cwd="/workspace", stdin=case.stdin, timeout=timeout)
    if result.timed_out:
        return "timeout"
    if result.exit_code != 0:
        return "error"
    return "pass" if result.stdout == case.expected_stdout else "wrong"


@pytest.fixture
def grader():
    return grade
