"""What the engine owns, the same on every provider: working_dir, the timeout's exit code,
commands of any size, per-sandbox settings from another handle, and errors replayed from a cassette."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sandboxes import SandboxConfig, SandboxProvider
from sandboxes.cassette import Cassette, cassette_provider
from sandboxes.errors import SetupFailed

pytestmark = pytest.mark.anyio


def _workdir() -> str:
    """Under /tmp: the emulators bind the host's / around a private /tmp, so a path elsewhere would be the host's."""
    return f"/tmp/wd-{uuid.uuid4().hex[:8]}/app/src"


async def test_working_dir_is_made_and_is_every_commands_default(provider: SandboxProvider) -> None:
    workdir = _workdir()
    info = await provider.create_sandbox(SandboxConfig(working_dir=workdir))
    try:
        # (the Cloudflare emulator runs commands in a host directory standing for /workspace: compare the tail)
        assert (await provider.execute_command(info.id, "pwd")).stdout.strip().endswith("/app/src")
        assert (await provider.execute_command(info.id, ["pwd"])).stdout.strip().endswith("/app/src")
        await provider.write_file(info.id, "notes.txt", b"relative")  # a relative path starts there too
        assert (await provider.execute_command(info.id, ["cat", f"{workdir}/notes.txt"])).stdout == "relative"
        assert (await provider.execute_command(info.id, "pwd", cwd=workdir.rsplit("/", 1)[0])).stdout.strip().endswith("/app")
        # Another handle (as from another process) knows it from the sandbox itself.
        again = await provider.get_sandbox(info.id)
        assert again is not None and not any(key.startswith("sandboxes.") for key in again.labels)
        fresh = SandboxProvider(provider.driver, spec=provider.spec)  # knows nothing of it yet
        assert (await fresh.execute_command(info.id, "pwd")).stdout.strip().endswith("/app/src")
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_relative_working_dir_is_refused_before_anything_is_made(provider: SandboxProvider) -> None:
    before = {i.id for i in await provider.list_sandboxes()}
    with pytest.raises(ValueError, match="absolute path"):
        await provider.create_sandbox(SandboxConfig(working_dir="app"))
    assert {i.id for i in await provider.list_sandboxes()} == before


async def test_a_timeout_exits_124_on_every_provider(provider: SandboxProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    try:
        result = await provider.execute_command(info.id, "sleep 30", timeout=1)
        assert (result.exit_code, result.timed_out) == (124, True)
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_command_over_one_mib_runs(provider: SandboxProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    try:
        payload = "y" * (1 << 20)
        result = await provider.execute_command(info.id, f"printf %s '{payload}' | wc -c")
        assert (result.exit_code, result.stdout.strip()) == (0, str(1 << 20)), result.describe()
        parts = [payload[:100_000]] * 11  # each under the kernel's per-argument limit, together over 1 MiB
        listed = await provider.execute_command(info.id, ["sh", "-c", 'printf %s "$@" | wc -c', "sh", *parts])
        assert listed.stdout.strip() == "1100000", listed.describe()
    finally:
        await provider.destroy_sandbox(info.id)


async def test_errors_replay_from_a_cassette_as_they_were_raised(provider: SandboxProvider, tmp_path: Path) -> None:
    path = tmp_path / "errors.yaml"
    recorder = cassette_provider(provider, Cassette(path, "once", provider=provider.name))
    with pytest.raises(SetupFailed):
        await recorder.create_sandbox(SandboxConfig(setup_commands=["exit 7"]))
    workdir = _workdir()
    info = await recorder.create_sandbox(SandboxConfig(working_dir=workdir))
    try:
        with pytest.raises(FileNotFoundError):
            await recorder.read_file(info.id, "absent")
        slow = await recorder.execute_command(info.id, "sleep 30", timeout=1)
    finally:
        await recorder.destroy_sandbox(info.id)
    assert recorder.cassette is not None and recorder.cassette.save()

    player = cassette_provider(None, Cassette(path, "none", provider=provider.name))
    with pytest.raises(SetupFailed) as setup:
        await player.create_sandbox(SandboxConfig(setup_commands=["exit 7"]))
    assert setup.value.result.exit_code == 7
    replayed = await player.create_sandbox(SandboxConfig(working_dir=workdir))
    with pytest.raises(FileNotFoundError):
        await player.read_file(replayed.id, "absent")
    again = await player.execute_command(replayed.id, "sleep 30", timeout=1)
    assert (again.exit_code, again.timed_out) == (slow.exit_code, slow.timed_out) == (124, True)
    await player.destroy_sandbox(replayed.id)


async def test_a_spilled_command_means_what_it_would_unspilled(provider: SandboxProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxes.provider as engine

    monkeypatch.setattr(engine, "SPILL_BYTES", 0)  # every command through a file, as a long one goes
    info = await provider.create_sandbox(SandboxConfig())
    try:
        for argv in (["cd", "/tmp"], ["exit", "3"], ["FOO=1", "env"], ["if"]):  # a word of a list is never shell syntax
            assert (await provider.execute_command(info.id, argv)).exit_code == 127, argv
        assert (await provider.execute_command(info.id, ["printf", "%s", "a\\cb"])).stdout == "a\\cb"
        assert (await provider.execute_command(info.id, "exit 5")).exit_code == 5
        assert (await provider.execute_command(info.id, "echo $0")).stdout.strip().endswith("sh")
        assert (await provider.execute_command(info.id, "echo $VALUE", env={"VALUE": 'it\'s "quoted" $HOME'})).stdout == 'it\'s "quoted" $HOME\n'
        assert (await provider.execute_command(info.id, "cat", stdin="fed\n")).stdout == "fed\n"
        for script in ("exec true", "kill -TERM $$", "trap - EXIT; true"):
            await provider.execute_command(info.id, script)
        monkeypatch.setattr(engine, "SPILL_BYTES", 10**9)
        left = await provider.execute_command(info.id, "ls -A /tmp | grep -c sandboxes-cmd || true")
        assert left.stdout.strip() == "0", "a spilled script was left behind"
    finally:
        await provider.destroy_sandbox(info.id)


async def test_a_relative_download_starts_at_the_working_dir(provider: SandboxProvider, tmp_path: Path) -> None:
    info = await provider.create_sandbox(SandboxConfig(working_dir=_workdir()))
    try:
        await provider.write_file(info.id, "d/a.txt", b"in the working dir")
        await provider.download_file(info.id, "d", tmp_path / "tree")
        assert (tmp_path / "tree" / "a.txt").read_bytes() == b"in the working dir"
        await provider.download_file(info.id, "d/a.txt", tmp_path / "one.txt")
        assert (tmp_path / "one.txt").read_bytes() == b"in the working dir"
    finally:
        await provider.destroy_sandbox(info.id)
