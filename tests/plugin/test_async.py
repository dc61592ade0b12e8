"""Async tests under pytest-asyncio (strict and auto mode), anyio's plugin, both, or neither."""

from __future__ import annotations

import pytest

ALIVE = """
import os
from sandboxes.providers.local import LocalProvider

def alive():
    return [info.id for info in LocalProvider(state_dir=os.environ["SANDBOXES_LOCAL_STATE_DIR"])._list({})]
"""

STRICT = (
    ALIVE
    + """
import pytest
import sandboxes
import sandboxes.sync

FAILED = []

@pytest.mark.asyncio
async def test_async_handle(sandbox):
    assert isinstance(sandbox, sandboxes.Sandbox)
    result = await sandbox.execute(["python3", "-c", "print(6 * 7)"])
    assert result.stdout == "42\\n"
    chunks = [chunk.data async for chunk in sandbox.stream("echo streamed")]
    assert "".join(chunks) == "streamed\\n"

@pytest.mark.asyncio
async def test_async_fails(sandbox):
    FAILED.append(sandbox.id)
    await sandbox.write_file("/workspace/mark", "x")
    assert (await sandbox.execute("echo out; exit 3")).exit_code == 0

@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop_and_the_failed_ones_sandbox_is_gone(sandbox):
    assert FAILED and FAILED[0] not in alive()
    assert (await sandbox.execute("test -e /workspace/mark")).exit_code == 1

@pytest.mark.asyncio
async def test_factory(sandbox_factory):
    first = await sandbox_factory.acreate(env={"WHO": "first"})
    second = await sandbox_factory.acreate(env={"WHO": "second"}, labels={"role": "b"})
    assert isinstance(first, sandboxes.Sandbox) and first.id != second.id
    assert (await first.execute("echo $WHO")).stdout == "first\\n"
    assert (await second.execute("echo $WHO")).stdout == "second\\n"
    assert second.labels["role"] == "b"

@pytest.mark.asyncio
async def test_factory_fails(sandbox_factory):
    made = await sandbox_factory.acreate()
    assert (await made.execute("false")).success

def test_sync_beside(sandbox):
    assert isinstance(sandbox, sandboxes.sync.Sandbox)
    assert sandbox.execute("echo sync").stdout == "sync\\n"
"""
)


def test_strict_mode_async_handle_factory_and_teardown_of_failed_tests(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_strict=STRICT)
    result = pytester.runpytest("-p", "no:cacheprovider", "-o", "asyncio_mode=strict")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(["*asyncio: mode=*STRICT*"])
    result.stdout.fnmatch_lines(["*sandbox results*", "in the assertion: command exited with code 3*", "out"])
    result.stdout.fnmatch_lines(["local*7*0*0*"])  # 4 from the sandbox fixture, 3 from the factory
    assert live_sandboxes() == []


AUTO = (
    ALIVE
    + """
import pytest
import sandboxes

FACTORY_MADE = []

@pytest.fixture
async def prepared(sandbox):
    await sandbox.write_file("/workspace/data.txt", "1 2 3\\n")
    yield sandbox
    assert (await sandbox.execute("cat /workspace/data.txt")).stdout == "1 2 3\\n"

async def test_unmarked_async_with_async_fixture(prepared, sandbox):
    assert prepared is sandbox and isinstance(sandbox, sandboxes.Sandbox)
    result = await sandbox.execute("awk '{print $1 + $2 + $3}' /workspace/data.txt")
    assert result.stdout == "6\\n"

class TestInAClass:
    async def test_method(self, sandbox):
        assert isinstance(sandbox, sandboxes.Sandbox)
        assert (await sandbox.execute("echo method")).stdout == "method\\n"

async def test_factory_fails(sandbox_factory):
    made = await sandbox_factory.acreate()
    FACTORY_MADE.append(made.id)
    assert (await made.execute("exit 1")).success

def test_factory_sandbox_of_a_failed_test_ends_with_its_test(sandbox_factory):
    assert FACTORY_MADE[0] not in alive()  # no --sandbox-keep: destroyed at the failed test's teardown
    assert sandbox_factory.sandboxes == []
"""
)


def test_auto_mode_unmarked_tests_async_fixtures_and_methods(pytester: pytest.Pytester, live_sandboxes) -> None:
    pytester.makepyfile(test_auto=AUTO)
    result = pytester.runpytest("-p", "no:cacheprovider", "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*asyncio: mode=*AUTO*"])
    result.stdout.fnmatch_lines(["local*3*"])
    assert live_sandboxes() == []


BOTH = """
import pytest
import sandboxes

@pytest.mark.anyio
async def test_under_anyio(sandbox):
    assert isinstance(sandbox, sandboxes.Sandbox)
    assert (await sandbox.execute("echo anyio")).stdout == "anyio\\n"

@pytest.mark.asyncio
async def test_under_pytest_asyncio(sandbox, sandbox_factory):
    assert isinstance(sandbox, sandboxes.Sandbox)
    other = await sandbox_factory.acreate()
    assert (await other.execute("echo asyncio")).stdout == "asyncio\\n"

def test_sync(sandbox):
    assert sandbox.execute("echo sync").stdout == "sync\\n"

@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


@pytest.mark.parametrize(
    "load",
    [
        pytest.param([], id="entry-points"),
        pytest.param(["-p", "sandboxes"], id="sandboxes-first"),
        pytest.param(["-p", "asyncio", "-p", "anyio"], id="async-plugins-first"),
    ],
)
def test_both_async_plugins_in_any_load_order(pytester: pytest.Pytester, live_sandboxes, load: list[str]) -> None:
    pytester.makepyfile(test_both=BOTH)
    pytester.runpytest("-p", "no:cacheprovider", *load).assert_outcomes(passed=3)
    assert live_sandboxes() == []


def test_no_async_plugin_needed(pytester: pytest.Pytester, live_sandboxes) -> None:
    """Without either plugin, sync tests work; an async test fails as pytest says, and its sandbox still goes."""
    pytester.makepyfile(
        test_plain="""
        import sandboxes

        async def test_async_without_a_plugin(sandbox):
            assert isinstance(sandbox, sandboxes.Sandbox)

        def test_sync(sandbox, sandbox_factory):
            assert sandbox.execute("echo hi").stdout == "hi\\n"
            assert sandbox_factory().execute("echo made").stdout == "made\\n"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:anyio")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*async def functions are not natively supported*"])
    assert "asyncio: mode" not in result.stdout.str()
    result.stdout.fnmatch_lines(["local*3*"])
    assert live_sandboxes() == []
