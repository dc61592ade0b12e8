"""DaytonaProvider (the engine over DaytonaDriver): the unmodified SDK against the loopback emulator, and cassette replay.

The cassette test replays recorded HTTP traffic with no emulator running
(vcrpy, record_mode "none", matched on method + path). To re-record it:
``SANDBOXES_RECORD_CASSETTES=1 python -m pytest tests/providers/test_daytona.py -k cassette``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

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
from sandboxes.providers import DaytonaProvider
from tests.emulators.daytona import DaytonaEmulator, open_provider, provider_env

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CASSETTE = ROOT / "cassettes" / "daytona" / "create_exec_files_destroy.yaml"
CASSETTE_KEY = "dtn-cassette-secret-7c1e"  # the key used while recording: must never reach the file
UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: any request that escapes the cassette fails


@pytest.fixture(scope="module")
def emulator() -> Iterator[DaytonaEmulator]:
    emulator = DaytonaEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture
def provider(emulator: DaytonaEmulator) -> Iterator[DaytonaProvider]:
    emulator.faults.clear()
    with open_provider(emulator) as provider:
        yield provider


@pytest.fixture
async def sandbox_id(provider: DaytonaProvider) -> str:
    info = await provider.create_sandbox(SandboxConfig(labels={"suite": "daytona"}))
    yield info.id
    await provider.destroy_sandbox(info.id)


# -- credentials and secrets ------------------------------------------------------------
def test_missing_api_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    with pytest.raises(ProviderUnavailable, match="DAYTONA_API_KEY"):
        DaytonaProvider()


async def test_rejected_key_never_appears_in_errors_or_repr(emulator: DaytonaEmulator) -> None:
    secret = "dtn-live-key-that-must-stay-hidden"
    provider = DaytonaProvider(api_key=secret, api_url=emulator.url, use_deprecated_polling=True)
    try:
        assert secret not in repr(provider)
        with pytest.raises(AuthenticationError) as caught:
            await provider.create_sandbox(SandboxConfig())
        assert "DAYTONA_API_KEY" in str(caught.value)
        for text in (str(caught.value), repr(caught.value), repr(caught.value.__cause__)):
            assert secret not in text
        assert await provider.health_check() is False
    finally:
        provider.close()


# -- what goes over the wire ----------------------------------------------------------------
async def test_labels_env_lifetime_and_network_use_native_fields(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"team": "evals"}, env={"MODE": "test"}, lifetime=300, network=False))
    try:
        body = emulator.sandboxes[info.id].body
        assert body["labels"]["team"] == "evals"
        assert body["env"] == {"MODE": "test"}
        assert body["ttlMinutes"] == 5
        assert body["networkBlockAll"] is True
        assert info.labels == {"team": "evals"}  # the SDK's language label is not the user's
        assert info.expires_at is not None and info.expires_at > info.created_at
        result = await provider.execute_command(info.id, "echo $MODE")
        assert result.stdout == "test\n"
    finally:
        await provider.destroy_sandbox(info.id)


async def test_env_and_cwd_go_to_native_parameters(provider: DaytonaProvider, emulator: DaytonaEmulator, sandbox_id: str) -> None:
    await provider.execute_command(sandbox_id, ["mkdir", "-p", "work"])
    result = await provider.execute_command(sandbox_id, "echo $WHO; pwd", env={"WHO": "me"}, cwd="work")
    assert result.stdout.splitlines()[0] == "me" and result.stdout.splitlines()[1].endswith("/work")
    sent = emulator.executions[-1]
    assert sent["envs"] == {"WHO": "me"} and sent["cwd"] == "work"
    assert "export" not in sent["command"] and "WHO=" not in sent["command"]


async def test_stderr_comes_back_inside_stdout(provider: DaytonaProvider, sandbox_id: str) -> None:
    result = await provider.execute_command(sandbox_id, "echo out; echo err >&2")
    assert result.stdout == "out\nerr\n"
    assert result.stderr == ""
    assert provider.capabilities.merges_stderr is True


async def test_streaming_is_unsupported_not_faked_and_stdin_comes_from_a_file(provider: DaytonaProvider, sandbox_id: str) -> None:
    assert not provider.capabilities.streaming and not provider.capabilities.stdin
    with pytest.raises(UnsupportedOperation, match="streaming"):
        async for _ in provider.stream_execution(sandbox_id, "echo hi"):
            pass
    assert (await provider.execute_command(sandbox_id, "cat", stdin="data")).stdout == "data"


async def test_resources_need_an_image(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    with pytest.raises(UnsupportedOperation, match="image"):
        await provider.create_sandbox(SandboxConfig(memory_mb=2048))
    info = await provider.create_sandbox(SandboxConfig(image="python:3.12-slim", memory_mb=2048, cpus=2))
    try:
        body = emulator.sandboxes[info.id].body
        assert body["cpu"] == 2 and body["memory"] == 2
        assert "python:3.12-slim" in body["buildInfo"]["dockerfileContent"]
    finally:
        await provider.destroy_sandbox(info.id)


async def test_long_command_goes_through_a_script(provider: DaytonaProvider, sandbox_id: str) -> None:
    payload = "x" * 200_000
    result = await provider.execute_command(sandbox_id, f"printf %s '{payload}' | wc -c")
    assert result.stdout.strip() == "200000"


async def test_list_follows_every_page(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    created = [await provider.create_sandbox(SandboxConfig(labels={"paged": "yes", "n": str(i)})) for i in range(5)]
    try:
        before = len(emulator.requests)
        listed = await provider.list_sandboxes({"paged": "yes"})
        assert {i.id for i in listed} == {i.id for i in created}
        pages = [r for r in emulator.requests[before:] if r == ("GET", "/sandbox")]
        assert len(pages) == 3  # page size 2: 2 + 2 + 1
    finally:
        for info in created:
            await provider.destroy_sandbox(info.id)


# -- faults ------------------------------------------------------------------------------------
async def test_server_error_is_a_provider_error(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    emulator.fail_next(500, path_contains="/sandbox", method="POST")
    with pytest.raises(ProviderError) as caught:
        await provider.create_sandbox(SandboxConfig())
    assert type(caught.value) is ProviderError and "500" in str(caught.value)


async def test_rate_limit_carries_retry_after(provider: DaytonaProvider, emulator: DaytonaEmulator, sandbox_id: str) -> None:
    emulator.fail_next(429, retry_after=7, path_contains="/process/execute")
    with pytest.raises(RateLimitError) as caught:
        await provider.execute_command(sandbox_id, "true")
    assert caught.value.retry_after == 7
    assert (await provider.execute_command(sandbox_id, "echo ok")).stdout == "ok\n"


async def test_vanished_sandbox_is_not_found(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    emulator.vanish(info.id)
    with pytest.raises(SandboxNotFoundError, match=info.id):
        await provider.execute_command(info.id, "true")
    with pytest.raises(SandboxNotFoundError):
        await provider.read_file(info.id, "x.txt")
    assert await provider.get_sandbox(info.id) is None
    assert await provider.destroy_sandbox(info.id) is False


async def test_a_hung_request_can_be_cancelled(provider: DaytonaProvider, emulator: DaytonaEmulator, sandbox_id: str) -> None:
    emulator.hang(10, path_contains="/process/execute")
    with anyio.move_on_after(0.5) as scope:
        await provider.execute_command(sandbox_id, "echo late")
    assert scope.cancelled_caught
    emulator.release()
    assert (await provider.execute_command(sandbox_id, "echo next")).stdout == "next\n"


# -- across processes --------------------------------------------------------------------------------
async def test_another_process_finds_the_sandbox_by_labels(provider: DaytonaProvider, emulator: DaytonaEmulator) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"shared": "cross-process"}))
    try:
        code = (
            "import anyio, json\n"
            "from sandboxes.providers import DaytonaProvider\n"
            "async def main():\n"
            "    p = DaytonaProvider()\n"
            "    found = await p.find_sandbox({'shared': 'cross-process'})\n"
            "    result = await p.execute_command(found.id, 'echo from-elsewhere')\n"
            "    print(json.dumps([found.id, result.stdout]))\n"
            "    await p.aclose()\n"
            "anyio.run(main)\n"
        )
        env = {**os.environ, **provider_env(emulator), "PYTHONPATH": str(ROOT)}
        done = await anyio.run_process([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout) == [info.id, "from-elsewhere\n"]
    finally:
        await provider.destroy_sandbox(info.id)


# -- cassettes: replay with no emulator ----------------------------------------------------------------
def _plain_request(request: Any) -> Any:
    """Keep the cassette plain YAML: aiohttp's ``istr`` headers as strings, and an
    upload's ``FormData`` object (random boundary, not replayable) as a placeholder."""
    request.headers = {str(k): str(v) for k, v in request.headers.items()}
    if not isinstance(request.body, bytes | str | type(None)):
        request.body = b"<multipart form-data: files[0].path, files[0].file>"
    return request


