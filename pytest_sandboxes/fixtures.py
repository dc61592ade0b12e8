"""The fixtures: sandbox, sandbox_factory, sandbox_provider, sandbox_config, sandbox_cassette."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sandboxes.sync as sync
from sandboxes.cassette import Cassette, CassetteProvider, Scrubber, looks_secret
from sandboxes.errors import CassetteError
from sandboxes.models import SandboxConfig
from sandboxes.provider import SandboxProvider
from sandboxes.sandbox import Sandbox, make_config

from .cassettes import cassette_path, rerecord_command
from .markers import MarkerSpec, spec_for
from .options import OFF, Settings
from .session import STATE, SessionState

CALL_REPORT = pytest.StashKey[pytest.TestReport]()


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


def _extra_secrets() -> dict[str, str]:
    """Credentials handed to providers in code (Sandbox.configure(e2b_api_key=...))."""
    manager = Sandbox._manager
    found: dict[str, str] = {}
    for name, options in (manager.provider_options.items() if manager else ()):
        for key, value in options.items():
            if isinstance(value, str) and looks_secret(key):
                found[f"{name}.{key}"] = value
    return found


def _is_async_test(request: pytest.FixtureRequest) -> bool:
    function = getattr(request.node, "function", None)
    return inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)


@pytest.fixture
def sandbox_provider_name(request: pytest.FixtureRequest) -> str:
    """The provider this test runs on (a parameter when several are configured)."""
    spec = spec_for(request.node)
    return (spec.providers or state_of(request.config).settings.providers)[0]


@pytest.fixture
def sandbox_cassette(request: pytest.FixtureRequest, sandbox_provider_name: str) -> Iterator[Cassette | None]:
    """This test's cassette, or None when the record mode is off. Saved after a passing test."""
    state = state_of(request.config)
    settings = state.settings
    if settings.record_mode == OFF:
        yield None
        return
    path = cassette_path(request.node, sandbox_provider_name, settings)
    problem = None
    try:
        cassette = Cassette(
            path,
            settings.record_mode,
            provider=sandbox_provider_name,
            rerecord_hint=rerecord_command(request.node),
            scrubber=Scrubber(extra=_extra_secrets()),
        )
    except CassetteError as error:
        problem = str(error)
    if problem is not None:  # outside the except: no chained traceback in the report
        pytest.fail(problem, pytrace=False)
    yield cassette
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and (report.passed or settings.record_failed):
        cassette.save()


@pytest.fixture
def sandbox_provider(request: pytest.FixtureRequest, sandbox_provider_name: str, sandbox_cassette: Cassette | None) -> SandboxProvider:
    """The provider the sandbox fixture uses: live, recording or replaying, and always counted."""
    state = state_of(request.config)
    inner = None
    if sandbox_cassette is None or sandbox_cassette.needs_provider:
        reason = state.reason(sandbox_provider_name)
        if reason:
            pytest.skip(f"sandbox provider {sandbox_provider_name!r} unavailable: {reason}")
        inner = state.provider(sandbox_provider_name)
    return CassetteProvider(inner, sandbox_cassette, name=sandbox_provider_name, stats=state.stats_for(sandbox_provider_name))


@pytest.fixture
def sandbox_config(request: pytest.FixtureRequest) -> SandboxConfig:
    """The base configuration of the sandbox fixture; override it at any scope."""
    settings = state_of(request.config).settings
    return SandboxConfig(image=settings.image, command_timeout=settings.timeout)


@pytest.fixture
def sandbox(request: pytest.FixtureRequest, sandbox_provider: CassetteProvider, sandbox_config: SandboxConfig) -> Iterator[Any]:
    """A fresh sandbox, destroyed at teardown even when the test fails.

    A blocking ``sandboxes.sync.Sandbox`` in a plain test, the async
    ``sandboxes.Sandbox`` in an async one (anyio or pytest-asyncio).
    """
    state = state_of(request.config)
    config = compose(sandbox_config, state.settings, spec_for(request.node), state.labels)
    portal = sync.portal()
    pool = state.pool_for(sandbox_provider) if state.settings.pool and sandbox_provider.cassette is None else None
    if pool is not None:
        started = time.perf_counter()
        info = portal.call(pool.acquire, config)
        sandbox_provider.adopt(info, config, seconds=time.perf_counter() - started)
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
    """Creates any number of sandboxes, each with its own config; all destroyed at session end."""

    def __init__(self, state: SessionState) -> None:
        self._state = state
        self._made: list[Sandbox] = []

    def __call__(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> sync.Sandbox:
        """A new blocking sandbox; ``options`` are SandboxConfig fields."""
        return sync.Sandbox(sync.portal().call(lambda: self.acreate(provider, config=config, **options)))

    async def acreate(self, provider: str | None = None, *, config: SandboxConfig | None = None, **options: Any) -> Sandbox:
        """A new async sandbox."""
        settings = self._state.settings
        name = provider or settings.providers[0]
        base = make_config(config or SandboxConfig(image=settings.image, command_timeout=settings.timeout), **options)
        final = compose(base, settings, MarkerSpec(), self._state.labels)
        reason = self._state.reason(name)
        if reason:
            pytest.skip(f"sandbox provider {name!r} unavailable: {reason}")
        wrapped = CassetteProvider(self._state.provider(name), None, name=name, stats=self._state.stats_for(name))
        info = await wrapped.create_sandbox(final)
        made = Sandbox(wrapped, info, command_timeout=final.command_timeout)
        self._made.append(made)
        return made

    @property
    def sandboxes(self) -> list[Sandbox]:
        return list(self._made)

    def close(self) -> None:
        portal = sync.portal()
        while self._made:
            portal.call(self._made.pop().destroy)


@pytest.fixture(scope="session")
def sandbox_factory(request: pytest.FixtureRequest) -> Iterator[SandboxFactory]:
    """Session-wide: ``sandbox_factory(image=..., env=...)`` makes a sandbox; all are destroyed at the end.

    Its sandboxes are always live (no cassette: they outlive any one test).
    """
    factory = SandboxFactory(state_of(request.config))
    try:
        yield factory
    finally:
        factory.close()
