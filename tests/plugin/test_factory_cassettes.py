"""sandbox_factory under record/replay: the test's cassette, placeholders in order, replay with no provider."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

SUITE = """
import pytest
import sandboxes

def test_compare(sandbox_factory):
    python = sandbox_factory(env={"WHO": "py"})
    shell = sandbox_factory(env={"WHO": "sh"}, labels={"role": "shell"})
    python.write_file("/workspace/main.py", "print(6 * 7)\\n")
    assert python.execute(["python3", "/workspace/main.py"]).stdout == "42\\n"
    assert shell.execute("echo $WHO").stdout == "sh\\n"
    assert python.execute("echo $WHO").stdout == "py\\n"
    assert len(sandbox_factory.sandboxes) == 2

def test_with_the_sandbox_fixture(sandbox, sandbox_factory):
    extra = sandbox_factory()
    assert sandbox.execute("echo fixture").stdout == "fixture\\n"
    assert extra.execute("echo factory").stdout == "factory\\n"

@pytest.fixture
def pair(sandbox_factory):
    return sandbox_factory(env={"SIDE": "a"}), sandbox_factory(env={"SIDE": "b"})

def test_from_a_function_fixture(pair):
    assert [s.execute("echo $SIDE").stdout for s in pair] == ["a\\n", "b\\n"]

@pytest.mark.parametrize("n", range(3))
def test_param(sandbox_factory, n):
    assert sandbox_factory().execute(f"echo {n}").stdout == f"{n}\\n"

@pytest.mark.asyncio
async def test_async(sandbox_factory):
    made = await sandbox_factory.acreate()
    assert isinstance(made, sandboxes.Sandbox)
    assert (await made.execute("echo async")).stdout == "async\\n"
"""

CASSETTES = ("test_compare", "test_with_the_sandbox_fixture", "test_from_a_function_fixture", "test_param[0]", "test_param[1]", "test_param[2]", "test_async")


def _interactions(directory: Path, name: str) -> list[dict]:
    return yaml.safe_load((directory / f"{name}.yaml").read_text())["interactions"]


def test_factory_records_per_test_and_replays_with_no_provider(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, live_sandboxes) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["local*10*"])  # the summary counts factory sandboxes: 2 + 2 + 2 + 3 + 1
    assert live_sandboxes() == []
    local = pytester.path / "sandbox_cassettes" / "test_suite" / "local"
    assert sorted(p.stem for p in local.iterdir()) == sorted(CASSETTES)

    compare = _interactions(local, "test_compare")
    assert [i["op"] for i in compare] == ["create", "create", "write_file", "exec", "exec", "exec", "destroy", "destroy"]
    assert [i["args"]["env"] for i in compare[:2]] == [{"WHO": "py"}, {"WHO": "sh"}]  # placeholders in order of creation
    assert [i["result"]["sandbox"] for i in compare[:2]] == ["sandbox-1", "sandbox-2"]
    assert [(i["args"]["sandbox"], i["args"].get("argv")) for i in compare[2:6]] == [
        ("sandbox-1", None), ("sandbox-1", ["python3", "/workspace/main.py"]),
        ("sandbox-2", ["/bin/sh", "-c", "echo $WHO"]), ("sandbox-1", ["/bin/sh", "-c", "echo $WHO"]),
    ]  # fmt: skip
    assert sorted(i["args"]["sandbox"] for i in compare[6:]) == ["sandbox-1", "sandbox-2"]
    assert "sb-" not in (local / "test_compare.yaml").read_text()

    # the sandbox fixture and the factory share one cassette: fixture first, factory sandbox destroyed after teardown
    shared = _interactions(local, "test_with_the_sandbox_fixture")
    assert [(i["op"], i["args"].get("sandbox"), (i["args"].get("argv") or [None])[-1]) for i in shared] == [
        ("create", None, None), ("create", None, None), ("exec", "sandbox-1", "echo fixture"),
        ("exec", "sandbox-2", "echo factory"), ("destroy", "sandbox-1", None), ("destroy", "sandbox-2", None),
    ]  # fmt: skip
    replayed = sum(len(_interactions(local, name)) for name in CASSETTES)

    # Replay as provider e2b: no credentials, no sandbox anywhere.
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    shutil.copytree(local, local.parent / "e2b")
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none", "--sandbox-provider=e2b")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines([f"e2b*0*0*{replayed}*0*"])  # created 0, live 0, all replayed
    assert live_sandboxes() == []


def test_factory_misses_and_missing_cassettes_name_the_cassette(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    missing = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none", "-k", "compare")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["no cassette at *local/test_compare.yaml and the record mode is 'none'*"])

    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once", "-k", "compare").assert_outcomes(passed=1, deselected=6)
    pytester.makepyfile(test_suite=SUITE.replace('shell.execute("echo $WHO")', 'shell.execute("echo $WHO!")'))
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=none", "-k", "compare")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*CassetteError: no recorded sandbox operation matches, in cassette *test_compare.yaml (record mode 'none'):",
        '*exec {"argv": *"echo $WHO!"*"sandbox": "sandbox-2"*',
        "*closest recorded*",
        '*exec {"argv": *"echo $WHO"*"sandbox": "sandbox-2"*',
        "*To record it again: pytest 'test_suite.py::test_compare' --sandbox-record-mode=rewrite",
    ])  # fmt: skip


SHARED = """
import pytest

