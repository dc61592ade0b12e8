"""Provider classes (``LocalProvider``, ``E2BProvider``...), built from the spec table on first use,
so that a missing cloud SDK costs nothing until its provider is asked for."""

from typing import Any

from .. import specs

__all__ = [spec.class_name for spec in specs.BUILTIN]


def __getattr__(name: str) -> Any:
    for spec in specs.specs().values():
        if spec.class_name == name:
            return specs.provider_class(spec.name)
    raise AttributeError(f"module 'sandboxes.providers' has no attribute {name!r}")
