"""One test's cassettes and providers, shared by the sandbox fixture and sandbox_factory.

A test has one cassette per provider. The ``sandbox`` fixture and the
sandboxes ``sandbox_factory`` makes during the test go through the same
wrapped provider, so placeholders (``sandbox-1``, ``sandbox-2``...) follow the
order of creation in record and replay alike. After the test's teardown the
factory's sandboxes of this test are destroyed (the destroy is recorded), then
the cassettes are saved, and the providers refuse further use: a recorded
sandbox belongs to its test.
"""

from __future__ import annotations

from typing import Any

import pytest

import sandboxes.sync as sync
from sandboxes import specs
from sandboxes.cassette import Cassette, CassetteDriver, Interaction, Scrubber, looks_secret
from sandboxes.errors import CassetteError
from sandboxes.manager import current_manager
from sandboxes.models import Command, ExecutionResult
from sandboxes.provider import SandboxProvider
from sandboxes.sandbox import Sandbox

from .cassettes import PROVIDER_PARAM, cassette_path, rerecord_command
from .markers import spec_for
from .options import OFF
from .session import SessionState

CALL_REPORT = pytest.StashKey[pytest.TestReport]()


class TestDriver(CassetteDriver):
    """A test's cassette middleware; once the test is over, any use names the problem."""

    __test__ = False  # not a test class, whatever its name
    ended: str | None = None

    def _replay(self, op: str, args: dict[str, Any]) -> Interaction | None:
        if self.ended is not None:
            raise CassetteError(f"{op} on sandbox {args.get('sandbox', '?')}: {self.ended}")
        return super()._replay(op, args)


class ReportingProvider(SandboxProvider):
    """A test's provider: every execute result also goes to the ``pytest_sandboxes_result`` hook."""

    def __init__(self, driver: TestDriver, *, spec: specs.ProviderSpec, item: pytest.Item) -> None:
        super().__init__(driver, spec=spec)
        self.item = item

    async def execute_command(self, sandbox_id: str, command: Command, **options: Any) -> ExecutionResult:
        result = await super().execute_command(sandbox_id, command, **options)
        self.item.config.hook.pytest_sandboxes_result(item=self.item, result=result)
        return result


def _extra_secrets() -> dict[str, str]:
    """Credentials handed to providers in code (Sandbox.configure(e2b_api_key=...))."""
    manager = current_manager()
    found: dict[str, str] = {}
    for name, options in manager.provider_options.items() if manager else ():
        for key, value in options.items():
            if isinstance(value, str) and looks_secret(key):
                found[f"{name}.{key}"] = value
    return found


def provider_of(item: pytest.Item, state: SessionState) -> str:
    """The provider a test runs on: its parameter, else its marker, else the options."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and PROVIDER_PARAM in callspec.params:
        return str(callspec.params[PROVIDER_PARAM])
    return (spec_for(item).providers or state.settings.providers)[0]


class TestRecording:
    """The cassettes (one per provider) and wrapped providers of one test."""

    __test__ = False

    def __init__(self, item: pytest.Item, state: SessionState) -> None:
        self.item = item
        self.state = state
        self._cassettes: dict[str, Cassette | None] = {}
        self._providers: dict[str, SandboxProvider] = {}
        self._drivers: dict[str, TestDriver] = {}
        self.made: list[Sandbox] = []
        """The sandboxes sandbox_factory made for this test, destroyed when it ends."""

    def cassette(self, name: str) -> Cassette | None:
        """This test's cassette for ``name`` (None when the record mode is off); a bad one fails the test."""
        if name not in self._cassettes:
            settings = self.state.settings
            if settings.record_mode == OFF:
                self._cassettes[name] = None
            else:
                problem = None
                try:
                    self._cassettes[name] = Cassette(
                        cassette_path(self.item, name, settings),
                        settings.record_mode,
                        provider=name,
                        rerecord_hint=rerecord_command(self.item),
                        scrubber=Scrubber(extra=_extra_secrets()),
                    )
                except CassetteError as error:
                    problem = str(error)
                if problem is not None:  # outside the except: no chained traceback in the report
                    pytest.fail(problem, pytrace=False)
        return self._cassettes[name]

    def provider(self, name: str) -> SandboxProvider:
        """Live, recording or replaying, always counted; skips the test when a needed provider cannot run."""
        if name not in self._providers:
            cassette = self.cassette(name)
            live = None
            if cassette is None or cassette.needs_provider:
                reason = self.state.reason(name)
                if reason:
                    pytest.skip(f"sandbox provider {name!r} unavailable: {reason}")
                live = self.state.provider(name)
            driver = self._drivers[name] = TestDriver(live.driver if live else None, cassette, name=name, stats=self.state.stats_for(name))
            self._providers[name] = ReportingProvider(driver, spec=specs.spec(name), item=self.item)
        return self._providers[name]

    def finish(self) -> None:
        """After teardown: destroy this test's factory sandboxes, then save the cassettes of a passing test."""
        settings = self.state.settings
        report = self.item.stash.get(CALL_REPORT, None)
        failed = report is not None and report.failed
        errors: list[BaseException] = []
        portal = sync.portal()
        while self.made:
            handle = self.made.pop()
            if settings.keep and failed and self._drivers[handle.provider].inner is not None:  # a replayed one is nothing to keep
                self.state.kept.append((handle.provider, handle.id))
                continue
            try:
                portal.call(handle.destroy)
            except Exception as error:  # every sandbox gets its destroy; the first error is raised
                errors.append(error)
        try:
            if report is not None and not errors and (report.passed or settings.record_failed):
                for cassette in self._cassettes.values():
                    if cassette is not None:
                        cassette.save()
        finally:
            for driver in self._drivers.values():
                if driver.cassette is not None:
                    driver.ended = (
                        f"it was recorded in the cassette of {self.item.nodeid}, which has ended. A sandbox that a cassette "
                        f"records lives only for its test: make it in each test that uses it (or in a function-scoped fixture)"
                    )
        if errors:
            raise errors[0]


RECORDING = pytest.StashKey[TestRecording]()


def recording_for(item: pytest.Item, state: SessionState) -> TestRecording:
    recording = item.stash.get(RECORDING, None)
    if recording is None:
        recording = item.stash[RECORDING] = TestRecording(item, state)
    return recording
