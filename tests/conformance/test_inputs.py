"""Bad input from a careless or hostile caller: a TypeError or ValueError naming the argument,
raised before anything runs, never a provider error. Through the public API, on every provider that runs here."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from sandboxes import ProviderError, Sandbox, SandboxConfig, SandboxProvider

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox(provider: SandboxProvider) -> AsyncIterator[Sandbox]:
    # Under /tmp: the emulators bind the host's / around a private /tmp.
    info = await provider.create_sandbox(SandboxConfig(working_dir=f"/tmp/inputs-{uuid.uuid4().hex[:8]}"))
    async with Sandbox(provider, info) as made:
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
    marker = "ran"  # in the working directory
    options = dict(options)  # the same parameters run on every provider
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


async def test_write_files_checks_every_file_before_writing_any(sandbox: Sandbox) -> None:
    with pytest.raises(TypeError, match="data must be bytes or a string"):
        await sandbox.write_files({"first.txt": b"fine", "second.txt": 5})  # type: ignore[dict-item]  # the mistake under test
    assert (await sandbox.execute(["test", "-e", "first.txt"])).exit_code == 1


async def test_paths_may_be_pathlib_paths(sandbox: Sandbox, tmp_path: Path) -> None:
    await sandbox.write_file(PurePosixPath("sub/p.txt"), b"via Path")
    assert await sandbox.read_file(PurePosixPath("sub/p.txt")) == b"via Path"
    result = await sandbox.execute("pwd", cwd=PurePosixPath("sub"))
    assert result.stdout.rstrip().endswith("/sub")


async def test_reserved_labels_are_refused_before_anything_is_made(provider: SandboxProvider) -> None:
    before = {info.id for info in await provider.list_sandboxes()}
    with pytest.raises(ValueError, match="reserved by pytest-sandboxes"):
        await provider.create_sandbox(SandboxConfig(labels={"sandboxes.settings": "{}"}))
    with pytest.raises(ValueError, match="reserved"):
        await provider.find_sandbox({"sandboxes.attempt": "x"})
    assert {info.id for info in await provider.list_sandboxes()} == before


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
