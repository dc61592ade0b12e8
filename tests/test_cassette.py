"""The provider-neutral cassette, through its public classes (the plugin's use is in tests/plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxes import SandboxConfig
from sandboxes.cassette import Cassette, cassette_provider
from sandboxes.providers.local import LocalProvider

pytestmark = pytest.mark.anyio

HOG = ["python3", "-c", "import mmap\nm = mmap.mmap(-1, 400 << 20)\nfor i in range(0, 400 << 20, 4096): m[i] = 1"]


async def test_a_memory_kill_replays_as_a_memory_kill(tmp_path: Path) -> None:
    local = LocalProvider(memory_mb=128)
    path = tmp_path / "oom.yaml"
    recorder = cassette_provider(local, Cassette(path, "once", provider="local"))
    info = await recorder.create_sandbox(SandboxConfig())
    try:
        live = await recorder.execute_command(info.id, HOG, timeout=60)
    finally:
        await recorder.destroy_sandbox(info.id)
    if not live.oom_killed:
        pytest.skip(f"no cgroup here to report a memory kill: {live.describe()}")
    assert recorder.cassette is not None and recorder.cassette.save()
    assert "oom_killed: true" in path.read_text()
    player = cassette_provider(None, Cassette(path, "none", provider="local"))
    replayed_info = await player.create_sandbox(SandboxConfig())
    replayed = await player.execute_command(replayed_info.id, HOG, timeout=60)
    assert (replayed.oom_killed, replayed.exit_code) == (True, live.exit_code)
