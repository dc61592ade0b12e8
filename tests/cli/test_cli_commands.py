"""The other commands and every error, through the installed `sandboxes` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import CLI, kept_id, one_line_error, sandboxes_command


def test_command_exit_code_and_separate_streams(cli: CLI) -> None:
    result = cli("run", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_several_words_are_joined_and_run_by_the_shell_as_ssh_does(cli: CLI) -> None:
    result = cli("run", "printf", "'%s|'", "'$HOME'", '"a b"', "$HOME")
    assert (result.returncode, result.stdout) == (0, b"$HOME|a b|/workspace|")
    assert cli("run", "exit", "3").returncode == 3


def test_options_come_before_the_command_and_the_rest_is_the_commands(cli: CLI) -> None:
    result = cli("run", "-e", "WHO=x", "ls", "-la", "/")  # -l is not --label once the command has begun
    assert result.returncode == 0 and b"workspace" in result.stdout, result.stderr
    labelled = cli("run", "echo", "-l", "k=v", "-t", "5")
    assert (labelled.returncode, labelled.stdout) == (0, b"-l k=v -t 5\n")


def test_piped_stdin_reaches_the_command(cli: CLI) -> None:
    result = cli("run", "tr a-z A-Z", input=b"hello\n")
    assert result.stdout == b"HELLO\n"


def test_output_streams_live(_isolated_state: Path) -> None:
    started = time.monotonic()
    process = subprocess.Popen(
        [sandboxes_command(), "run", "echo first; sleep 3; echo second"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    first_at = time.monotonic() - started
    rest, _ = process.communicate(timeout=60)
    total = time.monotonic() - started
    assert (first, rest, process.returncode) == (b"first\n", b"second\n", 0)
    assert total - first_at >= 2.5  # the first line came before the command ended


def test_timeout_kills_and_exits_124(cli: CLI) -> None:
    result = cli("run", "-t", "1", "echo started; sleep 20")
    assert result.returncode == 124
    assert result.stdout == b"started\n"
    assert b"timed out" in result.stderr


def test_env_option_reaches_the_program(cli: CLI) -> None:
    result = cli("run", "-e", "GREETING=it's $HOME", "-e", "EMPTY=", 'printf "%s|%s" "$GREETING" "${EMPTY-unset}"')
    assert result.stdout == b"it's $HOME|"


def test_keep_then_exec_then_list_then_destroy(cli: CLI) -> None:
    kept = cli("run", "--keep", "-l", "project=demo", "echo state > /workspace/note")
    assert kept.returncode == 0, kept.stderr.decode()
    sandbox_id = kept_id(kept)

    shown = cli("exec", sandbox_id, "-e", "X=1", "cat /workspace/note; echo $X; exit 4")
    assert (shown.returncode, shown.stdout) == (4, b"state\n1\n")
    piped = cli("exec", sandbox_id, "--", "wc", "-c", input=b"12345")
    assert piped.stdout.strip() == b"5"

    listed = json.loads(cli("list", "--json", "-p", "local").stdout)
    entry = next(item for item in listed if item["id"] == sandbox_id)
    assert entry["provider"] == "local" and entry["labels"]["project"] == "demo"
    assert json.loads(cli("list", "--json", "-l", "project=other").stdout) == []
    table = cli("list", "-l", "project=demo").stdout.decode()
    assert sandbox_id in table and "project=demo" in table

    gone = cli("destroy", sandbox_id)
    assert (gone.returncode, gone.stdout) == (0, f"destroyed {sandbox_id}\n".encode())
    assert "no sandbox" in one_line_error(cli("exec", sandbox_id, "true"))
    assert cli("exec", sandbox_id, "true").returncode == 125


def test_reuse_finds_the_sandbox_with_the_labels(cli: CLI) -> None:
    first = cli("run", "--reuse", "-l", "reuse=yes", "echo 1 > /workspace/mark")
    second = cli("run", "--reuse", "-l", "reuse=yes", "cat /workspace/mark")
    assert second.stdout == b"1\n"
    assert kept_id(first) == kept_id(second)
    cli("destroy", kept_id(first))


def test_gc_destroys_by_label_and_age(cli: CLI) -> None:
    old = kept_id(cli("run", "--keep", "-l", "gc=me", "true"))
    other = kept_id(cli("run", "--keep", "-l", "gc=other", "true"))
    assert cli("gc", "-l", "gc=me").stdout == b""  # younger than the default 1h
    dry = cli("gc", "-l", "gc=me", "--older-than", "0s", "--dry-run")
    assert f"would destroy {old}".encode() in dry.stdout
    swept = cli("gc", "-l", "gc=me", "--older-than", "0s")
    assert swept.stdout == f"destroyed {old} (local)\n".encode()
    remaining = [item["id"] for item in json.loads(cli("list", "--json").stdout)]
    assert old not in remaining and other in remaining
    assert cli("gc", "--older-than", "0s").returncode == 0
    assert json.loads(cli("list", "--json").stdout) == []


def test_providers_reports_local_isolation(cli: CLI) -> None:
    result = cli("providers")
    assert result.returncode == 0
    local = next(line for line in result.stdout.decode().splitlines() if line.startswith("local"))
    assert "available" in local and ("bubblewrap" in local or "process" in local)
    data = json.loads(cli("providers", "--json").stdout)
    assert {p["name"] for p in data["providers"]} >= {"local", "e2b", "modal", "daytona", "cloudflare"}
    e2b = next(p for p in data["providers"] if p["name"] == "e2b")
    if not e2b["available"]:
        assert e2b["detail"]


def test_test_command_checks_local_live(cli: CLI) -> None:
    result = cli("test", "-p", "local")
    assert result.returncode == 0, result.stderr.decode()
    line = result.stdout.decode()
    assert line.startswith("local: ok") and "create" in line and "destroy" in line


# -- errors: one line, a non-zero exit, no traceback ----------------------------------------------------


def test_unknown_language_lists_the_known_ones(cli: CLI) -> None:
    result = cli("run", "--lang", "cobol", input=b"x")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "cobol" in line and all(name in line for name in ("python", "javascript", "typescript", "go", "rust", "bash", "java", "ruby"))


def test_file_not_found(cli: CLI, tmp_path: Path) -> None:
    result = cli("run", "--file", str(tmp_path / "missing.py"))
    assert result.returncode == 2
    assert "missing.py" in one_line_error(result)


def test_unknown_extension(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "x.unknown").write_text("x")
    result = cli("run", "--file", str(tmp_path / "x.unknown"))
    assert result.returncode == 2 and "--lang" in one_line_error(result)


def test_bad_env_format(cli: CLI) -> None:
    result = cli("run", "-e", "NOVALUE", "true")
    assert result.returncode == 2 and "KEY=VALUE" in one_line_error(result)


def test_unknown_sandbox_id(cli: CLI) -> None:
    for args in (("exec", "sb-000000000000", "true"), ("destroy", "sb-000000000000")):
        result = cli(*args)
        assert result.returncode != 0
        assert "sb-000000000000" in one_line_error(result)


def test_unknown_and_unavailable_providers(cli: CLI) -> None:
    unknown = cli("run", "-p", "nowhere", "true")
    assert unknown.returncode == 2 and "local" in one_line_error(unknown)
    env = {k: "" for k in ("E2B_API_KEY",)}
    unavailable = cli("run", "-p", "e2b", "true", env=env)
    assert unavailable.returncode == 125
    assert "e2b" in one_line_error(unavailable).lower()


def test_missing_toolchain_names_it_and_how_to_install(cli: CLI, tmp_path: Path) -> None:
    rustc = shutil.which("rustc")
    if rustc is None or os.path.realpath(rustc).startswith(("/usr/", "/bin/")):
        pytest.skip("needs a rustc outside the system dirs, to hide it by PATH")
    source = tmp_path / "main.rs"
    source.write_text('fn main() { println!("x"); }\n')
    result = cli("run", "--file", str(source), path="/usr/bin:/bin")
    assert result.returncode == 127
    line = one_line_error(result)
    assert "rustc" in line and "rustup" in line


def test_nothing_to_run(cli: CLI) -> None:
    result = cli("run")
    assert result.returncode == 2 and "--file" in one_line_error(result)


def test_exit_status_comes_with_the_stream_no_status_files(cli: CLI) -> None:
    kept = cli("run", "--keep", "echo made; exit 5")
    assert (kept.returncode, kept.stdout) == (5, b"made\n")
    sandbox_id = kept_id(kept)
    try:
        late = cli("exec", sandbox_id, "-t", "1", "echo started; sleep 20")
        assert (late.returncode, late.stdout) == (124, b"started\n")
        assert "timed out after 1s" in one_line_error(late)
        killed = cli("exec", sandbox_id, "kill -9 $$")
        assert killed.returncode == 137  # 128 + SIGKILL, as a shell reports it
        left = cli("exec", sandbox_id, "ls -A /tmp /workspace")
        assert b"status" not in left.stdout, left.stdout  # no wrapper, no status file left behind
    finally:
        cli("destroy", sandbox_id)


def test_a_crash_says_which_signal_ended_it(cli: CLI) -> None:
    result = cli("run", "python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'")
    assert result.returncode == 139
    assert b"killed by SIGSEGV" in result.stderr
    assert b"killed by" not in cli("run", "exit 3").stderr


def test_gc_finds_what_a_pytest_run_left_behind(cli: CLI, pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_fails(sandbox):\n    sandbox.execute('true')\n    assert False\n")
    pytester.runpytest_subprocess("--sandbox-keep", "-p", "no:cacheprovider").assert_outcomes(failed=1)
    left = json.loads(cli("list", "--json").stdout)
    assert len(left) == 1
    swept = cli("gc", "--older-than", "0s")
    assert swept.stdout == f"destroyed {left[0]['id']} (local)\n".encode(), swept.stderr
    assert json.loads(cli("list", "--json").stdout) == []
