"""The contract every provider fulfils, run on each provider that can run here."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sandboxes import (
    ExecutionResult,
    OutputChunk,
    SandboxConfig,
    SandboxNotFoundError,
    SandboxProvider,
    UnsupportedOperation,
)
from sandboxes.errors import CommandFailed

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox_id(provider: SandboxProvider):
    info = await provider.create_sandbox(SandboxConfig(labels={"suite": "conformance"}, max_output_bytes=64 * 1024))
    try:
        yield info.id
    finally:
        await provider.destroy_sandbox(info.id)


async def test_create_returns_info_with_labels(provider: SandboxProvider) -> None:
    labels = {"suite": "conformance", "case": uuid.uuid4().hex[:8]}
    info = await provider.create_sandbox(SandboxConfig(labels=labels))
    try:
        assert info.id
        assert info.provider == provider.name
        assert info.labels == labels
        fetched = await provider.get_sandbox(info.id)
        assert fetched is not None and fetched.id == info.id
    finally:
        assert await provider.destroy_sandbox(info.id) is True


async def test_stdout_stderr_and_exit_code_are_apart(provider: SandboxProvider, sandbox_id: str) -> None:
    result = await provider.execute_command(sandbox_id, "echo out; echo err >&2; exit 3")
    assert isinstance(result, ExecutionResult)
    assert result.exit_code == 3
    assert not result.success and not result.timed_out
    assert "out\n" in result.stdout
    if provider.name != "daytona":  # Daytona's execute merges the two streams
        assert result.stdout == "out\n"
        assert result.stderr == "err\n"
    with pytest.raises(CommandFailed) as failure:
        result.check()
    assert failure.value.result is result
    assert "exit" in str(failure.value) and "code 3" in str(failure.value)


async def test_argument_list_runs_without_a_shell(provider: SandboxProvider, sandbox_id: str) -> None:
    tricky = 'it\'s "$HOME" `whoami` $(id) \\ ;|&'
    result = await provider.execute_command(sandbox_id, ["printf", "%s", tricky])
    assert result.success
    assert result.stdout == tricky


async def test_env_and_cwd(provider: SandboxProvider, sandbox_id: str) -> None:
    await provider.execute_command(sandbox_id, "mkdir -p sub/dir")
    result = await provider.execute_command(sandbox_id, 'echo "$GREETING $OTHER"; pwd', env={"GREETING": "hello world", "OTHER": "a'b"}, cwd="sub/dir")
    assert result.success, result.describe()
    lines = result.stdout.splitlines()
    assert lines[0] == "hello world a'b"
    assert lines[1].endswith("/sub/dir")


async def test_stdin(provider: SandboxProvider, sandbox_id: str) -> None:
    """A stdin stream, or (a provider without one) a file that is the command's fd 0 and gone before it starts."""
    if not (provider.capabilities.stdin or provider.capabilities.files):
        with pytest.raises(UnsupportedOperation):
            await provider.execute_command(sandbox_id, "cat", stdin=b"x")
        return
    data = "line one\nline 'two' \"$HOME\"\n" * 1000
    result = await provider.execute_command(sandbox_id, "wc -c; cat >/dev/null", stdin=data)
    assert result.success
    result = await provider.execute_command(sandbox_id, "cat", stdin=data)
    assert result.stdout == data
    result = await provider.execute_command(sandbox_id, ["sh", "-c", 'read -r line; echo "[$line]"; readlink /proc/$$/fd/0'], stdin="fed\n")
    fed, source = result.stdout.split("\n")[:2]
    assert fed == "[fed]"
    assert source.startswith(("pipe:", "socket:")) or source.endswith("(deleted)"), source  # a file's input is gone before the command runs


async def test_state_persists_between_commands(provider: SandboxProvider, sandbox_id: str) -> None:
    await provider.execute_command(sandbox_id, "echo remembered > state.txt")
    result = await provider.execute_command(sandbox_id, "cat state.txt")
    assert result.stdout == "remembered\n"


async def test_streaming_keeps_order(provider: SandboxProvider, sandbox_id: str) -> None:
    command = "for i in 1 2 3 4 5; do echo $i; sleep 0.05; done; echo done >&2"
    if not provider.capabilities.streaming:
        with pytest.raises(UnsupportedOperation):
            async for _ in provider.stream_execution(sandbox_id, command):
                pass
        return
    chunks = [chunk async for chunk in provider.stream_execution(sandbox_id, command)]
    assert all(isinstance(chunk, OutputChunk) for chunk in chunks)
    stdout = "".join(str(c) for c in chunks if c.stream == "stdout")
    stderr = "".join(c.data for c in chunks if c.stream == "stderr")
    assert stdout == "1\n2\n3\n4\n5\n"
    assert stderr == "done\n"
    assert len([c for c in chunks if c.stream == "stdout"]) >= 2, "output arrived all at once: not streamed"


async def test_files_both_ways(provider: SandboxProvider, sandbox_id: str) -> None:
    payload = bytes(range(256)) * 64
    await provider.write_file(sandbox_id, "nested/dir/data.bin", payload)
    assert await provider.read_file(sandbox_id, "nested/dir/data.bin") == payload
    result = await provider.execute_command(sandbox_id, "wc -c < nested/dir/data.bin")
    assert result.stdout.strip() == str(len(payload))


