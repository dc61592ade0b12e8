"""CloudflareProvider against the loopback Sandbox Bridge emulator, and cassette replay.

The cassette test replays recorded HTTP traffic with no emulator running
(vcrpy, record_mode "none", matched on method + path). To re-record it:
``SANDBOXES_RECORD_CASSETTES=1 python -m pytest tests/providers/test_cloudflare.py -k cassette``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import vcr

from sandboxes import SandboxConfig
from sandboxes.errors import (
    AuthenticationError,
    ProviderError,
    ProviderUnavailable,
    RateLimitError,
    SandboxNotFoundError,
    UnsupportedOperation,
)
from sandboxes.manager import provider_class
from sandboxes.providers import CloudflareProvider
from tests.emulators.cloudflare import CloudflareBridgeEmulator, open_provider

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CASSETTE = ROOT / "cassettes" / "cloudflare" / "create_exec_files_destroy.yaml"
CASSETTE_TOKEN = "cf-cassette-secret-52d9"  # the token used while recording: must never reach the file
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def emulator() -> Iterator[CloudflareBridgeEmulator]:
    emulator = CloudflareBridgeEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def provider(emulator: CloudflareBridgeEmulator, tmp_path: Path) -> Iterator[CloudflareProvider]:
    emulator.faults.clear()
    with open_provider(emulator, state_dir=tmp_path / "registry") as provider:
        yield provider


@pytest.fixture
async def sandbox_id(provider: CloudflareProvider) -> str:
    info = await provider.create_sandbox(SandboxConfig(labels={"suite": "cloudflare"}))
    yield info.id
    await provider.destroy_sandbox(info.id)


# -- credentials and secrets ------------------------------------------------------------------
def test_the_provider_class_is_the_engine_over_the_driver() -> None:
    assert provider_class("cloudflare") is CloudflareProvider
    assert CloudflareProvider.driver_class is not None and CloudflareProvider.driver_class.__name__ == "CloudflareDriver"


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDFLARE_SANDBOX_BASE_URL", raising=False)
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    with pytest.raises(ProviderUnavailable, match="CLOUDFLARE_SANDBOX_BASE_URL and CLOUDFLARE_API_TOKEN"):
        CloudflareProvider()
    monkeypatch.setenv("CLOUDFLARE_SANDBOX_BASE_URL", "https://bridge.example.workers.dev")
    with pytest.raises(ProviderUnavailable) as caught:
        CloudflareProvider()
    assert "CLOUDFLARE_API_TOKEN" in str(caught.value) and "BASE_URL" not in str(caught.value)


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDFLARE_SANDBOX_BASE_URL", "https://bridge.example.workers.dev/")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-token-from-env")
    provider = CloudflareProvider(state_dir=tmp_path)
    assert provider.base_url == "https://bridge.example.workers.dev"
    assert "cf-token-from-env" not in repr(provider)


async def test_rejected_token_never_appears_in_errors_or_repr(emulator: CloudflareBridgeEmulator, tmp_path: Path) -> None:
    secret = "cf-live-token-that-must-stay-hidden"
    provider = CloudflareProvider(base_url=emulator.url, api_token=secret, state_dir=tmp_path)
    assert secret not in repr(provider)
    with pytest.raises(AuthenticationError) as caught:
        await provider.create_sandbox(SandboxConfig())
    assert "CLOUDFLARE_API_TOKEN" in str(caught.value)
    assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert not (tmp_path / "registry.json").exists() or secret not in (tmp_path / "registry.json").read_text()


# -- what the bridge does --------------------------------------------------------------------------
async def test_streaming_delivers_output_as_it_is_produced(provider: CloudflareProvider, sandbox_id: str) -> None:
    started = time.monotonic()
    arrivals = []
    async for chunk in provider.stream_execution(sandbox_id, "echo first; sleep 0.6; echo second >&2"):
        arrivals.append((chunk.stream, chunk.data, time.monotonic() - started))
    assert [(s, d) for s, d, _ in arrivals] == [("stdout", "first\n"), ("stderr", "second\n")]
    assert arrivals[0][2] < arrivals[1][2] - 0.4, "the first line waited for the end: not streamed"


async def test_timeout_and_an_early_close_end_the_command(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str) -> None:
    result = await provider.execute_command(sandbox_id, "sleep 5", timeout=0.5)
    assert (result.exit_code, result.timed_out) == (124, True) and result.duration_ms < 4000
    stream = provider.stream_execution(sandbox_id, "echo start; sleep 1; touch late", env={"A": "1"})
    async for chunk in stream:
        assert chunk.data == "start\n"
        break
    await stream.aclose()
    await anyio.sleep(1.5)
    container = emulator.containers[sandbox_id]
    assert not (container.root / "late").exists() and container.sessions == {}


async def test_env_goes_through_a_session_and_cwd_through_exec(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str) -> None:
    await provider.execute_command(sandbox_id, ["mkdir", "-p", "src"])
    before = len(emulator.requests)
    result = await provider.execute_command(sandbox_id, ["sh", "-c", 'echo "$WHO"; pwd'], env={"WHO": "me"}, cwd="src")
    assert result.stdout.splitlines()[0] == "me" and result.stdout.splitlines()[1].endswith("/src")
    calls = [method + " " + path.split("/", 4)[-1] for method, path in emulator.requests[before:]]
    assert calls[:2] == ["POST session", "POST exec"] and calls[2].startswith("DELETE session/")
    container = emulator.containers[sandbox_id]
    assert container.sessions == {}, "the per-command session was not deleted"


async def test_sandbox_env_applies_to_every_command(provider: CloudflareProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig(env={"STAGE": "ci"}, working_dir="/workspace/app"))
    try:
        result = await provider.execute_command(info.id, 'echo "$STAGE"; pwd')
        assert result.stdout.splitlines()[0] == "ci"
        assert result.stdout.splitlines()[1].endswith("/app")
    finally:
        await provider.destroy_sandbox(info.id)


async def test_unsupported_choices_are_said(provider: CloudflareProvider, sandbox_id: str) -> None:
    assert provider.capabilities.native_labels is False
    for config in (SandboxConfig(image="python:3.12"), SandboxConfig(memory_mb=512), SandboxConfig(network=False)):
        with pytest.raises(UnsupportedOperation):
            await provider.create_sandbox(config)
    assert (await provider.execute_command(sandbox_id, "cat", stdin=b"x")).stdout == "x"  # no stdin stream: fed from a file


async def test_files_outside_the_workspace(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str, tmp_path: Path) -> None:
    """The file routes serve /workspace only: elsewhere reads go through base64, writes through a copy staged in /workspace."""
    await provider.write_file(sandbox_id, "/workspace/deep/a.bin", b"\x00\x01")
    assert await provider.read_file(sandbox_id, "deep/a.bin") == b"\x00\x01"
    with pytest.raises(IsADirectoryError):
        await provider.read_file(sandbox_id, "deep")
    outside = tmp_path / "outside" / "b.bin"  # the emulator's commands run on this host: outside /workspace is the host's
    await provider.write_file(sandbox_id, str(outside), b"\x02\x03")
    assert outside.read_bytes() == b"\x02\x03"
    assert await provider.read_file(sandbox_id, str(outside)) == b"\x02\x03"
    assert not list(emulator.containers[sandbox_id].root.glob(".sandboxes-upload-*")), "the staged copy was left behind"
    with pytest.raises(IsADirectoryError):
        await provider.write_file(sandbox_id, str(tmp_path), b"x")
    with pytest.raises(NotADirectoryError):
        await provider.write_file(sandbox_id, str(outside / "c"), b"x")
    with pytest.raises(IsADirectoryError):
        await provider.read_file(sandbox_id, str(tmp_path))
    assert await provider.read_file(sandbox_id, "/etc/hostname") == Path("/etc/hostname").read_bytes()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        await provider.read_file(sandbox_id, "/nowhere/file")


async def test_long_command_goes_through_a_script(provider: CloudflareProvider, sandbox_id: str) -> None:
    payload = "y" * 200_000
    result = await provider.execute_command(sandbox_id, f"printf %s '{payload}' | wc -c")
    assert result.stdout.strip() == "200000"


# -- faults ------------------------------------------------------------------------------------------
async def test_server_error_is_a_provider_error(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator) -> None:
    emulator.fail_next(500, path_contains="/v1/sandbox", method="POST")
    with pytest.raises(ProviderError) as caught:
        await provider.create_sandbox(SandboxConfig())
    assert type(caught.value) is ProviderError and "500" in str(caught.value)
    assert await provider.list_sandboxes() == []


async def test_rate_limit_carries_retry_after(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str) -> None:
    emulator.fail_next(429, retry_after=3, path_contains="/exec")
    with pytest.raises(RateLimitError) as caught:
        await provider.execute_command(sandbox_id, "true")
    assert caught.value.retry_after == 3


async def test_unreachable_bridge_is_a_provider_error(tmp_path: Path) -> None:
    provider = CloudflareProvider(base_url=UNREACHABLE, api_token="t", state_dir=tmp_path)
    with pytest.raises(ProviderError, match="cannot reach"):
        await provider.create_sandbox(SandboxConfig())
    assert await provider.health_check() is False


async def test_destroyed_elsewhere_is_not_found(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"who": "other"}))
    other = CloudflareProvider(base_url=emulator.url, api_token=emulator.api_token, state_dir=provider.state_dir)
    assert await other.destroy_sandbox(info.id) is True
    with pytest.raises(SandboxNotFoundError, match=info.id):
        await provider.execute_command(info.id, "true")
    with pytest.raises(SandboxNotFoundError):
        await provider.read_file(info.id, "x")
    assert await provider.get_sandbox(info.id) is None
    assert await provider.destroy_sandbox(info.id) is False


async def test_expired_lifetime_is_enforced_by_the_client(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"short": "lived"}, lifetime=0.2))
    await provider.write_file(info.id, "keep.txt", b"x")
    await anyio.sleep(0.3)
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(info.id, "true")
    assert await provider.list_sandboxes({"short": "lived"}) == []
    assert info.id not in emulator.containers, "the expired sandbox was not destroyed on the bridge"


async def test_vanished_container_comes_back_empty(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str) -> None:
    """As on the real bridge: an evicted container restarts empty under the same id."""
    await provider.write_file(sandbox_id, "state.txt", b"before")
    emulator.vanish(sandbox_id)
    with pytest.raises(FileNotFoundError):
        await provider.read_file(sandbox_id, "state.txt")
    assert (await provider.execute_command(sandbox_id, "echo alive")).stdout == "alive\n"


async def test_a_hung_request_can_be_cancelled(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator, sandbox_id: str) -> None:
    emulator.hang(10, path_contains="/exec")
    with anyio.move_on_after(0.5) as scope:
        await provider.execute_command(sandbox_id, "echo late")
    assert scope.cancelled_caught
    emulator.release()
    assert (await provider.execute_command(sandbox_id, "echo next")).stdout == "next\n"


# -- across processes -----------------------------------------------------------------------------------
async def test_another_process_finds_the_sandbox_by_labels(provider: CloudflareProvider, emulator: CloudflareBridgeEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"shared": "cross-process"}))
    try:
        code = (
            "import anyio, json, sys\n"
            "from sandboxes.providers import CloudflareProvider\n"
            "async def main():\n"
            "    p = CloudflareProvider(state_dir=sys.argv[1])\n"
            "    found = await p.find_sandbox({'shared': 'cross-process'})\n"
            "    result = await p.execute_command(found.id, 'echo from-elsewhere')\n"
            "    print(json.dumps([found.id, found.labels, result.stdout]))\n"
            "anyio.run(main)\n"
        )
        env = {
            **os.environ,
            "CLOUDFLARE_SANDBOX_BASE_URL": emulator.url,
            "CLOUDFLARE_API_TOKEN": emulator.api_token,
            "PYTHONPATH": str(ROOT),
        }
        done = await anyio.run_process([sys.executable, "-c", code, str(provider.state_dir)], env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout) == [info.id, {"shared": "cross-process"}, "from-elsewhere\n"]
    finally:
        await provider.destroy_sandbox(info.id)


# -- cassettes: replay with no emulator --------------------------------------------------------------------
def _recorder(mode: str) -> vcr.VCR:
    return vcr.VCR(record_mode=mode, match_on=["method", "path"], filter_headers=["authorization"])


async def _scenario(provider: CloudflareProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"cassette": "cloudflare"}))
    result = await provider.execute_command(info.id, "echo hello; echo oops >&2; exit 2")
    assert (result.stdout, result.stderr, result.exit_code) == ("hello\n", "oops\n", 2)
    await provider.write_file(info.id, "notes/hello.txt", b"recorded bytes\x00\xff")
    assert await provider.read_file(info.id, "notes/hello.txt") == b"recorded bytes\x00\xff"
    assert await provider.destroy_sandbox(info.id) is True


async def test_cassette_replays_without_the_emulator(tmp_path: Path) -> None:
    if os.environ.get("SANDBOXES_RECORD_CASSETTES"):
        CASSETTE.parent.mkdir(parents=True, exist_ok=True)
        CASSETTE.unlink(missing_ok=True)
        emulator = CloudflareBridgeEmulator(api_token=CASSETTE_TOKEN).start()
        try:
            provider = CloudflareProvider(base_url=emulator.url, api_token=CASSETTE_TOKEN, state_dir=tmp_path / "rec")
            with _recorder("all").use_cassette(str(CASSETTE)):
                await _scenario(provider)
        finally:
            emulator.stop()
    assert CASSETTE.exists(), f"missing {CASSETTE}: record it with SANDBOXES_RECORD_CASSETTES=1"
    provider = CloudflareProvider(base_url=UNREACHABLE, api_token="replay-token", state_dir=tmp_path / "play")
    with _recorder("none").use_cassette(str(CASSETTE)) as cassette:
        await _scenario(provider)
    assert cassette.all_played


def test_cassette_holds_no_secret() -> None:
    text = CASSETTE.read_text()
    assert CASSETTE_TOKEN not in text
    assert "authorization" not in text.lower()
    assert "Bearer" not in text