@pytest.fixture(scope="module")
def shared(sandbox_session_factory):
    return sandbox_session_factory()

def test_one(shared):
    assert shared.execute("echo one > /tmp/seen").exit_code == 0

def test_two(shared):
    assert shared.execute("cat /tmp/seen").stdout == "one\\n"
"""

WIDER = """
import pytest

@pytest.fixture(scope="module")
def shared(sandbox_factory):
    return sandbox_factory()

def test_one(shared):
    pass
"""


def test_a_sandbox_shared_by_tests_comes_from_the_session_factory_and_is_live_only(pytester: pytest.Pytester, live_sandboxes) -> None:
    """Several tests may share a session sandbox live; under a record mode it is a clear error, since a cassette holds one test."""
    pytester.makepyfile(test_shared=SHARED)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert live_sandboxes() == []
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_one*",
        "*sandbox_session_factory makes sandboxes that outlive any one test, and a cassette (record mode 'once') records one test*",
    ])  # fmt: skip
    assert not (pytester.path / "sandbox_cassettes").exists()
    assert live_sandboxes() == []


def test_sandbox_factory_is_function_scoped(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_wider=WIDER)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ScopeMismatch*sandbox_factory*"])
    assert live_sandboxes() == []


LIFETIME = """
import os
from sandboxes.providers.local import LocalProvider

KEPT = []

def alive():
    return [info.id for info in LocalProvider(state_dir=os.environ["SANDBOXES_LOCAL_STATE_DIR"])._list({})]

def test_a_fails(sandbox_factory):
    made = sandbox_factory()
    KEPT.append(made)
    assert made.execute("false").success

def test_b_gone_when_its_test_ended(sandbox_factory):
    assert KEPT[0].id not in alive() and sandbox_factory.sandboxes == []

def test_c_used_again(sandbox_factory):
    KEPT[0].execute("true")
"""


def test_recorded_factory_sandbox_lives_for_its_test_and_cannot_be_reused(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_lifetime=LIFETIME)
    result = pytester.runpytest("-p", "no:cacheprovider", "--sandbox-record-mode=once")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        (
            "*CassetteError: * on sandbox sandbox-1: it was recorded in the cassette of test_lifetime.py::test_a_fails, "
            "which has ended. A sandbox that a cassette records lives only for its test*"
        ),
    ])  # fmt: skip
    assert not (pytester.path / "sandbox_cassettes" / "test_lifetime" / "local" / "test_a_fails.yaml").exists()  # failed: not written
    assert live_sandboxes() == []


@pytest.mark.parametrize("mode", ["once", "off"])
def test_keep_leaves_a_failed_tests_factory_sandbox(pytester: pytest.Pytester, live_sandboxes, mode: str) -> None:
    pytester.makepyfile(test_lifetime=LIFETIME.split("def test_b")[0])
    # In a subprocess: the local provider that made the kept sandbox is dropped while its bwrap runs
    # (ResourceWarning when collected), which must not land in this process.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--sandbox-record-mode={mode}", "--sandbox-keep")
    result.assert_outcomes(failed=1)
    kept = live_sandboxes()
    assert len(kept) == 1
    result.stdout.fnmatch_lines([f"kept for debugging (--sandbox-keep): {kept[0]} on local"])
    from sandboxes.providers.local import LocalProvider

    LocalProvider()._destroy(kept[0])
