"""The blocking facade keeps the async API's signatures and docstrings, so help() and editors show them; its portal runs calls on one loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time

import pytest

import sandboxes
import sandboxes.sync as sync

METHODS = ["create", "get", "find", "get_or_create", "list", "configure", "execute", "execute_many", "stream",
           "write_file", "write_files", "read_file", "upload", "download", "run_code", "destroy"]  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
def test_each_blocking_method_has_its_async_twins_parameters_and_docstring(name: str) -> None:
    blocking, original = getattr(sync.Sandbox, name), getattr(sandboxes.Sandbox, name)
    assert inspect.getdoc(blocking) and inspect.getdoc(blocking) == inspect.getdoc(original)
    theirs = [(p.name, p.kind, p.default) for p in inspect.signature(original).parameters.values()]
    ours = [(p.name, p.kind, p.default) for p in inspect.signature(blocking).parameters.values()]
    assert ours == theirs


@pytest.mark.parametrize("name", ["run", "run_many", "judge"])
def test_the_module_functions_too(name: str) -> None:
    blocking, original = getattr(sync, name), getattr(sandboxes, name)
    assert inspect.getdoc(blocking) == inspect.getdoc(original)
    assert list(inspect.signature(blocking).parameters) == list(inspect.signature(original).parameters)


def test_the_portal_runs_coroutines_and_plain_functions_on_its_loop_and_returns_or_raises_their_outcome() -> None:
    async def doubled(value: int) -> tuple[int, int]:
        await asyncio.sleep(0)
        return value * 2, threading.get_ident()

    async def failing() -> None:
        raise LookupError("from the loop")

    value, thread = sync.portal().call(doubled, 21)
    assert value == 42 and thread != threading.get_ident()
    assert sync.portal().call(threading.get_ident) == thread  # a plain function runs on the loop's thread too
    with pytest.raises(LookupError, match="from the loop"):
        sync.portal().call(failing)


def test_the_portal_serves_many_threads_at_once() -> None:
    async def slow(value: int) -> int:
        await asyncio.sleep(0.05)
        return value

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        results = list(pool.map(lambda value: sync.portal().call(slow, value), range(8)))
    assert results == list(range(8))
    assert time.monotonic() - started < 0.4  # concurrently on the loop, not one after another


def test_the_portal_refuses_a_call_from_its_own_loop_with_a_clear_error() -> None:
    async def nested() -> None:
        sync.portal().call(asyncio.sleep, 0)

    with pytest.raises(RuntimeError, match="cannot be called from its own event loop's thread: await the async API"):
        sync.portal().call(nested)
