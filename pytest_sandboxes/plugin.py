"""The pytest11 entry point: wires options, markers, fixtures, xdist and the report.

Nothing here touches a session that uses none of it: providers are built,
and the summary printed, only when a test asked for a sandbox fixture.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

import sandboxes.sync as sync
from sandboxes import _quick_exit, leases
from sandboxes.errors import SandboxError
from sandboxes.manager import get_manager
from sandboxes.models import FRESH_ENV

from . import evaluation, metering, report
from .cassettes import PROVIDER_PARAM
from .fixtures import (
    CALL_REPORT,
    sandbox,
    sandbox_cassette,
    sandbox_config,
    sandbox_factory,
    sandbox_judge,
    sandbox_provider,
    sandbox_provider_name,
    sandbox_session_factory,
)
from .markers import MARKER, MARKER_HELP, spec_for
from .options import add_options, resolve
from .reaper import sweep
from .recording import RECORDING
from .session import STATE, SessionState, new_run_id
from .xdist import WORKER_INPUT, WORKER_OUTPUT, XdistHooks, is_controller, is_worker

__all__ = [
    "sandbox",
    "sandbox_cassette",
    "sandbox_config",
    "sandbox_factory",
    "sandbox_judge",
    "sandbox_provider",
    "sandbox_provider_name",
    "sandbox_session_factory",
]

SANDBOX_FIXTURES = {"sandbox", "sandbox_provider", "sandbox_cassette", "sandbox_factory", "sandbox_judge", "sandbox_session_factory", PROVIDER_PARAM}


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """pytest_sandboxes_configure and pytest_sandboxes_result (see ``pytest_sandboxes.hooks``)."""
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = resolve(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id, worker = workerinput.get(WORKER_INPUT) or new_run_id(), str(workerinput.get("workerid", "gw?"))
    else:
        run_id, worker = new_run_id(), "main"
    config.stash[STATE] = SessionState(settings, run_id, worker)
    if not settings.keep:  # with --sandbox-keep any sandbox may be kept: none carries a lease that a sweep would honour
        leases.begin(run_id)
        config.add_cleanup(lambda: leases.end(run_id))
    if settings.max_concurrency is not None:
        get_manager().set_limits({"alive": settings.max_concurrency})
    metering.start(config, config.stash[STATE])
    if settings.fresh and not os.environ.get(FRESH_ENV):
        # The local provider reads it at each creation and destroy; restored when pytest is done.
        os.environ[FRESH_ENV] = "1"
        config.add_cleanup(_recycle_again)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(config), "sandboxes-xdist")


def _recycle_again() -> None:
    os.environ.pop(FRESH_ENV, None)


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Several providers: one test per provider, ids [local], [e2b]; the same on every worker."""
    if PROVIDER_PARAM not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    spec = spec_for(metafunc.definition)
    names = spec.providers or state.settings.providers
    if len(names) < 2:
        return
    params = []
    for name in names:
        reason = None if state.settings.record_mode in ("none", "once") else state.reason(name)
        marks = [pytest.mark.skip(reason=f"sandbox provider {name!r} unavailable: {reason}")] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    metafunc.parametrize(PROVIDER_PARAM, params)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A bad marker is a usage error even on a test that uses no sandbox fixture."""
    for item in items:
        if item.get_closest_marker(MARKER) is not None:
            spec_for(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """After every fixture's teardown: the test's factory sandboxes go, then its cassettes are saved."""
    try:
        return (yield)
    finally:
        recording = item.stash.get(RECORDING, None)
        if recording is not None:
            recording.finish()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    metering.refused_for_budget(item, call, rep)
    evaluation.gather(item, call, rep)
    if call.when == "call":
        item.stash[CALL_REPORT] = rep
        uses = SANDBOX_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if rep.failed and uses and call.excinfo is not None and hasattr(rep.longrepr, "addsection"):
            section = report.failure_section(item, call.excinfo)
            if section:
                rep.longrepr.addsection("sandbox results", section)  # type: ignore[union-attr]  # a failed call's longrepr is a report object, not a str
    return rep


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object, right: object) -> list[str] | None:
    return report.assertrepr_compare(op, left, right)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(STATE, None)
    if state is None:
        return
    _sweep(state, config)
    if is_worker(config):
        config.workeroutput[WORKER_OUTPUT] = state.export()  # type: ignore[attr-defined]  # set by pytest-xdist on its workers only
    if state.providers:
        for provider in state.providers.values():
            try:
                sync.portal().call(provider.aclose)
            except Exception:  # closing is best effort at exit
                pass
    if state.used and (is_worker(config) or _cleanup_collections(config)):  # every test and fixture is done: the rest is the exit
        _quick_exit.freeze_once_clean()


def _cleanup_collections(config: pytest.Config) -> int:
    """The full collections that pytest's cleanup will make: five, and none in pytester's in-process runs
    (whose process goes on: its objects must stay collectable)."""
    try:
        from _pytest.unraisableexception import gc_collect_iterations_key
    except ImportError:  # a pytest without that cleanup
        return 0
    return config.stash.get(gc_collect_iterations_key, 5)


def _sweep(state: SessionState, config: pytest.Config) -> None:
    """Destroy what this run still has alive. A worker sweeps its own, with the providers it has loaded;
    the xdist controller, only after a worker crashed or could not sweep (it would load a provider's SDK
    just for that); a lone process, everything."""
    used = {name for name, stats in state.stats.items() if stats.created or stats.live}
    names = used
    if is_controller(config):
        names = {name for name, left in state.left_behind.items() if left < 0}
        if state.crashed_workers:
            names |= used | {name for name in state.settings.providers if state.reason(name) is None}
    worker = state.worker if is_worker(config) else None
    keep = {sandbox_id for _, sandbox_id in state.kept}
    for name in sorted(names):
        try:
            provider = state.provider(name)
            destroyed, remaining = sync.portal().call(sweep, provider, state.run_id, keep, worker)
        except SandboxError as error:
            state.left_behind[name] = -1
            print(f"sandboxes: could not sweep {name}: {error}")
            continue
        state.stats_for(name)
        state.swept[name] = state.swept.get(name, 0) + destroyed
        state.left_behind[name] = remaining


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or is_worker(config):
        return
    if state.used or state.swept or state.leaked:
        report.terminal_summary(terminalreporter, state)
    evaluation.finish(terminalreporter, state)
