"""Streaming with an exit status: the async Sandbox, the blocking facade, and record/replay."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml

from sandboxes import OutputChunk, Sandbox, SandboxConfig, sync
from sandboxes.cassette import Cassette, cassette_provider
from sandboxes.providers.local import LocalProvider
from sandboxes.streaming import CommandStream


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> LocalProvider:
    return LocalProvider(state_dir=tmp_path_factory.mktemp("streaming-state"))


@pytest.fixture(scope="module")
def shared(provider: LocalProvider) -> Iterator[sync.Sandbox]:
    info = sync.portal().call(provider.create_sandbox, SandboxConfig(labels={"test": "streaming"}))
    sandbox = sync.Sandbox(Sandbox(provider, info))
    yield sandbox
    sandbox.destroy()


def test_async_stream_keeps_the_loop_and_adds_the_status(shared: sync.Sandbox) -> None:
    async def scenario() -> None:
        sandbox = shared.async_sandbox
        printed = []
        stream = sandbox.stream("echo one; echo two >&2; exit 7")
        async for chunk in stream:
            printed.append(str(chunk))
        assert "".join(printed) in ("one\ntwo\n", "two\none\n")
        assert (stream.exit_code, stream.timed_out) == (7, False)
        assert (stream.result.stdout, stream.result.stderr, stream.result.exit_code) == ("one\n", "two\n", 7)
        assert stream.result.command == "echo one; echo two >&2; exit 7"
        assert "exit_code=7" in repr(stream)
        # The provider's own stream, as the reference README uses it, unchanged.
        seen = [chunk async for chunk in sandbox.provider_instance.stream_execution(sandbox.id, ["echo", "raw"])]
        assert seen == [OutputChunk("stdout", "raw\n")]

    sync.portal().call(scenario)


def test_blocking_stream_and_its_status(shared: sync.Sandbox) -> None:
    stream = shared.stream(["sh", "-c", "echo a; sleep 0.05; echo b; exit 2"])
    assert stream.exit_code is None
    assert "".join(chunk.data for chunk in stream) == "a\nb\n"
    assert (stream.exit_code, stream.timed_out, stream.success) == (2, False, False)
    assert stream.result.stdout == "a\nb\n"
    late = shared.stream("echo late; sleep 20", timeout=1).wait()
    assert (late.stdout, late.timed_out, late.exit_code != 0) == ("late\n", True, True)


def test_leaving_the_loop_early_stops_the_command(shared: sync.Sandbox) -> None:
    shared.execute("rm -f /workspace/finished")
    started = time.monotonic()
    for chunk in shared.stream("echo first; sleep 1; touch /workspace/finished"):
        assert chunk.data == "first\n"
        break
    assert time.monotonic() - started < 1  # did not wait for the command
    time.sleep(1.3)
    assert shared.execute(["test", "-e", "/workspace/finished"]).exit_code == 1  # killed, never finished

    with shared.stream("echo x; sleep 5") as stream:
        next(stream)
    assert stream.exit_code is None and not stream.ended
    with pytest.raises(RuntimeError, match="not ended"):
        _ = stream.result


def test_cassette_records_and_replays_the_status(provider: LocalProvider, tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"

    async def record_then_replay() -> None:
        recording = cassette_provider(provider, Cassette(path, "all", provider="local"))
        info = await recording.create_sandbox(SandboxConfig())
        ok = recording.stream_execution(info.id, "echo hi; exit 3")
        assert isinstance(ok, CommandStream)
        assert (await ok.wait()).stdout == "hi\n"
        late = recording.stream_execution(info.id, "echo slow; sleep 20", timeout=1)
        await late.wait()
        await recording.destroy_sandbox(info.id)
        recording.cassette.save()
        assert (ok.exit_code, late.timed_out) == (3, True)

        ended = [i["result"] for i in yaml.safe_load(path.read_text())["interactions"] if i["op"] == "exec"]
        assert ended[0] == {"output": [{"stream": "stdout", "text": "hi\n"}], "exit_code": 3}
        assert ended[1]["timed_out"] is True

        replaying = cassette_provider(None, Cassette(path, "none", provider="local"))
        sandbox_id = (await replaying.create_sandbox(SandboxConfig())).id
        again = replaying.stream_execution(sandbox_id, "echo hi; exit 3")
        assert [chunk async for chunk in again] == [OutputChunk("stdout", "hi\n")]
        assert (again.exit_code, again.timed_out) == (3, False)
        slow = replaying.stream_execution(sandbox_id, "echo slow; sleep 20", timeout=1)
        assert ((await slow.wait()).stdout, slow.timed_out) == ("slow\n", True)

    anyio.run(record_then_replay)


def test_a_cassette_recorded_before_stream_statuses_still_replays(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(
        "version: 1\nprovider: local\ncapabilities: [streaming]\ninteractions:\n"
        "- op: create\n  args: {image: null, labels: {}, env: {}, lifetime: null, memory_mb: null, cpus: null,"
        " network: null, working_dir: null, setup_commands: []}\n  result: {sandbox: sandbox-1}\n"
        "- op: stream\n  args: {sandbox: sandbox-1, command: echo old, env: {}, cwd: null, timeout: null}\n"
        '  result:\n    chunks: [{stream: stdout, data: "old\\n"}]\n    ended: {complete: true}\n'
    )

    async def replay() -> None:
        replaying = cassette_provider(None, Cassette(path, "none", provider="local"))
        sandbox_id = (await replaying.create_sandbox(SandboxConfig())).id
        stream = replaying.stream_execution(sandbox_id, "echo old")
        assert [chunk.data async for chunk in stream] == ["old\n"]
        assert stream.ended and stream.exit_code is None  # nothing recorded, nothing invented
        with pytest.raises(RuntimeError, match="without an exit status"):
            _ = stream.result

    anyio.run(replay)
