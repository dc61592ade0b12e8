"""The fixtures: sandbox, sandbox_factory, sandbox_provider, sandbox_config, sandbox_cassette."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sandboxes.sync as sync
from sandboxes.cassette import Cassette, CassetteDriver
from sandboxes.models import SandboxConfig
from sandboxes.provider import SandboxProvider
from sandboxes.sandbox import Sandbox, make_config

from .markers import MarkerSpec, spec_for
from .options import OFF, Settings
from .recording import CALL_REPORT, RECORDING, TestRecording, provider_of, recording_for
from .session import STATE, SessionState

__all__ = ["CALL_REPORT", "SandboxFactory", "compose"]


def state_of(config: pytest.Config) -> SessionState:
    return config.stash[STATE]


def compose(base: SandboxConfig, settings: Settings, spec: MarkerSpec, run_labels: dict[str, str]) -> SandboxConfig:
    """sandbox_config, then options filling its gaps, then the marker, then the run's labels."""
    changes: dict[str, Any] = {}
    if base.image is None and settings.image is not None:
        changes["image"] = settings.image
    if base.command_timeout is None and settings.timeout is not None:
        changes["command_timeout"] = settings.timeout
    if spec.image is not None:
        changes["image"] = spec.image
    if spec.timeout is not None:
        changes["command_timeout"] = spec.timeout
    if spec.lifetime is not None:
        changes["lifetime"] = spec.lifetime
    if spec.network is not None:
        changes["network"] = spec.network
    changes["env"] = {**base.env, **spec.env}
    changes["labels"] = {**base.labels, **spec.labels, **run_labels}
    return base.replace(**changes)


def _is_async_test(request: pytest.FixtureRequest) -> bool:
    function = getattr(request.node, "function", None)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


@pytest.fixture
def sandbox_provider_name(request: pytest.FixtureRequest) -> str:
    """The provider this test runs on (a parameter when several are configured)."""
    return provider_of(request.node, state_of(request.config))


@pytest.fixture
def sandbox_cassette(request: pytest.FixtureRequest, sandbox_provider_name: str) -> Cassette | None:
    """This test's cassette, or None when the record mode is off. Saved after a passing test.

    A missing one in ``none`` mode fails here, at set-up.
    """
    return recording_for(request.node, state_of(request.config)).cassette(sandbox_provider_name)


@pytest.fixture
def sandbox_provider(request: pytest.FixtureRequest, sandbox_provider_name: str, sandbox_cassette: Cassette | None) -> SandboxProvider:
    """The provider the sandbox fixture uses: live, recording or replaying, and always counted."""
    return recording_for(request.node, state_of(request.config)).provider(sandbox_provider_name)


@pytest.fixture
def sandbox_config(request: pytest.FixtureRequest) -> SandboxConfig:
    """The base configuration of the sandbox fixture; override it at any scope."""
    settings = state_of(request.config).settings
    return SandboxConfig(image=settings.image, command_timeout=settings.timeout)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest, sandbox_provider: SandboxProvider, sandbox_config: SandboxConfig) -> Iterator[Any]:
    """A fresh sandbox, destroyed at teardown even when the test fails.

    A blocking ``sandboxes.sync.Sandbox`` in a plain test, the async
    ``sandboxes.Sandbox`` in an async one (anyio or pytest-asyncio).
    """
    state = state_of(request.config)
    config = compose(sandbox_config, state.settings, spec_for(request.node), state.labels)
    portal = sync.portal()
    recorder = sandbox_provider.driver
    pool = state.pool_for(sandbox_provider.name) if state.settings.pool and isinstance(recorder, CassetteDriver) and recorder.cassette is None else None
    if pool is not None and isinstance(recorder, CassetteDriver):
        started = time.perf_counter()
        info = portal.call(pool.acquire, config)
        recorder.adopt(seconds=time.perf_counter() - started)
    else:
        info = portal.call(sandbox_provider.create_sandbox, config)
    handle = Sandbox(sandbox_provider, info, command_timeout=config.command_timeout)
    try:
        yield handle if _is_async_test(request) else sync.Sandbox(handle)
    finally:
        report = request.node.stash.get(CALL_REPORT, None)
        if state.settings.keep and report is not None and report.failed:
            state.kept.append((sandbox_provider.name, info.id))
            request.node.add_report_section("teardown", "sandbox", f"kept sandbox {info.id} on {sandbox_provider.name} (--sandbox-keep)")
        else:
            portal.call(handle.destroy)


