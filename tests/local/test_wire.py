"""The frames between the host and the agent: requests of any size."""

from __future__ import annotations

import pytest

from sandboxes import SandboxConfig
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local import _wire as wire

pytestmark = pytest.mark.anyio


def test_a_request_larger_than_a_frame_is_split_and_parses_back() -> None:
    request = {"op": "exec", "argv": ["sh", "-c", "x" * (3 * wire.MAX_FRAME + 5)]}
    frames = wire.FrameParser().feed(wire.request_frame(request))
    assert [kind for kind, _ in frames] == [wire.HEADER_PART] * 3 + [wire.HEADER]
    assert wire.decode_request(b"".join(payload for _, payload in frames)) == request
    assert [kind for kind, _ in wire.FrameParser().feed(wire.request_frame({"op": "ping"}))] == [wire.HEADER]


async def test_a_command_and_an_environment_over_a_mebibyte_run() -> None:
    provider = LocalProvider()
    info = await provider.create_sandbox(SandboxConfig())
    try:
        command = "x=" + "a" * 1_500_000 + "; echo ${#x}"
        assert (await provider.execute_command(info.id, command)).stdout == "1500000\n"
        env = {f"V{i}": "b" * 100_000 for i in range(12)}  # 1.2 MB; one value stays under the kernel's 128 KiB
        result = await provider.execute_command(info.id, "echo ${#V0} ${#V11}", env=env)
        assert (result.exit_code, result.stdout) == (0, "100000 100000\n"), result.describe()
    finally:
        await provider.destroy_sandbox(info.id)
