"""Record/replay through the plugin: modes, files, misses, secrets, and replay with no provider."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

SUITE = """
import os

def test_program(sandbox):
    sandbox.write_file("/workspace/main.py", "import sys\\nprint(sum(map(int, sys.stdin.read().split())))\\n")
    result = sandbox.execute(["python3", "/workspace/main.py"], stdin="1 2 3", env={"API_TOKEN": os.environ.get("API_TOKEN", "")})
    assert result.stdout == "6\\n"
    assert sandbox.execute("echo line1; echo line2; echo $SHOWN").stdout.startswith("line1")
"""


def _cassette(pytester: pytest.Pytester, provider: str = "local") -> Path:
    return pytester.path / "sandbox_cassettes" / "test_suite" / provider / "test_program.yaml"


def test_record_once_then_replay_with_no_provider_available(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, live_sandboxes) -> None:
    pytester.makepyfile(test_suite=SUITE)
    secret = "s3cr3t-value-xyz"
    monkeypatch.setenv("API_TOKEN", secret)
    monkeypatch.setenv("E2B_API_KEY", "e2b_live_key_123")
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once").assert_outcomes(passed=1)
    path = _cassette(pytester)
    text = path.read_text()
    data = yaml.safe_load(text)
    assert [i["op"] for i in data["interactions"]] == ["create", "write_file", "exec", "exec", "destroy"]
    assert "text: |+\n        line1\n        line2\n" in text  # block scalars: output reads as printed
    assert "sandbox: sandbox-1" in text and "sb-" not in text  # stable placeholders
    assert secret not in text and "e2b_live_key_123" not in text
    assert "pytest 'test_suite.py::test_program' --sandbox-record-mode=rewrite" in text
    assert not any(k in text for k in ("created_at", "expires_at", "duration")) and "time.time" not in text  # no timestamps

    # Replay it as provider e2b: no credentials, no SDK, no sandbox anywhere.
    monkeypatch.delenv("E2B_API_KEY")
    monkeypatch.delenv("API_TOKEN")
    (path.parent.parent / "e2b").mkdir()
    shutil.copy(path, _cassette(pytester, "e2b"))
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none", "--sandbox-provider=e2b")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["e2b*0*0*5*0*"])  # created 0, live 0, replayed 5
    assert live_sandboxes() == []


def test_missing_cassette_fails_at_setup_in_none_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_program*", "no cassette at *test_program.yaml and the record mode is 'none'*"])


def test_a_miss_names_the_cassette_the_operation_the_closest_and_how_to_rerecord(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once").assert_outcomes(passed=1)
    pytester.makepyfile(test_suite=SUITE.replace("echo line1; echo line2", "echo line1; echo line3"))
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*CassetteError: no recorded sandbox operation matches, in cassette *test_program.yaml (record mode 'none'):",
        "*exec*echo line1; echo line3*",
        "*closest recorded*",
        "*exec*echo line1; echo line2*",
        "*To record it again: pytest 'test_suite.py::test_program' --sandbox-record-mode=rewrite",
    ])  # fmt: skip


def test_written_only_when_changed_and_only_for_passing_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=all").assert_outcomes(passed=1)
    path = _cassette(pytester)
    before = path.stat().st_mtime_ns
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=all").assert_outcomes(passed=1)
    assert path.stat().st_mtime_ns == before  # same content: not rewritten

    pytester.makepyfile(test_suite=SUITE.replace('== "6\\n"', '== "7\\n"'))
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=rewrite").assert_outcomes(failed=1)
    assert path.stat().st_mtime_ns == before  # a failed test writes nothing...
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=rewrite", "--sandbox-record-failed").assert_outcomes(failed=1)
    assert "line2" not in path.read_text()  # ...unless asked: the failed run stopped early


def test_new_episodes_appends_what_is_new(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_suite=SUITE)
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once").assert_outcomes(passed=1)
    pytester.makepyfile(test_suite=SUITE + '    assert sandbox.execute("echo new").stdout == "new\\n"\n')
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=new_episodes")
    result.assert_outcomes(passed=1)
    ops = [(i["op"], i["args"].get("argv")) for i in yaml.safe_load(_cassette(pytester).read_text())["interactions"]]
    assert ops[-1] == ("exec", ["/bin/sh", "-c", "echo new"])
    assert len(ops) == 6
    assert live_sandboxes() == []
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none").assert_outcomes(passed=1)


def test_cassette_dir_option_and_the_cassette_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        def test_program(sandbox, sandbox_cassette):
            assert sandbox.execute("echo hi").stdout == "hi\\n"
            assert sandbox_cassette.mode == "once"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once", "--sandbox-cassette-dir=recorded").assert_outcomes(passed=1)
    assert (pytester.path / "recorded" / "test_suite" / "local" / "test_program.yaml").is_file()


def test_several_providers_parametrize_and_skip_what_cannot_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    pytester.makepyfile(
        test_suite="""
        import pytest

        def test_program(sandbox):
            assert sandbox.execute("echo hi").stdout == "hi\\n"

        @pytest.mark.sandbox(providers=["local"])
        def test_local_only(sandbox):
            assert sandbox.provider == "local"

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "--sandbox-provider=local,e2b")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *sandbox provider 'e2b' unavailable: *set E2B_API_KEY*"])
    collected = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--sandbox-provider=local,e2b")
    collected.stdout.fnmatch_lines(
        ["test_suite.py::test_program[[]local[]]", "test_suite.py::test_program[[]e2b[]]", "test_suite.py::test_local_only", "test_suite.py::test_plain"]
    )


RUN_CODE_SUITE = """
def test_solution(sandbox):
    result = sandbox.run_code("print(sum([1, 2, 3]))", "python")
    assert result.stdout == "6\\n"
    built = sandbox.run_code('#include <stdio.h>\\nint main(void) { printf("%d\\\\n", 6 * 7); return 0; }', "c")
    assert built.stdout == "42\\n"
"""


def test_run_code_records_and_replays_offline(pytester: pytest.Pytester, live_sandboxes) -> None:
    """The README's plugin example: run_code's run directories get stable names, so replay matches."""
    pytester.makepyfile(test_suite=RUN_CODE_SUITE)
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once").assert_outcomes(passed=1)
    text = (pytester.path / "sandbox_cassettes" / "test_suite" / "local" / "test_solution.yaml").read_text()
    assert "/tmp/sandboxes-run/run-1" in text and "/tmp/sandboxes-run/run-2" in text
    replayed = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none")
    replayed.assert_outcomes(passed=1)


JUDGED_TWICE = """
import pytest

@pytest.mark.parametrize("n", [1, 2])
def test_judged(sandbox_judge, n):
    assert sandbox_judge(f"print({n})", "python", expected_stdout=f"{n}\\n").passed
"""


def test_each_cassette_holds_its_own_tool_lookups_whatever_ran_before(pytester: pytest.Pytester, live_sandboxes) -> None:
    # Live, a local sandbox alike the last one is not searched for its tools again; a test that
    # records looks for them itself, so that it replays alone.
    pytester.makepyfile(test_suite=JUDGED_TWICE)
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once").assert_outcomes(passed=2)
    second = yaml.safe_load((pytester.path / "sandbox_cassettes" / "test_suite" / "local" / "test_judged[2].yaml").read_text())
    assert any(i["op"] == "exec" and "--version" in i["args"]["argv"] for i in second["interactions"])
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none", "test_suite.py::test_judged[2]").assert_outcomes(passed=1)
    assert live_sandboxes() == []