class SandboxFactory:
    """Creates any number of sandboxes, each with its own config.

    Without cassettes its sandboxes live until the session ends. With a record
    mode, a sandbox made during a test is recorded in that test's cassette
    (the same one as the ``sandbox`` fixture's, for that provider) and
    destroyed when the test ends, so the suite replays with no provider.
    """

    def __init__(self, state: SessionState) -> None:
        self._state = state
        self._made: list[Sandbox] = []
        self._live: dict[str, SandboxProvider] = {}

    def __call__(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> sync.Sandbox:
        """A new blocking sandbox; ``options`` are SandboxConfig fields."""
        plan = self._plan(provider, config, options)
        return sync.Sandbox(sync.portal().call(self._create, *plan))

    async def acreate(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> Sandbox:
        """A new async sandbox."""
        return await self._create(*self._plan(provider, config, options))

    def _plan(self, provider: str | None, config: SandboxConfig | None, options: dict[str, Any]) -> tuple[SandboxProvider, SandboxConfig, TestRecording | None]:
        """Which wrapped provider and config (checks, skips and failures happen here, not in the portal)."""
        state = self._state
        settings = state.settings
        base = make_config(config or SandboxConfig(image=settings.image, command_timeout=settings.timeout), **options)
        final = compose(base, settings, MarkerSpec(), state.labels)
        if settings.record_mode == OFF:
            name = provider or (provider_of(state.item, state) if state.item is not None else settings.providers[0])
            return self._live_provider(name), final, None
        self._check_recordable()
        assert state.item is not None
        recording = recording_for(state.item, state)
        return recording.provider(provider or provider_of(state.item, state)), final, recording

    def _check_recordable(self) -> None:
        """A cassette holds one test: a sandbox made outside one, or for a wider scope, cannot be replayed."""
        state = self._state
        mode = state.settings.record_mode
        fixture = state.fixture_stack[-1] if state.fixture_stack else None
        if state.item is None:
            where = "outside any test"
        elif fixture is not None and fixture.scope != "function":
            where = f"in the {fixture.scope}-scoped fixture {fixture.argname!r}"
        else:
            return
        pytest.fail(
            f"sandbox_factory was called {where}, but with cassettes (record mode {mode!r}) a sandbox is recorded in one "
            f"test's cassette and lives only for that test. Make it in the test or in a function-scoped fixture, "
            f"or run without cassettes (--sandbox-record-mode=off).",
            pytrace=False,
        )

    def _live_provider(self, name: str) -> SandboxProvider:
        """No cassette: one counted live provider per name for the whole session."""
        if name not in self._live:
            reason = self._state.reason(name)
            if reason:
                pytest.skip(f"sandbox provider {name!r} unavailable: {reason}")
            live = self._state.provider(name)
            self._live[name] = live.with_driver(CassetteDriver(live.driver, None, name=name, stats=self._state.stats_for(name)))
        return self._live[name]

    async def _create(self, wrapped: SandboxProvider, config: SandboxConfig, recording: TestRecording | None) -> Sandbox:
        info = await wrapped.create_sandbox(config)
        made = Sandbox(wrapped, info, command_timeout=config.command_timeout)
        (self._made if recording is None else recording.made).append(made)
        return made

    @property
    def sandboxes(self) -> list[Sandbox]:
        """The sandboxes it made that are still alive: the session's, then the running test's recorded ones."""
        item = self._state.item
        recording = item.stash.get(RECORDING, None) if item is not None else None
        return [*self._made, *(recording.made if recording is not None else ())]

    def close(self) -> None:
        """Session end: the unrecorded ones (a test's recorded ones go when the test ends)."""
        portal = sync.portal()
        while self._made:
            portal.call(self._made.pop().destroy)


@pytest.fixture(scope="session")
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Session-wide: ``sandbox_factory(image=..., env=...)`` makes a sandbox, ``await sandbox_factory.acreate(...)`` in async code.

    Without cassettes all are destroyed at the end of the session; with a record
    mode each is recorded in the cassette of the test that made it and destroyed
    when that test ends.
    """
    factory = SandboxFactory(state_of(request.config))
    try:
        yield factory
    finally:
        factory.close()
