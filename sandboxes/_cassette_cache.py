"""Each cassette's checked form, kept by content: a replay reads JSON, not YAML.

Reading a cassette (``_cassette_format.read_document``) parses its YAML and
checks every field, which is most of what replaying a test costs. The result
depends only on the file's bytes and on the reader's code, so it is kept as
``<cache>/cassettes/<sha256>.json`` (``_cache.cache_root``), the digest taken
over both: an edited cassette, or another version of the reader, is read and
checked afresh. The cache is the user's own, never a repository's; an entry
that cannot be read or written is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ._cache import cache_root

if TYPE_CHECKING:
    from .cassette import Interaction

Parsed = tuple[str | None, list["Interaction"]]
STALE_SECONDS = 30 * 86400
"""Entries not written for this long are removed, now and then (``PRUNE_ONE_IN``), when one is added."""
PRUNE_ONE_IN = 64


def read(text: str, parse: Callable[[str], Parsed]) -> Parsed:
    """``parse(text)``, or what it returned for the same text and reader before."""
    from .cassette import Interaction

    entry = _entry(text)
    if entry is None:
        return parse(text)
    try:
        kept = json.loads(entry.read_bytes())
        return kept["provider"], [Interaction(item["op"], item["args"], item["result"]) for item in kept["interactions"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    provider, interactions = parse(text)
    _store(entry, {"provider": provider, "interactions": [item.as_dict() for item in interactions]})
    return provider, interactions


def _entry(text: str) -> Path | None:
    """Where the checked form of ``text`` is kept; None when the reader's code cannot be read (no cache)."""
    reader = _reader_digest()
    if reader is None:
        return None
    digest = hashlib.sha256(reader + text.encode("utf-8", "surrogatepass")).hexdigest()
    return cache_root() / "cassettes" / f"{digest}.json"


@functools.cache
def _reader_digest() -> bytes | None:
    """The reader's own code: a change to how a cassette is read or checked makes new entries.
    None where its source is not a readable file (a zipped install): then nothing is cached."""
    # Found, not imported: a cassette read from this cache needs no YAML (its import is some 25 ms).
    found = [importlib.util.find_spec(f"{__package__}.{name}") for name in ("_cassette_format", "cassette")]
    paths = [spec.origin for spec in found if spec is not None and spec.origin]
    if len(paths) < len(found):
        return None
    try:
        sources = [Path(path).read_bytes() for path in (*paths, __file__)]
    except OSError:
        return None
    return b"".join(hashlib.sha256(source).digest() for source in sources)


def _store(entry: Path, document: dict[str, object]) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=entry.parent, suffix=".part")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(temporary, entry)  # whole or not at all, for the other workers
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return
    if random.randrange(PRUNE_ONE_IN) == 0:
        _prune(entry.parent)


def _prune(directory: Path) -> None:
    cutoff = time.time() - STALE_SECONDS
    for path in directory.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass
