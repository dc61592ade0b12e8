"""LocalProvider's own behaviour beyond the conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxes import SandboxConfig
from sandboxes.providers.local import LocalProvider

pytestmark = pytest.mark.anyio


async def test_working_dir_is_made_and_is_every_commands_cwd_from_any_process(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    info = await provider.create_sandbox(SandboxConfig(working_dir="/workspace/app/src/"))
    try:
        assert (await provider.execute_command(info.id, "pwd")).stdout == "/workspace/app/src\n"
        assert (await provider.execute_command(info.id, ["pwd"], cwd="/tmp")).stdout == "/tmp\n"
        await provider.write_file(info.id, "/workspace/app/src/x.txt", b"here")
        assert (await provider.execute_command(info.id, "cat x.txt")).stdout == "here"
        other = LocalProvider(state_dir=tmp_path)  # another process's view of the same sandbox
        assert (await other.execute_command(info.id, "pwd")).stdout == "/workspace/app/src\n"
    finally:
        await provider.destroy_sandbox(info.id)


@pytest.mark.parametrize("working_dir", ["app", "./app", "", "/work\0space"])
async def test_a_working_dir_that_is_not_absolute_is_refused_before_anything_starts(tmp_path: Path, working_dir: str) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    with pytest.raises(ValueError, match="working_dir must be an absolute path"):
        await provider.create_sandbox(SandboxConfig(working_dir=working_dir))
    assert list(tmp_path.glob("sb-*")) == []


async def test_a_working_dir_where_nothing_may_be_written_is_the_callers_error(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot be made in the sandbox.*writable place"):
        await provider.create_sandbox(SandboxConfig(working_dir="/srv/app"))
    assert list(tmp_path.glob("sb-*")) == []
