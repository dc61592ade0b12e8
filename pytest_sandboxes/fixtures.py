"""The fixtures: sandbox, sandbox_factory, sandbox_provider, sandbox_config, sandbox_cassette."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import sandboxes.sync as sync
from sandboxes.cassette import Cassette, CassetteDriver
from sandboxes.governor import already_holding
from sandboxes.judging import Judgement, judge_retrying
from sandboxes.models import SandboxConfig
from sandboxes.provider import SandboxProvider
from sandboxes.sandbox import Sandbox, make_config

from .markers import MarkerSpec, spec_for
from .options import OFF, Settings
from .recording import CALL_REPORT, provider_of, recording_for
from .session import STATE, SessionState

__all__ = ["CALL_REPORT", "JUDGED", "SandboxFactory", "SessionSandboxFactory", "compose"]

JUDGED = pytest.StashKey[list[str]]()
"""The verdicts of the judgements a test made through sandbox_judge."""
SANDBOX_CONFIG = pytest.StashKey[SandboxConfig]()
"""The final config of the test's ``sandbox``, for sandbox_judge's fresh sandboxes."""


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


def configured(item: pytest.Item, config: SandboxConfig) -> SandboxConfig:
    """The config after the ``pytest_sandboxes_configure`` hook (a plugin's or a conftest's)."""
    changed = item.config.hook.pytest_sandboxes_configure(item=item, config=config)
    if changed is None:
        return config
    if not isinstance(changed, SandboxConfig):
        raise pytest.UsageError(f"pytest_sandboxes_configure returned {type(changed).__name__}, not a SandboxConfig (or None) for {item.nodeid}")
    return changed


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
    config = configured(request.node, compose(sandbox_config, state.settings, spec_for(request.node), state.labels))
    request.node.stash[SANDBOX_CONFIG] = config
    portal = sync.portal()
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


@pytest.fixture
def sandbox_judge(request: pytest.FixtureRequest, sandbox: Any, sandbox_provider: SandboxProvider) -> Callable[..., Any]:
    """``sandbox_judge(program, language, tests=... | expected_stdout=... | cases=...)``: a ``Judgement``, judged in this test's sandbox.

    Blocking in a sync test, a coroutine in an async one. ``assert judgement.passed``
    shows the verdict, the first failing case and the tails of the output. An
    ``infra_error`` is judged again in a fresh sandbox from ``sandbox_factory``
    (``retries`` more times, two unless given), and a sandbox the program lost
    every time counts as its ``runtime_error``, as ``sandboxes eval`` counts it.
    """
    judged = request.node.stash.setdefault(JUDGED, [])
    factory = SandboxFactory(state_of(request.config), request.node)  # the sandbox_factory fixture's, not asked for: each fixture costs every test
    first: Sandbox = sandbox if isinstance(sandbox, Sandbox) else sandbox.async_sandbox
    config = request.node.stash[SANDBOX_CONFIG]
    current: Sandbox | None = first  # None once lost: the next judgement starts in a fresh one

    @asynccontextmanager
    async def sandboxes(attempt: int) -> AsyncIterator[Sandbox]:
        nonlocal current
        if attempt or current is None:  # a fresh one like the first; the factory destroys (or keeps) it when the test ends
            current = await factory._create(sandbox_provider, config)
        yield current

    async def judge_async(program: str, language: str, **options: Any) -> Judgement:
        nonlocal current
        judgement = await judge_retrying(sandboxes, program, language, provider=first.provider, **options)
        if judgement.lost:
            current = None
        judged.append(judgement.verdict.value)
        return judgement

    if _is_async_test(request):
        return judge_async
    return lambda program, language, **options: sync.portal().call(lambda: judge_async(program, language, **options))


class SandboxFactory:
    """Makes any number of sandboxes for one test, each with its own config.

    They go through the test's provider, the same as the ``sandbox`` fixture's:
    recorded in its cassette under a record mode, counted in the report, and
    destroyed when the test ends (kept, and reported, with ``--sandbox-keep``
    when it failed).
    """

    def __init__(self, state: SessionState, item: pytest.Item) -> None:
        self._state = state
        self._item = item

    def __call__(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> sync.Sandbox:
        """A new blocking sandbox; ``options`` are SandboxConfig fields."""
        return sync.Sandbox(sync.portal().call(self._create, *self._plan(provider, config, options)))

    async def acreate(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> Sandbox:
        """A new async sandbox."""
        return await self._create(*self._plan(provider, config, options))

    def _plan(self, provider: str | None, config: SandboxConfig | None, options: dict[str, Any]) -> tuple[SandboxProvider, SandboxConfig]:
        """Which provider and config (checks, skips and failures happen here, not in the portal)."""
        state = self._state
        base = make_config(config or SandboxConfig(image=state.settings.image, command_timeout=state.settings.timeout), **options)
        final = configured(self._item, compose(base, state.settings, MarkerSpec(), state.labels))
        recording = recording_for(self._item, state)
        return recording.provider(provider or provider_of(self._item, state)), final

    async def _create(self, provider: SandboxProvider, config: SandboxConfig) -> Sandbox:
        recording = recording_for(self._item, self._state)
        holds = bool(recording.made) or SANDBOX_CONFIG in self._item.stash  # this test already holds a sandbox
        with already_holding() if holds else contextlib.nullcontext():
            made = Sandbox(provider, await provider.create_sandbox(config), command_timeout=config.command_timeout)
        recording.made.append(made)
        return made

    @property
    def sandboxes(self) -> list[Sandbox]:
        """The sandboxes it made for this test that are still alive."""
        return list(recording_for(self._item, self._state).made)


class SessionSandboxFactory:
    """Makes sandboxes that live for the whole session (live only: a cassette holds one test)."""

    def __init__(self, state: SessionState) -> None:
        self._state = state
        self._made: list[Sandbox] = []
        self._providers: dict[str, SandboxProvider] = {}

    def __call__(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> sync.Sandbox:
        """A new blocking sandbox, destroyed when the session ends."""
        return sync.Sandbox(sync.portal().call(self._create, *self._plan(provider, config, options)))

    async def acreate(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> Sandbox:
        return await self._create(*self._plan(provider, config, options))

    def _plan(self, provider: str | None, config: SandboxConfig | None, options: dict[str, Any]) -> tuple[SandboxProvider, SandboxConfig]:
        state = self._state
        settings = state.settings
        if settings.record_mode != OFF:
            pytest.fail(
                f"sandbox_session_factory makes sandboxes that outlive any one test, and a cassette (record mode {settings.record_mode!r}) "
                "records one test: use sandbox_factory in the test or a function-scoped fixture, or run with --sandbox-record-mode=off",
                pytrace=False,
            )
        name = provider or settings.providers[0]
        if name not in self._providers:
            reason = state.reason(name)
            if reason:
                pytest.skip(f"sandbox provider {name!r} unavailable: {reason}")
            live = state.provider(name)
            self._providers[name] = live.with_driver(CassetteDriver(live.driver, None, name=name, stats=state.stats_for(name)))
        base = make_config(config or SandboxConfig(image=settings.image, command_timeout=settings.timeout), **options)
        return self._providers[name], compose(base, settings, MarkerSpec(), state.labels)

    async def _create(self, provider: SandboxProvider, config: SandboxConfig) -> Sandbox:
        made = Sandbox(provider, await provider.create_sandbox(config), command_timeout=config.command_timeout)
        self._made.append(made)
        return made

    @property
    def sandboxes(self) -> list[Sandbox]:
        return list(self._made)

    def close(self) -> None:
        portal = sync.portal()
        while self._made:
            portal.call(self._made.pop().destroy)


@pytest.fixture
def sandbox_factory(request: pytest.FixtureRequest) -> SandboxFactory:
    """``sandbox_factory(image=..., env=...)`` makes a sandbox for this test; ``await sandbox_factory.acreate(...)`` in async code.

    Each is recorded in this test's cassette under a record mode, and destroyed
    when the test ends (kept with ``--sandbox-keep`` when it failed).
    """
    return SandboxFactory(state_of(request.config), request.node)


@pytest.fixture(scope="session")
def sandbox_session_factory(request: pytest.FixtureRequest) -> Iterator[SessionSandboxFactory]:
    """Sandboxes shared by several tests, destroyed when the session ends; live only (no cassettes)."""
    factory = SessionSandboxFactory(state_of(request.config))
    try:
        yield factory
    finally:
        factory.close()
