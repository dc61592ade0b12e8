"""The conformance suite runs every test on every provider that can run here.

The local provider always runs. Each emulated cloud provider lives in
``tests/emulators/<name>.py`` and exposes ``open_provider()``, a context
manager that starts its loopback emulator and yields a provider pointed at it.

The same tests run against the real services as ``<name>-live`` params,
marked ``live``. They are opt-in (they cost money and need the network):
with ``SANDBOXES_LIVE=1`` (or ``-m live``) they are collected, and each one
whose credentials are missing is skipped with a reason naming the variable
to set; otherwise they are deselected, so the default run stays fast and
quiet. ``SANDBOXES_LIVE=1 pytest -m live tests/conformance`` runs only them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import anyio
import pytest

from pytest_sandboxes.session import unavailable_reason
from sandboxes import SandboxProvider, specs
from sandboxes.manager import provider_class
from sandboxes.providers.local import LocalProvider

CLOUD = tuple(specs.cloud_names())  # every cloud provider in the spec table; those with an emulator run here


def _emulated() -> dict[str, Callable[[], AbstractContextManager[SandboxProvider]]]:
    found = {}
    for name in CLOUD:
        try:
            module = importlib.import_module(f"tests.emulators.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"tests.emulators.{name}":
                continue  # this provider has no emulator (yet): it is not in the suite
            raise
        found[name] = module.open_provider
    return found


EMULATED = _emulated()
LIVE_SUFFIX = "-live"
LIVE_VARIABLE = "SANDBOXES_LIVE"


def _live_param(name: str) -> object:
    """``<name>-live``: the real service (skipped at set-up, with the reason, unless opted in and credentialed)."""
    return pytest.param(name + LIVE_SUFFIX, marks=pytest.mark.live, id=name + LIVE_SUFFIX)


def _live_skip_reason(name: str) -> str | None:
    if os.environ.get(LIVE_VARIABLE) != "1":
        return f"live run against the real {name} service: opt in with {LIVE_VARIABLE}=1 and its credentials"
    missing = unavailable_reason(name)
    return f"{LIVE_VARIABLE}=1 but {missing}" if missing else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Live params are deselected unless asked for (SANDBOXES_LIVE=1, or a -m expression naming live)."""
    if os.environ.get(LIVE_VARIABLE) == "1" or "live" in (config.option.markexpr or ""):
        return
    live = [item for item in items if str(getattr(item, "callspec", None) and item.callspec.params.get("provider_name", "")).endswith(LIVE_SUFFIX)]
    if live:
        config.hook.pytest_deselected(items=live)
        items[:] = [item for item in items if item not in live]


@pytest.fixture(scope="session", params=["local", *EMULATED, *(_live_param(name) for name in CLOUD)])
def provider_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def _session_provider(provider_name: str) -> Iterator[SandboxProvider]:
    if provider_name == "local":
        yield LocalProvider()
        return
    if provider_name.endswith(LIVE_SUFFIX):
        name = provider_name.removesuffix(LIVE_SUFFIX)
        reason = _live_skip_reason(name)
        if reason:
            pytest.skip(reason)
        live = provider_class(name)()  # credentials from the environment
        try:
            yield live
        finally:
            anyio.run(live.aclose)
        return
    with EMULATED[provider_name]() as provider:
        yield provider


@pytest.fixture
def provider(_session_provider: SandboxProvider, provider_name: str) -> SandboxProvider:
    return _session_provider
