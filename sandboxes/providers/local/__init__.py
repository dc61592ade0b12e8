"""The local provider: bubblewrap sandboxes on this machine (driver in ``driver``)."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "LocalProvider":  # the engine over LocalDriver, as sandboxes.providers has it
        from ...specs import provider_class

        return provider_class("local")
    raise AttributeError(f"module 'sandboxes.providers.local' has no attribute {name!r}")