def _plain_response(response: dict) -> dict:
    response["headers"] = {str(k): [str(v) for v in vs] for k, vs in response["headers"].items()}
    return response


def _recorder(mode: str) -> vcr.VCR:
    return vcr.VCR(
        record_mode=mode,
        match_on=["method", "path"],
        filter_headers=["authorization"],
        before_record_request=_plain_request,
        before_record_response=_plain_response,
    )


async def _scenario(provider: DaytonaProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig(labels={"cassette": "daytona"}))
    result = await provider.execute_command(info.id, "echo hello; exit 2", env={"A": "1"}, cwd=".")
    assert (result.stdout, result.exit_code) == ("hello\n", 2)
    await provider.write_file(info.id, "notes/hello.txt", b"recorded bytes\x00\xff")
    assert await provider.read_file(info.id, "notes/hello.txt") == b"recorded bytes\x00\xff"
    assert await provider.destroy_sandbox(info.id) is True


async def test_cassette_replays_without_the_emulator() -> None:
    if os.environ.get("SANDBOXES_RECORD_CASSETTES"):
        CASSETTE.parent.mkdir(parents=True, exist_ok=True)
        CASSETTE.unlink(missing_ok=True)
        emulator = DaytonaEmulator(api_key=CASSETTE_KEY).start()
        try:
            with mock.patch.dict(os.environ, {**provider_env(emulator, CASSETTE_KEY)}):
                provider = DaytonaProvider()
            try:
                with _recorder("all").use_cassette(str(CASSETTE)):
                    await _scenario(provider)
            finally:
                provider.close()
        finally:
            emulator.stop()
    assert CASSETTE.exists(), f"missing {CASSETTE}: record it with SANDBOXES_RECORD_CASSETTES=1"
    provider = DaytonaProvider(api_key="replay-key", api_url=UNREACHABLE, use_deprecated_polling=True)
    try:
        with _recorder("none").use_cassette(str(CASSETTE)) as cassette:
            await _scenario(provider)
        assert cassette.all_played
    finally:
        provider.close()


