"""One E2B emulator per module, its faults cleared around each test, which must leave no sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulators.e2b import E2BEmulator, open_emulator


@pytest.fixture(scope="module")
def e2b_emulator() -> Iterator[E2BEmulator]:
    with open_emulator() as running:
        yield running


@pytest.fixture
def emulator(e2b_emulator: E2BEmulator) -> Iterator[E2BEmulator]:
    e2b_emulator.clear_faults()
    yield e2b_emulator
    e2b_emulator.clear_faults()
    assert not e2b_emulator.sandboxes, "a test left E2B sandboxes behind"


def e2b_provider(emulator: E2BEmulator, **options: Any) -> Any:
    from sandboxes.providers import E2BProvider

    return E2BProvider(**emulator.provider_options(), **options)
