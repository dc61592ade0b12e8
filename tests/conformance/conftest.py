"""The conformance suite runs every test on every provider that can run here.

The local provider always runs. Each emulated cloud provider lives in
``tests/emulators/<name>.py`` and exposes ``open_provider()``, a context
manager that starts its loopback emulator and yields a provider pointed at it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from sandboxes import SandboxProvider
from sandboxes.providers.local import LocalProvider

CLOUD = ("e2b", "daytona", "cloudflare", "modal")


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


@pytest.fixture(scope="session", params=["local", *EMULATED])
def provider_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def _session_provider(provider_name: str) -> Iterator[SandboxProvider]:
    if provider_name == "local":
        yield LocalProvider()
        return
    with EMULATED[provider_name]() as provider:
        yield provider


@pytest.fixture
def provider(_session_provider: SandboxProvider, provider_name: str) -> SandboxProvider:
    return _session_provider
