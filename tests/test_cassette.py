"""The provider-neutral cassette, through its public classes (the plugin's use is in tests/plugin)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sandboxes import Sandbox, SandboxConfig, judge, judging
from sandboxes import cassette as cassette_module
from sandboxes.cassette import Cassette, cassette_provider
from sandboxes.errors import CassetteError, SetupFailed
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


# -- format 1 files keep replaying ------------------------------------------------------------------
DATA = Path(__file__).parent / "data"


async def test_a_format_1_cassette_is_migrated_and_replays(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text((DATA / "format1_timeout.yaml").read_text())
    player = cassette_provider(None, Cassette(old, "none", provider="local"))
    info = await player.create_sandbox(SandboxConfig())
    await player.write_file(info.id, "/workspace/main.py", b"while True:\n    pass\n")
    result = await player.execute_command(info.id, ["python3", "main.py"], cwd="/workspace", timeout=1, stdin="15\n")
    assert (result.exit_code, result.timed_out) == (124, True)
    assert await player.destroy_sandbox(info.id)


async def test_a_format_1_create_with_working_dir_and_setup_replays_them_as_execs(tmp_path: Path) -> None:
    old = tmp_path / "setup.yaml"
    old.write_text(
        "version: 1\nprovider: local\ninteractions:\n"
        "- op: create\n  args: {image: null, labels: {}, env: {}, lifetime: null, memory_mb: null, cpus: null, network: null,"
        " working_dir: /workspace/app, setup_commands: [touch ready]}\n  result: {sandbox: sandbox-1}\n"
        "- op: execute\n  args: {sandbox: sandbox-1, command: ls, env: {}, cwd: null, timeout: null}\n"
        "  result: {exit_code: 0, stdout: \"ready\\n\", stderr: '', timed_out: false, truncated: false}\n"
    )
    player = cassette_provider(None, Cassette(old, "none", provider="local"))
    info = await player.create_sandbox(SandboxConfig(working_dir="/workspace/app", setup_commands=["touch ready"]))
    assert (await player.execute_command(info.id, "ls")).stdout == "ready\n"


# -- nothing in a cassette file is trusted ---------------------------------------------------------------
HEADER = "version: 2\nprovider: local\ninteractions:\n- op: create\n  args: {labels: {}, env: {}}\n  result: {sandbox: sandbox-1}\n"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            "- op: exec\n  args: {sandbox: sandbox-1, argv: ['true'], env: {}}\n  result: {exit_code: 0, timed_out: 'false', output: []}\n",
            "timed_out must be true or false",
        ),
        ("- op: exec\n  args: {sandbox: sandbox-1, argv: ['true'], env: {}}\n  result: {exit_code: '0', output: []}\n", "exit_code must be a whole number"),
        ("- op: exec\n  args: {sandbox: sandbox-1, argv: ['true'], env: {}}\n  result: {exit_code: 0, output: [{stream: stdin, text: x}]}\n", "output must be"),
        ("- op: exec\n  args: {sandbox: sandbox-1, argv: ['true'], env: {}}\n  result: {output: []}\n", "exit_code is missing"),
        ("- op: read_file\n  args: {sandbox: sandbox-1, path: /x}\n  result: {data: {base64: '%%%'}}\n", "data must be"),
        ("- op: launch\n  args: {}\n  result: {}\n", "unknown op 'launch'"),
        ("- just a string\n", "must be a mapping of op, args and result"),
    ],
)
def test_a_wrongly_typed_field_names_the_file_and_the_field(tmp_path: Path, body: str, said: str) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text(HEADER + body)
    with pytest.raises(CassetteError, match=re.escape(said)) as raised:
        Cassette(path, "none", provider="local")
    assert str(path) in str(raised.value) and "record it again" in str(raised.value)


def test_binary_garbage_is_a_cassette_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    with pytest.raises(CassetteError, match="not UTF-8") as raised:
        Cassette(path, "none", provider="local")
    assert str(path) in str(raised.value)


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level in range(1, 12):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("version: 2\nprovider: local\n" + "\n".join(lines) + "\ninteractions: []\n")
    with pytest.raises(CassetteError, match="aliases"):
        Cassette(path, "none", provider="local")


@pytest.mark.parametrize("version", ["0", "3", "'2'", "null"])
def test_a_format_this_version_cannot_read_is_a_clear_error(tmp_path: Path, version: str) -> None:
    path = tmp_path / "future.yaml"
    path.write_text(f"version: {version}\nprovider: local\ninteractions: []\n")
    with pytest.raises(CassetteError, match=r"format version .* is not one this version reads \(1 to 2\)"):
        Cassette(path, "none", provider="local")


def test_a_written_cassette_has_no_anchors_even_for_shared_values(tmp_path: Path) -> None:
    from sandboxes.cassette import Interaction

    cassette = Cassette(tmp_path / "shared.yaml", "all", provider="local")
    shared = {"HOME": "/workspace"}
    cassette.append(Interaction("create", {"labels": {}, "env": shared}, {"sandbox": "sandbox-1"}))
    cassette.append(Interaction("exec", {"sandbox": "sandbox-1", "argv": ["true"], "env": shared}, {"output": [], "exit_code": 0}))
    assert cassette.save()
    text = (tmp_path / "shared.yaml").read_text()
    assert "&id" not in text and "*id" not in text
    assert len(Cassette(tmp_path / "shared.yaml", "none", provider="local").recorded) == 2


# -- errors replay as they were raised --------------------------------------------------------------------
async def test_a_failed_setup_and_a_missing_file_replay_as_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "errors.yaml"
    recorder = cassette_provider(LocalProvider(), Cassette(path, "once", provider="local"))
    with pytest.raises(SetupFailed) as live_setup:
        await recorder.create_sandbox(SandboxConfig(setup_commands=["echo broken >&2; exit 7"]))
    info = await recorder.create_sandbox(SandboxConfig())
    with pytest.raises(FileNotFoundError) as live_missing:
        await recorder.read_file(info.id, "/workspace/absent")
    await recorder.destroy_sandbox(info.id)
    assert recorder.cassette is not None and recorder.cassette.save()

    player = cassette_provider(None, Cassette(path, "none", provider="local"))
    with pytest.raises(SetupFailed) as replayed_setup:
        await player.create_sandbox(SandboxConfig(setup_commands=["echo broken >&2; exit 7"]))
    assert replayed_setup.value.result.exit_code == live_setup.value.result.exit_code == 7
    assert replayed_setup.value.result.stderr == "broken\n"
    replayed_info = await player.create_sandbox(SandboxConfig())
    with pytest.raises(FileNotFoundError) as replayed_missing:
        await player.read_file(replayed_info.id, "/workspace/absent")
    assert (replayed_missing.value.errno, replayed_missing.value.filename) == (live_missing.value.errno, live_missing.value.filename)


# -- what the review of the middleware found ------------------------------------------------------------------
async def _record_then_replay(tmp_path: Path, work, config: SandboxConfig | None = None) -> tuple[Any, Any]:
    """Run ``work(provider, sandbox_id)`` recording on the local provider, then again replaying with no provider."""
    path = tmp_path / "review.yaml"
    outcomes = []
    for mode, live in (("once", LocalProvider()), ("none", None)):
        provider = cassette_provider(live, Cassette(path, mode))
        info = await provider.create_sandbox(config or SandboxConfig())
        try:
            outcomes.append(await work(provider, info.id))
        finally:
            await provider.destroy_sandbox(info.id)
        if mode == "once":
            assert provider.driver.cassette.save()
    return outcomes[0], outcomes[1]


async def test_a_directory_download_on_the_local_provider_is_recorded_and_replays(tmp_path: Path) -> None:
    async def work(provider: Any, sandbox_id: str) -> list[str]:
        await provider.write_file(sandbox_id, "d/a.txt", b"x")
        target = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        await provider.download_file(sandbox_id, "d", target)
        return sorted(p.name for p in target.iterdir())

    live, replayed = await _record_then_replay(tmp_path, work, SandboxConfig(working_dir="/workspace/app"))
    assert live == replayed == ["a.txt"]


async def test_output_replays_in_the_order_it_came_and_a_dropped_middle_only_where_it_was(tmp_path: Path) -> None:
    script = "printf 'line 0\\nline 1\\nline 2\\n'; echo 'ERROR at the end' >&2; head -c 200 /dev/zero | tr '\\0' e >&2"

    async def work(provider: Any, sandbox_id: str) -> tuple[list[tuple[str, str]], str, str, bool]:
        chunks = [(c.stream, c.data) async for c in provider.stream_execution(sandbox_id, "printf 'a\\n'; echo b >&2; printf 'c\\n'")]
        result = await provider.execute_command(sandbox_id, script)
        return chunks, result.stdout, result.stderr, result.truncated

    live, replayed = await _record_then_replay(tmp_path, work, SandboxConfig(max_output_bytes=64))
    assert _merged(replayed[0]) == _merged(live[0])  # the streams interleaved as they came
    assert replayed[1:] == live[1:]
    assert "truncated" not in replayed[1] and "[... output truncated ...]" in replayed[2] and replayed[3]


def _merged(chunks: list[tuple[str, str]]) -> list[tuple[str, str]]:
    merged: list[tuple[str, str]] = []
    for stream, data in chunks:
        merged[-1:] = [(stream, merged[-1][1] + data)] if merged and merged[-1][0] == stream else [*merged[-1:], (stream, data)]
    return merged


async def test_a_stream_the_caller_left_early_replays_what_it_saw(tmp_path: Path) -> None:
    async def work(provider: Any, sandbox_id: str) -> str:
        stream = provider.stream_execution(sandbox_id, "echo one; sleep 0.3; echo two")
        async for chunk in stream:
            first = chunk.data
            break
        await stream.aclose()
        return first + (await provider.execute_command(sandbox_id, "echo after")).stdout

    live, replayed = await _record_then_replay(tmp_path, work)
    assert live == replayed == "one\nafter\n"


async def test_secrets_stay_out_of_base64_output_and_out_of_what_secret_variables_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("E2B_API_KEY", "e2b_key_should_never_show")

    async def work(provider: Any, sandbox_id: str) -> int:
        await provider.execute_command(sandbox_id, "printf 'token=%s\\377' \"$KEY\"", env={"KEY": "e2b_key_should_never_show"})
        await provider.execute_command(sandbox_id, "echo $DB_PASSWORD", env={"DB_PASSWORD": "hunter2pass"})
        return 0

    path = tmp_path / "review.yaml"
    provider = cassette_provider(LocalProvider(), Cassette(path, "once"))
    info = await provider.create_sandbox(SandboxConfig(env={"API_TOKEN": "tok-create-777"}))
    await work(provider, info.id)
    await provider.execute_command(info.id, "echo $API_TOKEN")
    await provider.destroy_sandbox(info.id)
    assert provider.driver.cassette.save()
    text = path.read_text()
    decoded = b"".join(base64.b64decode(b) for b in re.findall(r"base64: (\S+)", text))
    for secret in ("e2b_key_should_never_show", "hunter2pass", "tok-create-777"):
        assert secret not in text and secret.encode() not in decoded


async def test_new_episodes_destroys_the_live_sandbox_behind_a_replayed_destroy(tmp_path: Path) -> None:
    path = tmp_path / "episodes.yaml"
    local = LocalProvider()
    first = cassette_provider(local, Cassette(path, "once"))
    info = await first.create_sandbox(SandboxConfig())
    await first.destroy_sandbox(info.id)
    assert first.driver.cassette.save()
    again = cassette_provider(local, Cassette(path, "new_episodes"))
    made = await again.create_sandbox(SandboxConfig(env={"NEW": "1"}))  # not recorded: made live
    assert await again.destroy_sandbox(made.id)
    assert await local.get_sandbox(made.id) is None


async def test_a_format_1_relative_cwd_and_path_replay_against_the_working_dir(tmp_path: Path) -> None:
    old = tmp_path / "relative.yaml"
    old.write_text(
        "version: 1\nprovider: local\ninteractions:\n"
        "- op: create\n  args: {image: null, labels: {}, env: {}, lifetime: null, memory_mb: null, cpus: null, network: null,"
        " working_dir: /w/, setup_commands: []}\n  result: {sandbox: sandbox-1}\n"
        "- op: write_file\n  args: {sandbox: sandbox-1, path: rel.txt, size: 1,"
        " data: 'sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881'}\n  result: {}\n"
        "- op: execute\n  args: {sandbox: sandbox-1, command: ls, env: {}, cwd: sub, timeout: null}\n"
        "  result: {exit_code: 0, stdout: \"x\\n\", stderr: '', timed_out: false, truncated: false}\n"
    )
    player = cassette_provider(None, Cassette(old, "none"))  # the provider comes from the file
    info = await player.create_sandbox(SandboxConfig(working_dir="/w/"))
    await player.write_file(info.id, "rel.txt", b"x")
    assert (await player.execute_command(info.id, "ls", cwd="sub")).stdout == "x\n"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("version: 2\ninteractions: " + "[" * 50000 + "]" * 50000 + "\n", "nests deeper"),
        (HEADER + "- op: get\n  args: {sandbox: sandbox-1, 1: x}\n  result: {found: false}\n", "only text keys"),
        (HEADER + "- op: get\n  args: {sandbox: sandbox-1}\n  result: {error: {type: CircuitOpenError, message: m, retry_in: abc}}\n", "result.error"),
        (HEADER + "- op: get\n  args: {sandbox: sandbox-1}\n  result: {error: {type: RateLimitError, message: m, retry_after: [1]}}\n", "result.error"),
        (HEADER + "- op: exec\n  args: {sandbox: sandbox-1, argv: ['true'], env: {}}\n  result: {exit_code: 99999999999999999999, output: []}\n", "exit_code"),
    ],
)
def test_a_crafted_cassette_is_a_cassette_error_never_a_crash(tmp_path: Path, text: str, said: str) -> None:
    path = tmp_path / "crafted.yaml"
    path.write_text(text)
    with pytest.raises(CassetteError, match=re.escape(said)):
        Cassette(path, "none")


def test_an_error_whose_constructor_wants_more_replays_as_its_type() -> None:
    from sandboxes.cassette import recorded_error
    from sandboxes.errors import ToolchainMissing

    error = recorded_error({"type": "ToolchainMissing", "message": "cannot run go"})
    assert type(error) is ToolchainMissing and str(error) == "cannot run go"


async def test_the_retry_layers_creation_token_never_reaches_a_cassette(tmp_path: Path) -> None:
    from sandboxes.manager import Manager

    path = tmp_path / "token.yaml"
    provider = cassette_provider(Manager().get_provider("local"), Cassette(path, "once", provider="local"))
    info = await provider.create_sandbox(SandboxConfig(labels={"k": "v"}))
    await provider.find_sandbox({"k": "v"})
    await provider.destroy_sandbox(info.id)
    assert provider.driver.cassette.save()
    assert "sandboxes.attempt" not in path.read_text()


# -- the library's own files are matched by what they do, not by their bytes ---------------------------------
async def test_a_judgement_recorded_with_one_harness_replays_with_the_next_of_the_same_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program, tests = "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n"

    async def work(provider: Any, sandbox_id: str) -> str:
        return (await judge(Sandbox(provider, await provider.get_sandbox(sandbox_id)), program, "python", tests=tests)).verdict.value

    # A judgement before, in this process: recorded, a sandbox found by its id still looks its tools up.
    async with await Sandbox.create("local") as before:
        assert (await judge(before, program, "python", tests=tests)).passed
    live, replayed = await _record_then_replay(tmp_path, work)
    assert live == replayed == "passed"
    # The next version's harness: other bytes, the same inputs and report.
    monkeypatch.setattr(judging, "_HARNESS_CODE", judging._HARNESS_CODE + "# a later version\n")
    monkeypatch.setattr(cassette_module, "_NAMED", dict(cassette_module._NAMED))
    for protocol, replays in ((judging.HARNESS_PROTOCOL, True), ("the judge's harness, protocol 2", False)):
        cassette_module.name_content(judging._HARNESS_CODE.encode(), protocol)
        player = cassette_provider(None, Cassette(tmp_path / "review.yaml", "none"))
        info = await player.create_sandbox(SandboxConfig())
        if replays:
            assert await work(player, info.id) == "passed"
        else:  # what it does changed: not the recorded harness
            with pytest.raises(CassetteError, match="write_file"):
                await work(player, info.id)