async def test_several_files_at_once(provider: SandboxProvider, sandbox_id: str) -> None:
    payload = bytes(range(256)) * 300  # more than one frame's worth
    files = {"many/a.txt": "text, as UTF-8 é", "many/deeper/b.bin": payload, "many/empty": b""}
    await provider.write_files(sandbox_id, files)
    for path, data in files.items():
        assert await provider.read_file(sandbox_id, path) == (data.encode() if isinstance(data, str) else data)


async def test_missing_file_raises_file_not_found(provider: SandboxProvider, sandbox_id: str) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-file"):
        await provider.read_file(sandbox_id, "no-such-file.txt")


async def test_upload_and_download_directories(provider: SandboxProvider, sandbox_id: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "top.txt").write_text("top\n")
    (source / "pkg" / "mod.py").write_text("print('hi')\n")
    await provider.upload_file(sandbox_id, source, "project")
    result = await provider.execute_command(sandbox_id, "cat project/top.txt project/pkg/mod.py")
    assert result.stdout == "top\nprint('hi')\n"
    await provider.execute_command(sandbox_id, "echo made > project/pkg/new.txt")
    target = tmp_path / "back"
    await provider.download_file(sandbox_id, "project", target)
    assert (target / "pkg" / "new.txt").read_text() == "made\n"
    assert (target / "top.txt").read_text() == "top\n"
    await provider.download_file(sandbox_id, "project/top.txt", tmp_path / "single.txt")
    assert (tmp_path / "single.txt").read_text() == "top\n"


async def test_labels_find_and_list(provider: SandboxProvider) -> None:
    tag = uuid.uuid4().hex[:10]
    first = await provider.create_sandbox(SandboxConfig(labels={"case": tag, "role": "a"}))
    second = await provider.create_sandbox(SandboxConfig(labels={"case": tag, "role": "b"}))
    try:
        listed = {info.id for info in await provider.list_sandboxes({"case": tag})}
        assert listed == {first.id, second.id}
        only_b = await provider.list_sandboxes({"case": tag, "role": "b"})
        assert [info.id for info in only_b] == [second.id]
        found = await provider.find_sandbox({"case": tag, "role": "a"})
        assert found is not None and found.id == first.id
        assert await provider.find_sandbox({"case": tag, "role": "missing"}) is None
        reused = await provider.get_or_create_sandbox(SandboxConfig(labels={"case": tag, "role": "b"}))
        assert reused.id == second.id
    finally:
        await provider.destroy_sandbox(first.id)
        await provider.destroy_sandbox(second.id)
    assert await provider.list_sandboxes({"case": tag}) == []


async def test_timeout_kills_and_keeps_output_so_far(provider: SandboxProvider, sandbox_id: str) -> None:
    result = await provider.execute_command(sandbox_id, "echo started; sleep 30; echo never", timeout=1)
    assert result.timed_out
    assert not result.success
    assert "started" in result.stdout
    assert "never" not in result.stdout
    assert result.duration_ms < 15_000
    after = await provider.execute_command(sandbox_id, "echo still usable")
    assert after.stdout == "still usable\n"


async def test_output_is_capped_head_and_tail(provider: SandboxProvider, sandbox_id: str) -> None:
    # 64 KiB cap per stream in this fixture; print about 1 MiB.
    result = await provider.execute_command(sandbox_id, "echo FIRST; head -c 1000000 /dev/zero | tr '\\0' x; echo; echo LAST")
    assert result.success
    assert result.truncated
    assert result.stdout.startswith("FIRST\n")
    assert result.stdout.endswith("LAST\n")
    assert len(result.stdout.encode()) < 70 * 1024


async def test_destroy_ends_the_sandbox(provider: SandboxProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    assert await provider.destroy_sandbox(info.id) is True
    assert await provider.get_sandbox(info.id) is None
    assert await provider.destroy_sandbox(info.id) is False
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(info.id, "true")


async def test_unknown_sandbox_errors(provider: SandboxProvider) -> None:
    missing = "sb-000000000000" if provider.name == "local" else "does-not-exist-0000"
    assert await provider.get_sandbox(missing) is None
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(missing, "true")
    with pytest.raises(SandboxNotFoundError):
        await provider.write_file(missing, "x.txt", b"x")
    with pytest.raises(SandboxNotFoundError):
        await provider.read_file(missing, "x.txt")


async def test_empty_command_is_a_clear_error(provider: SandboxProvider, sandbox_id: str) -> None:
    with pytest.raises(ValueError, match=r"is empty|empty list"):
        await provider.execute_command(sandbox_id, "   ")
    with pytest.raises(ValueError, match=r"is empty|empty list"):
        await provider.execute_command(sandbox_id, [])


async def test_health_check_creates_nothing(provider: SandboxProvider) -> None:
    before = await provider.list_sandboxes()
    assert await provider.health_check() is True
    after = await provider.list_sandboxes()
    assert {i.id for i in after} == {i.id for i in before}
