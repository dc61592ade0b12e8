"""Bad input from a careless or hostile caller: a TypeError or ValueError naming the argument,
raised before anything runs, never a provider error. Through the public API, on the local provider."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from sandboxes import ProviderError, Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox.create("local") as made:
        yield made


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"command": "echo a\0b"}, ValueError, "command"),
        ({"command": ["echo", b"bytes"]}, TypeError, "command[1]"),
        ({"command": ["echo", None]}, TypeError, "command[1]"),
        ({"command": b"echo hi"}, TypeError, "command"),
        ({"command": "   "}, ValueError, "command"),
        ({"command": "true", "env": {"A=B": "1"}}, ValueError, "env"),
        ({"command": "true", "env": {"": "1"}}, ValueError, "env"),
        ({"command": "true", "env": {"A": 1}}, TypeError, "env['A']"),
        ({"command": "true", "env": {"A": "x\0y"}}, ValueError, "env['A']"),
        ({"command": "true", "env": "A=1"}, TypeError, "env"),
        ({"command": "true", "cwd": "/tmp\0x"}, ValueError, "cwd"),
        ({"command": "true", "cwd": 5}, TypeError, "cwd"),
        ({"command": "true", "timeout": "5"}, TypeError, "timeout"),
        ({"command": "true", "timeout": -1}, ValueError, "timeout"),
        ({"command": "true", "timeout": math.nan}, ValueError, "timeout"),
        ({"command": "true", "stdin": 5}, TypeError, "stdin"),
    ],
)
async def test_a_bad_command_argument_is_refused_before_anything_runs(sandbox: Sandbox, options: dict[str, Any], error: type, names: str) -> None:
    marker = "/workspace/ran"
    command = options.pop("command")
    if isinstance(command, str) and "\0" not in command and command.strip():
        command = f"touch {marker}; {command}"
    with pytest.raises(error) as caught:
        await sandbox.execute(command, **options)
    assert not isinstance(caught.value, ProviderError)
    assert names in str(caught.value)
    assert (await sandbox.execute(["test", "-e", marker])).exit_code == 1, "the command ran anyway"


async def test_write_file_refuses_bad_data_without_truncating_the_file(sandbox: Sandbox) -> None:
    await sandbox.write_file("keep.txt", "precious")
    for bad in ({"a": 1}, 5, None, ["x"]):
        with pytest.raises(TypeError, match="data must be bytes or a string"):
            await sandbox.write_file("keep.txt", bad)  # type: ignore[arg-type]  # the mistake under test
    assert await sandbox.read_file("keep.txt") == b"precious"
    with pytest.raises(ValueError, match="NUL"):
        await sandbox.write_file("a\0b", b"x")


async def test_paths_may_be_pathlib_paths(sandbox: Sandbox, tmp_path: Path) -> None:
    await sandbox.write_file(PurePosixPath("/workspace/sub/p.txt"), b"via Path")  # type: ignore[arg-type]  # a PathLike
    assert await sandbox.read_file(PurePosixPath("/workspace/sub/p.txt")) == b"via Path"  # type: ignore[arg-type]
    result = await sandbox.execute("pwd", cwd=PurePosixPath("/workspace/sub"))  # type: ignore[arg-type]
    assert result.stdout == "/workspace/sub\n"


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"env": {"A=B": "1"}}, ValueError, "env"),
        ({"setup_commands": "echo hi"}, TypeError, "setup_commands"),
        ({"memory_mb": -1}, ValueError, "memory_mb"),
        ({"memory_mb": 0}, ValueError, "memory_mb"),
        ({"memory_mb": 1.5}, TypeError, "memory_mb"),
        ({"lifetime": math.nan}, ValueError, "lifetime"),
        ({"lifetime": math.inf}, ValueError, "lifetime"),
        ({"lifetime": "10"}, TypeError, "lifetime"),
        ({"cpus": 0}, ValueError, "cpus"),
        ({"labels": "k=v"}, TypeError, "labels"),
        ({"working_dir": 5}, TypeError, "working_dir"),
    ],
)
def test_a_bad_config_is_refused_when_it_is_made(options: dict[str, Any], error: type, names: str) -> None:
    with pytest.raises(error, match=names):
        SandboxConfig(**options)


async def test_lookups_name_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="sandbox_id"):
        await Sandbox.get(123)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="labels must be a mapping"):
        await Sandbox.find("k=v")  # type: ignore[arg-type]
