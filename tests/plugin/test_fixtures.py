"""The fixtures in real pytest sessions on the local provider."""

from __future__ import annotations

import os

import pytest


def test_sandbox_is_fresh_and_destroyed_even_when_the_test_fails(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        import sandboxes.sync

        def test_writes(sandbox):
            assert isinstance(sandbox, sandboxes.sync.Sandbox)
            sandbox.write_file("/workspace/mark", "x")
            assert sandbox.execute("cat /workspace/mark").stdout == "x"

        def test_fresh_and_fails(sandbox):
            assert sandbox.execute("test -e /workspace/mark").exit_code == 1
            result = sandbox.execute("echo to-stdout; echo to-stderr >&2; exit 3")
            assert result.exit_code == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    # the failure shows the exit code and the output tails
    result.stdout.fnmatch_lines(["*sandbox results*", "result: command exited with code 3*", "to-stdout", "*stderr*", "to-stderr"])
    result.stdout.fnmatch_lines(["*provider*created*live ops*replayed*recorded*left behind*", "local*2*0"])
    assert live_sandboxes() == []


def test_async_test_gets_the_async_handle(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        import pytest
        import sandboxes

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        async def test_async(sandbox):
            assert isinstance(sandbox, sandboxes.Sandbox)
            result = await sandbox.execute(["python3", "-c", "print(6 * 7)"])
            assert result.stdout == "42\\n"
            chunks = [chunk.data async for chunk in sandbox.stream("echo streamed")]
            assert "".join(chunks) == "streamed\\n"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert live_sandboxes() == []


def test_sandbox_factory_makes_many_with_their_own_config_and_destroys_all(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        def test_many(sandbox_factory):
            first = sandbox_factory(env={"WHO": "first"})
            second = sandbox_factory(env={"WHO": "second"}, labels={"role": "b"})
            assert first.id != second.id
            assert first.execute("echo $WHO").stdout == "first\\n"
            assert second.execute("echo $WHO").stdout == "second\\n"
            assert second.labels["role"] == "b"

        def test_again(sandbox_factory):
            assert sandbox_factory().execute("true").exit_code == 0
            assert len(sandbox_factory.sandboxes) == 1  # this test's: the last test's are gone
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert live_sandboxes() == []


def test_config_fixture_options_and_marker_combine_in_order(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from sandboxes import SandboxConfig

        @pytest.fixture(scope="module")
        def sandbox_config():
            return SandboxConfig(env={"BASE": "conftest", "OVER": "conftest"}, labels={"suite": "demo"})
        """
    )
    pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.sandbox(env={"OVER": "module"}, timeout=30)

        @pytest.mark.sandbox(env={"MARK": "function"}, labels={"case": "one"}, timeout=12, lifetime=120)
        def test_combined(sandbox, sandbox_provider):
            out = sandbox.execute("echo $BASE $OVER $MARK").stdout
            assert out == "conftest module function\\n"
            assert sandbox.labels["suite"] == "demo" and sandbox.labels["case"] == "one"
            assert sandbox.labels["sandboxes_worker"] == "main" and sandbox.labels["sandboxes_run"]
            assert sandbox.async_sandbox.command_timeout == 12
            assert sandbox_provider.name == "local"

        def test_option_fills_the_gap(sandbox):
            assert sandbox.async_sandbox.command_timeout == 30  # module marker beats --sandbox-timeout
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "--sandbox-timeout=5").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("colour='blue'", "unknown @pytest.mark.sandbox key(s) 'colour'; valid keys: providers, image, timeout, env, labels, network, lifetime"),
        ("'local'", "takes keyword arguments only"),
        ("providers=['local', 'nowhere']", "unknown: nowhere"),
        ("timeout=-1", "timeout must be a positive number of seconds"),
    ],
)
def test_bad_marker_is_a_usage_error_naming_it(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.sandbox({marker})\ndef test_x():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: *{message}*"])


def test_keep_leaves_a_failed_tests_sandbox_and_reports_it(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(
        """
        def test_fails(sandbox):
            assert sandbox.execute("false").success

        def test_passes(sandbox):
            assert sandbox.execute("true").success
        """
    )
    # In a subprocess: the local provider that made the kept sandbox is dropped while its bwrap runs
    # (ResourceWarning when collected), which must not land in this process.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sandbox-keep")
    result.assert_outcomes(passed=1, failed=1)
    kept = live_sandboxes()
    assert len(kept) == 1
    result.stdout.fnmatch_lines([f"kept for debugging (--sandbox-keep): {kept[0]} on local"])
    from sandboxes.providers.local import LocalProvider

    LocalProvider()._destroy(kept[0])


RECYCLED = """
import pytest

@pytest.mark.parametrize("n", range(4))
def test_leased(sandbox, n, pytestconfig):
    assert sandbox.execute("ls -A /workspace /tmp").stdout == "/tmp:\\n\\n/workspace:\\n"  # as new
    sandbox.write_file("/workspace/used", "1")
    with open(pytestconfig.rootpath / "incarnations", "a") as seen:
        seen.write(sandbox.execute("cut -d' ' -f22 /proc/1/stat").stdout)
"""


@pytest.mark.parametrize(("args", "new_ones"), [((), 1), (("--sandbox-fresh",), 4)], ids=["recycled", "fresh"])
def test_the_sandbox_fixture_recycles_unless_fresh(pytester: pytest.Pytester, live_sandboxes, args: tuple[str, ...], new_ones: int) -> None:
    pytester.makepyfile(test_leased=RECYCLED)
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=4)
    assert len(set((pytester.path / "incarnations").read_text().split())) == new_ones
    assert live_sandboxes() == []
    assert "SANDBOXES_FRESH" not in os.environ  # --sandbox-fresh is undone when pytest is done


JUDGED = """
import pytest

ADD = "def add(a, b):\\n    return a + b\\n"
TESTS = "def check(candidate):\\n    assert candidate(1, 2) == 3\\n\\ncheck(add)\\n"

def test_passes(sandbox_judge):
    assert sandbox_judge(ADD, "python", tests=TESTS).passed

def test_wrong(sandbox_judge):
    judgement = sandbox_judge(ADD.replace("+", "-"), "python", tests=TESTS)
    assert judgement.passed

def test_cases(sandbox_judge):
    judgement = sandbox_judge("print(int(input()) + 1)", "python", cases=[("1\\n", "2\\n"), ("2\\n", "4\\n")])
    assert judgement.passed

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_async(sandbox_judge):
    assert (await sandbox_judge(ADD, "python", tests=TESTS)).passed
"""


def test_sandbox_judge_judges_in_the_tests_sandbox_and_explains_a_failure(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_judged=JUDGED)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*verdict: wrong_answer (a test's assertion failed)*", "*verdict: wrong_answer (the output differs*first failing case: #1*"])
    assert live_sandboxes() == []


LOSES_ITS_SANDBOX = """
import pytest

# Nothing inside can end its sandbox's agent (the pid namespace's init): the conftest
# does it from the host, as a crash of the sandbox's machine would, while this runs.
DOOMED = "import subprocess\\nsubprocess.run(['sleep', '31.4159'])\\n"

def test_lost(sandbox_judge, sandbox_factory):
    judgement = sandbox_judge(DOOMED, "python", expected_stdout="")
    assert (judgement.verdict, judgement.lost) == ("runtime_error", True), judgement
    assert "lost on each of 3 tries" in judgement.reason
    assert len(sandbox_factory.sandboxes) == 2  # two fresh ones after the test's own

def test_retries_are_few(sandbox_judge):
    judgement = sandbox_judge(DOOMED, "python", tests="pass\\n", retries=0)
    assert (judgement.verdict, judgement.lost) == ("runtime_error", True), judgement

def test_then_judges_on(sandbox_judge):
    sandbox_judge(DOOMED, "python", expected_stdout="", retries=0)
    assert sandbox_judge("print(2)", "python", expected_stdout="2\\n", retries=0).passed  # in a fresh sandbox, not the lost one

@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_async(sandbox_judge):
    assert (await sandbox_judge(DOOMED, "python", expected_stdout="", retries=1)).verdict == "runtime_error"
"""

AGENT_KILLER = """
import os, signal, threading, time

def _read(path):
    with open(path, "rb") as handle:
        return handle.read()

def _parent(pid):
    return int(_read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[1])

def _kill_agents_of_doomed():
    while True:
        for entry in os.listdir("/proc"):
            try:
                if not entry.isdigit() or _read(f"/proc/{entry}/cmdline") != b"sleep\\x0031.4159\\x00":
                    continue
                pid = int(entry)
                while b"agent.main()" not in _read(f"/proc/{pid}/cmdline"):
                    pid = _parent(pid)
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass
        time.sleep(0.01)

threading.Thread(target=_kill_agents_of_doomed, daemon=True).start()
"""


def test_a_program_whose_sandbox_is_lost_is_judged_again_fresh_and_counts_as_a_runtime_error(pytester: pytest.Pytester, live_sandboxes) -> None:
    # Were a sandbox lost on every try an infra_error, a program that could end its sandbox would opt out of being scored.
    pytester.makeconftest(AGENT_KILLER)
    pytester.makepyfile(test_loser=LOSES_ITS_SANDBOX)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "anyio")
    result.assert_outcomes(passed=4)
    assert live_sandboxes() == []
