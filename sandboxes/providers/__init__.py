"""Provider classes, imported lazily so a missing cloud SDK costs nothing."""

from typing import Any

_CLASSES = {
    "LocalProvider": "local",
    "E2BProvider": "e2b",
    "ModalProvider": "modal",
    "DaytonaProvider": "daytona",
    "CloudflareProvider": "cloudflare",
}

__all__ = list(_CLASSES)


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        from ..manager import provider_class

        return provider_class(_CLASSES[name])
    raise AttributeError(f"module 'sandboxes.providers' has no attribute {name!r}")
