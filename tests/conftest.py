"""Shared fixtures: every test gets its own local state dir, so runs never mix."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import sandboxes
from sandboxes import SandboxConfig
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local.recycling import IDLE

pytest_plugins = ["pytester"]  # the plugin tests run real pytest sessions


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Inner sessions keep pytest-benchmark out, as pyproject's addopts does here.

    When installed, it warns under xdist, and warnings are errors.
    """
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:benchmark")
    return pytester


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private local-provider state dir and a fresh manager per test."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SANDBOXES_LOCAL_STATE_DIR", str(state))
    monkeypatch.setenv("SANDBOXES_GOVERNOR_DIR", str(state / "governor"))  # no test slows another's cloud creations
    monkeypatch.delenv("SANDBOXES_MAX_CONCURRENCY", raising=False)
    monkeypatch.delenv("SANDBOXES_PROVIDER", raising=False)
    sandboxes.reset_manager()
    yield state
    sandboxes.reset_manager()
    IDLE.drain()  # the idle sandboxes of this test's state dir: no later test can lease them
    leftovers = [p.name for p in state.iterdir() if p.name.startswith("sb-")] if state.exists() else []
    if leftovers:
        from sandboxes.providers.local import LocalProvider

        provider = LocalProvider(state_dir=state)
        for name in leftovers:
            provider._destroy(name)
        pytest.fail(f"test left local sandboxes behind: {leftovers}")


@pytest.fixture
async def box(provider: LocalProvider) -> AsyncIterator[str]:
    """A sandbox's id on the module's own ``provider`` fixture, destroyed afterwards."""
    info = await provider.create_sandbox(SandboxConfig())
    try:
        yield info.id
    finally:
        await provider.destroy_sandbox(info.id)


def pytest_report_header() -> str:
    return f"sandboxes: uid={os.geteuid()}"