def test_cassette_holds_no_secret() -> None:
    text = CASSETTE.read_text()
    assert CASSETTE_KEY not in text
    assert "authorization" not in text.lower()
    assert "Bearer" not in text


@pytest.mark.parametrize("closed", [True, False], ids=["session", "no-session"])
async def test_a_session_closes_the_cloud_clients_at_its_end(emulator: DaytonaEmulator, closed: bool) -> None:
    body = "    sandbox = await Sandbox.create('daytona')\n    print((await sandbox.execute('echo hi')).stdout, end='')\n    await sandbox.destroy()\n"
    if closed:
        body = "    async with sandboxes.session():\n" + "".join("    " + line + "\n" for line in body.splitlines())
    code = "import asyncio, sandboxes\nfrom sandboxes import Sandbox\nasync def main():\n" + body + "asyncio.run(main())\n"
    env = {**os.environ, **provider_env(emulator), "PYTHONPATH": str(ROOT)}
    done = await anyio.run_process([sys.executable, "-c", code], env=env, check=False)
    assert done.returncode == 0 and done.stdout == b"hi\n", done.stderr.decode()
    assert (b"Unclosed" not in done.stderr) == closed, done.stderr.decode()


async def test_embedded_tests_are_judged_with_stdin_from_a_file_and_the_report_inside_stdout(provider: DaytonaProvider, sandbox_id: str) -> None:
    """HumanEval's way on Daytona: the harness's nonce comes through the stdin file, its report out of the merged output."""
    from sandboxes import Sandbox
    from sandboxes.judging import Verdict, judge

    info = await provider.get_sandbox(sandbox_id)
    assert info is not None
    sandbox = Sandbox(provider, info)
    tests = "def check(f):\n    assert f(1, 2) == 3\n\ncheck(add)\n"
    passed = await judge(sandbox, "def add(a, b):\n    return a + b\n", "python", tests=tests)
    assert passed.verdict is Verdict.PASSED, passed.reason
    wrong = await judge(sandbox, "def add(a, b):\n    return a - b\n", "python", tests=tests)
    assert wrong.verdict is Verdict.WRONG_ANSWER, wrong.reason
    quitter = await judge(sandbox, "import sys\ndef add(a, b):\n    sys.exit(0)\n", "python", tests=tests)
    assert quitter.verdict is not Verdict.PASSED  # an early exit never carries the nonce
