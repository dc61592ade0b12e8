"""A small JSON registry of sandboxes for providers with no labels and no list.

The Cloudflare Sandbox Bridge creates sandboxes but cannot list them or keep
labels, so the client keeps them: one JSON file under the user's state dir
(``$XDG_STATE_HOME/sandboxes/<provider>/registry.json``), locked with
``flock`` and replaced atomically, so another process on the same machine
(another xdist worker, the CLI) finds the same sandboxes by label.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Entry = dict[str, Any]


def default_state_dir(provider: str) -> Path:
    configured = os.environ.get(f"SANDBOXES_{provider.upper()}_STATE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "sandboxes" / provider


class LabelRegistry:
    """Sandbox id -> entry (labels, created_at, expires_at, ...), shared by processes."""

    def __init__(self, directory: Path, scope: str) -> None:
        self.directory = directory
        self.scope = scope  # entries of other endpoints (another bridge URL) are kept apart
        self.path = directory / "registry.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Entry]]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.directory / "registry.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries = self._read()
                before = json.dumps(entries, sort_keys=True)
                yield entries
                if json.dumps(entries, sort_keys=True) != before:
                    self._write(entries)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Entry]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a damaged registry is as good as an empty one
        return data.get("sandboxes", {}) if isinstance(data, dict) else {}

    def _write(self, entries: dict[str, Entry]) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".registry-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"version": 1, "sandboxes": entries}, handle, indent=1, sort_keys=True)
        os.replace(temporary, self.path)

    def _key(self, sandbox_id: str) -> str:
        return f"{self.scope} {sandbox_id}"

    def add(self, sandbox_id: str, entry: Entry) -> None:
        with self._locked() as entries:
            entries[self._key(sandbox_id)] = {**entry, "id": sandbox_id, "scope": self.scope}

    def get(self, sandbox_id: str) -> Entry | None:
        with self._locked() as entries:
            return entries.get(self._key(sandbox_id))

    def remove(self, sandbox_id: str) -> Entry | None:
        with self._locked() as entries:
            return entries.pop(self._key(sandbox_id), None)

    def find(self, labels: Mapping[str, str] | None = None, now: float | None = None) -> tuple[list[Entry], list[Entry]]:
        """(live entries carrying ``labels``, expired entries removed from the registry)."""
        now = time.time() if now is None else now
        wanted = dict(labels or {})
        live, expired = [], []
        with self._locked() as entries:
            for key, entry in list(entries.items()):
                if entry.get("scope") != self.scope:
                    continue
                if entry.get("expires_at") and entry["expires_at"] <= now:
                    expired.append(entries.pop(key))
                elif all(entry.get("labels", {}).get(k) == v for k, v in wanted.items()):
                    live.append(entry)
        return live, expired

    def update(self, sandbox_id: str, change: Callable[[Entry], None]) -> None:
        with self._locked() as entries:
            entry = entries.get(self._key(sandbox_id))
            if entry is not None:
                change(entry)
