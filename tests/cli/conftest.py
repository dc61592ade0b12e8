"""Run the installed ``sandboxes`` command for real, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest


def sandboxes_command() -> str:
    script = Path(sysconfig.get_path("scripts")) / "sandboxes"
    found = str(script) if script.exists() else shutil.which("sandboxes")
    if not found:
        pytest.fail("the sandboxes command is not installed: pip install -e .")
    return found


CLI = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def cli(_isolated_state: Path) -> CLI:
    """``cli("run", "echo hi", input=b"...")``: the installed command, in this test's state dir."""
    command = sandboxes_command()

    def invoke(
        *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None, timeout: float = 120, path: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = {**os.environ, **(env or {})}
        if path is not None:
            full_env["PATH"] = path
        return subprocess.run([command, *args], input=input if input is not None else b"", capture_output=True, env=full_env, timeout=timeout)

    return invoke


def one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """The error a failed run printed: exactly one line, no traceback."""
    text = result.stderr.decode()
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: "), text
    return lines[0]


def kept_id(result: subprocess.CompletedProcess[bytes]) -> str:
    for line in result.stderr.decode().splitlines():
        if line.startswith("sandbox kept: "):
            return line.split()[2]
    raise AssertionError(f"no kept sandbox id in: {result.stderr!r}")


def languages_args(*parts: Sequence[str]) -> list[str]:
    return [p for part in parts for p in part]
