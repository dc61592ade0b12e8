"""What other packages publish under an entry-point group: loaded, type-checked, never fatal."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("sandboxes")


def published(group: str, kind: type[T]) -> list[tuple[str, T]]:
    """(entry point value, object) for each entry of ``group`` that loads to a ``kind``; the others are logged and skipped."""
    found = []
    for entry in entry_points(group=group):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken plugin must not break the library
            log.warning("could not load %r from entry point %s: %s", entry.name, entry.value, error)
            continue
        if not isinstance(loaded, kind):
            log.warning("entry point %s of group %s is not a %s; ignored", entry.value, group, kind.__name__)
            continue
        found.append((entry.value, loaded))
    return found
