"""A streamed command ends with its exit status, on every provider that streams."""

from __future__ import annotations

import pytest

from sandboxes import OutputChunk, SandboxConfig, SandboxProvider, UnsupportedOperation
from sandboxes.streaming import CommandStream

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sandbox_id(provider: SandboxProvider):
    info = await provider.create_sandbox(SandboxConfig(labels={"suite": "conformance-stream"}))
    try:
        yield info.id
    finally:
        await provider.destroy_sandbox(info.id)


async def test_stream_ends_with_the_exit_code(provider: SandboxProvider, sandbox_id: str) -> None:
    command = "echo out; sleep 0.1; echo err >&2; exit 3"
    if not provider.capabilities.streaming:
        with pytest.raises(UnsupportedOperation):
            async for _ in provider.stream_execution(sandbox_id, command):
                pass
        return
    stream = provider.stream_execution(sandbox_id, command)
    assert isinstance(stream, CommandStream)
    assert stream.exit_code is None and stream.timed_out is None  # not ended yet
    with pytest.raises(RuntimeError, match="not ended"):
        _ = stream.result
    chunks = [chunk async for chunk in stream]
    assert all(isinstance(chunk, OutputChunk) for chunk in chunks)  # the status is never yielded as a chunk
    assert "".join(c.data for c in chunks if c.stream == "stdout") == "out\n"
    assert "".join(c.data for c in chunks if c.stream == "stderr") == "err\n"
    assert (stream.exit_code, stream.timed_out, stream.success) == (3, False, False)
    result = stream.result
    assert (result.exit_code, result.stdout, result.stderr, result.timed_out) == (3, "out\n", "err\n", False)
    assert result.duration_ms > 0

    ok = provider.stream_execution(sandbox_id, ["printf", "%s", 'it\'s "$HOME"'])
    assert (await ok.wait()).stdout == 'it\'s "$HOME"'
    assert (ok.exit_code, ok.timed_out, ok.success) == (0, False, True)


async def test_stream_that_times_out_says_so(provider: SandboxProvider, sandbox_id: str) -> None:
    if not provider.capabilities.streaming:  # said at once, before anything runs
        with pytest.raises(UnsupportedOperation, match="streaming"):
            provider.stream_execution(sandbox_id, "echo started; sleep 30; echo never", timeout=1)
        return
    stream = provider.stream_execution(sandbox_id, "echo started; sleep 30; echo never", timeout=1)
    seen = "".join([chunk.data async for chunk in stream])
    assert seen == "started\n"
    assert stream.timed_out is True
    assert stream.exit_code is not None and stream.exit_code != 0
    assert not stream.success and stream.result.timed_out
    assert stream.result.duration_ms < 15_000
    after = provider.stream_execution(sandbox_id, "echo still usable")
    assert (await after.wait()).stdout == "still usable\n"
    assert (after.exit_code, after.timed_out) == (0, False)
