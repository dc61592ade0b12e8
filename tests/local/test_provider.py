"""LocalProvider's own behaviour beyond the conformance suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from sandboxes import ProviderError, SandboxConfig
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local import _wire as wire

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
    with pytest.raises(ValueError, match=r"working_dir (must be an absolute path|must be a non-empty|contains a NUL)"):
        await provider.create_sandbox(SandboxConfig(working_dir=working_dir))
    assert list(tmp_path.glob("sb-*")) == []


async def test_a_working_dir_where_nothing_may_be_written_is_the_callers_error(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot be made in the sandbox.*Read-only file system"):
        await provider.create_sandbox(SandboxConfig(working_dir="/srv/app"))
    assert list(tmp_path.glob("sb-*")) == []


SPIN = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\nprint(round(time.process_time(), 2))"


async def test_cpus_is_enforced_by_the_cgroup_cpu_controller(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    info = await provider.create_sandbox(SandboxConfig(cpus=0.25))
    try:
        if not info.metadata.get("cpus_enforced"):
            pytest.skip("no cgroup cpu controller here (the test of the warning covers that case)")
        used = float((await provider.execute_command(info.id, ["python3", "-c", SPIN])).stdout)
        assert used < 1.5 * 0.25 + 0.2, f"{used}s of CPU in 1.5 s at cpus=0.25"
    finally:
        await provider.destroy_sandbox(info.id)


async def test_cpus_that_cannot_be_enforced_is_said(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path, cgroup_parent="off")
    with pytest.warns(RuntimeWarning, match=r"cpus=0.5 is not enforced"):
        info = await provider.create_sandbox(SandboxConfig(cpus=0.5))
    try:
        assert info.metadata["cpus_enforced"] is False
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_toolchain_under_tmp_is_seen_inside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A virtualenv or tool under the host's /tmp is bound over the sandbox's own /tmp, not hidden by it."""
    tool_dir = Path(tempfile.mkdtemp(prefix="sandboxes-tool-", dir="/tmp")) / "bin"
    tool_dir.mkdir()
    (tool_dir / "deno").write_text("#!/bin/sh\necho stub-deno-in-tmp\n")
    (tool_dir / "deno").chmod(0o755)
    tool_dir.parent.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool_dir}:{os.environ['PATH']}")
    provider = LocalProvider(state_dir=tmp_path)
    info = await provider.create_sandbox(SandboxConfig())
    try:
        result = await provider.execute_command(info.id, "deno; touch /tmp/still-writable && echo writable")
        assert result.stdout == "stub-deno-in-tmp\nwritable\n", result.describe()
    finally:
        await provider.destroy_sandbox(info.id)
        shutil.rmtree(tool_dir.parent)


async def test_without_openat2_the_agent_gets_no_cgroup_descriptors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 5.6 the agent cannot refuse /proc magic links, so it must hold nothing of the host's."""
    from sandboxes.providers.local import driver as local

    monkeypatch.setattr(local, "_openat2_works", lambda: False)
    provider = LocalProvider(state_dir=tmp_path)
    assert "no openat2" in provider.describe_limits()
    info = await provider.create_sandbox(SandboxConfig())
    try:
        assert info.metadata["limits"].startswith("per process")
        assert (await provider.execute_command(info.id, "echo fine")).stdout == "fine\n"
    finally:
        await provider.destroy_sandbox(info.id)


def test_a_sweep_that_finds_a_helper_already_reaped_by_another_thread_goes_on() -> None:
    """Concurrent creations (sandboxes eval -j 2) each sweep the helpers that ended: one may find another's gone."""
    from sandboxes.providers.local import driver as local

    class ReapedMeanwhile:
        """Ended; and while the sweep looks at it, another thread's sweep takes its entry."""

        def __init__(self, key: str) -> None:
            self.key = key

        def poll(self) -> int:
            local._CHILDREN.pop(self.key, None)
            return 0

    local._CHILDREN.update({key: [ReapedMeanwhile(key)] for key in ("sb-race-1", "sb-race-2")})  # type: ignore[misc]  # stand-ins for Popen
    LocalProvider().driver._reap()
    assert not any(key.startswith("sb-race") for key in local._CHILDREN)


async def test_a_commands_cpu_time_is_measured_with_what_it_waited_for(tmp_path: Path) -> None:
    """wait4's rusage: a busy child counts, time asleep does not."""
    provider = LocalProvider(state_dir=tmp_path)
    info = await provider.create_sandbox(SandboxConfig())
    try:
        busy = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
        spinning = await provider.execute_command(info.id, ["sh", "-c", 'python3 -c "$1"; true', "sh", busy])
        sleeping = await provider.execute_command(info.id, ["sleep", "0.5"])
        assert spinning.cpu_ms is not None and spinning.cpu_ms >= 380, spinning
        assert sleeping.cpu_ms is not None and sleeping.cpu_ms < 100 <= 500 <= sleeping.duration_ms, sleeping
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_sandbox_that_cannot_start_says_what_bubblewrap_said_and_leaves_nothing(tmp_path: Path) -> None:
    image, state = tmp_path / "empty-rootfs", tmp_path / "state"
    image.mkdir()
    provider = LocalProvider(state_dir=state)
    with pytest.raises(ProviderError, match=r"failed to start: bwrap: execvp .*No such file"):
        await provider.create_sandbox(SandboxConfig(image=str(image)))
    assert [p.name for p in state.iterdir() if p.name.startswith(("sb-", "idle-"))] == []


async def test_several_files_go_in_one_exchange_in_order_up_to_the_first_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    asked: list[dict[str, object]] = []
    framed = wire.request_frame
    monkeypatch.setattr(wire, "request_frame", lambda request: asked.append(request) or framed(request))
    info = await provider.create_sandbox(SandboxConfig())
    try:
        files = {"first.txt": b"1", "first.txt/below": b"2", "third.txt": b"3"}  # the second below a file
        with pytest.raises(NotADirectoryError):
            await provider.write_files(info.id, files)
        assert [request.get("paths") for request in asked if request["op"] == "write"] == [list(files)]
        assert await provider.read_file(info.id, "first.txt") == b"1"
        assert (await provider.execute_command(info.id, "test -e third.txt")).exit_code == 1
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_local_provider_closes_like_any_provider() -> None:
    provider = LocalProvider()
    info = await provider.create_sandbox(SandboxConfig())
    assert (await provider.execute_command(info.id, "echo ok")).stdout == "ok\n"
    await provider.destroy_sandbox(info.id)
    await provider.aclose()  # the driver protocol's: the plugin and the CLI close every provider they used
