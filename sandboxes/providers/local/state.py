"""Where local sandboxes are kept on the host, so other processes can find them.

Each sandbox has a state dir ``<root>/<id>/`` holding ``meta.json`` (labels,
lifetime, the pid of its namespace's init), the agent's socket under ``run/``,
and its log. A sandbox whose init is gone is stale and swept.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

UID_BASE = 1_900_000_000
UID_SLOTS = 1_000_000
UID_REGISTRY = Path("/run/pytest-sandboxes/uids")
UID_MOVE_SECONDS = 60.0


def state_root() -> Path:
    """``$SANDBOXES_LOCAL_STATE_DIR``, else ``$XDG_STATE_HOME/sandboxes/local`` (``~/.local/state`` by default)."""
    environ = os.environ
    return _state_root(environ.get("SANDBOXES_LOCAL_STATE_DIR"), environ.get("XDG_STATE_HOME"), environ.get("HOME"))


@functools.lru_cache(maxsize=8)
def _state_root(configured: str | None, xdg_state_home: str | None, home: str | None) -> Path:
    """Cached by the variables it reads: every operation on a sandbox asks, and building the path cost more than the rest."""
    if configured:
        return Path(configured)
    base = xdg_state_home or os.path.expanduser("~/.local/state")
    return Path(base) / "sandboxes" / "local"


def build_once(root: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """``root/name``, made by ``fill`` into a temporary directory and renamed into place.

    Other processes see it whole or not at all; when two build it at once,
    the first rename wins and the other copy is dropped.
    """
    final = root / name
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    building = Path(tempfile.mkdtemp(dir=root, prefix=f".building-{name}-"))
    try:
        fill(building)
        building.chmod(0o755)
        building.rename(final)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not final.is_dir():
            raise
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final


@dataclass
class SandboxState:
    id: str
    labels: dict[str, str]
    created_at: float
    expires_at: float
    pid: int
    pid_start: str
    isolation: str
    uid: int | None = None
    network: bool = False
    image: str | None = None
    workspace: str = "/workspace"
    extra: dict[str, object] = field(default_factory=dict)

    def save(self, directory: Path, *, unread: bool = False) -> None:
        """Atomic write: readers never see half a file. Once per lease, so its JSON is made
        at once from the fields (``asdict`` deep-copies them, ``json.dump`` writes piece by piece).

        ``unread``: no one reads this record now (an idle sandbox's), so the old one is
        unlinked and the new one takes a free name. Renamed over a file, a file just written
        is written out to disk first on ext4 (``auto_da_alloc``): 0.2 to 0.4 ms a lease."""
        text = json.dumps({name: getattr(self, name) for name in _FIELDS})
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".meta-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        target = directory / "meta.json"
        if unread:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.rename(temporary, target)
        else:
            os.replace(temporary, target)

    @classmethod
    def load(cls, directory: Path) -> SandboxState | None:
        try:
            return cls(**json.loads((directory / "meta.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def alive(self) -> bool:
        return process_start(self.pid) == self.pid_start


_FIELDS = tuple(field.name for field in fields(SandboxState))


def process_start(pid: int) -> str | None:
    """The start time of a process, to tell it from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return fields[19].decode()


def allocate_uid(owner: Path) -> int:
    """A host uid no other live sandbox on this machine uses (root callers only).

    Each sandbox's own uid keeps its process limit its own and stops one
    sandbox from signalling another.
    """
    UID_REGISTRY.mkdir(parents=True, exist_ok=True, mode=0o700)
    for _ in range(1000):
        uid = UID_BASE + random.randrange(UID_SLOTS)
        slot = UID_REGISTRY / str(uid)
        try:
            fd = os.open(slot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            holder = _holder(slot)
            if (holder and Path(holder).is_dir()) or age_of(slot) < UID_MOVE_SECONDS:
                continue  # in use, or its sandbox is being renamed (``reassign_uid`` before the rename)
            slot.unlink(missing_ok=True)  # its sandbox is gone: the slot is free
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(owner))
        return uid
    raise RuntimeError("no free sandbox uid: too many local sandboxes")


def reassign_uid(uid: int | None, owner: Path) -> None:
    """The uid now belongs to the state dir ``owner`` (a recycled sandbox moves there next).

    Written before the rename: a slot this young is never taken for free,
    though its holder dir does not exist yet. A link, not a file: twice per
    lease, a file's write and rename cost 0.26 ms on this disk, a link's 0.02 ms.
    """
    if uid is not None:
        slot = UID_REGISTRY / str(uid)
        temporary = slot.with_name(f".{uid}.moving")
        temporary.unlink(missing_ok=True)  # left by a process that died between these two lines
        os.symlink(owner, temporary)
        os.replace(temporary, slot)


def release_uid(uid: int | None) -> None:
    if uid is not None:
        (UID_REGISTRY / str(uid)).unlink(missing_ok=True)


def remove_state(directory: Path) -> None:
    remove_tree(directory)


def remove_tree(top: Path) -> None:
    """Remove a directory tree, however deep, never following links; errors are ignored.

    Iterative with an explicit stack: a sandbox's workspace 1,200 levels deep
    would make a recursive removal (``shutil.rmtree`` before 3.12) raise
    RecursionError. Directories are entered by descriptor, so a link swapped
    in during the walk is removed, never followed.
    """
    try:
        root_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        try:
            os.unlink(top)
        except OSError:
            pass
        return
    # Each level: its fd, its name in the level above, and the names left to remove.
    stack: list[tuple[int, str | None, Iterator[str]]] = [(root_fd, None, _names(root_fd))]
    while stack:
        fd, name, names = stack[-1]
        child = next((c for c in (_remove_or_open(fd, name) for name in names) if c is not None), None)
        if child is not None:
            stack.append((child[0], child[1], _names(child[0])))
            continue
        stack.pop()
        os.close(fd)
        if stack and name is not None:
            try:
                os.rmdir(name, dir_fd=stack[-1][0])
            except OSError:
                pass
    try:
        os.rmdir(top)
    except OSError:
        pass


def _names(fd: int) -> Iterator[str]:
    try:
        return iter(os.listdir(fd))
    except OSError:
        return iter(())


def _remove_or_open(parent: int, name: str) -> tuple[int, str] | None:
    """Unlink ``name``; when it is a directory, an fd on it (to empty it first) instead."""
    try:
        os.unlink(name, dir_fd=parent)
        return None
    except IsADirectoryError:
        pass
    except OSError:
        return None
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent), name
    except PermissionError:
        try:  # a directory without r or x: its owner may restore them
            os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
            return os.open(name, flags, dir_fd=parent), name
        except OSError:
            return None
    except OSError:
        return None


def age_of(path: Path) -> float:
    """Seconds since the file (a link itself, not what it names) was last changed; NaN (no age, so never older nor younger) when it is gone."""
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return math.nan


def _holder(slot: Path) -> str | None:
    """The state dir a uid slot names: a link once its sandbox was recycled (``reassign_uid``), else the file ``allocate_uid`` wrote."""
    try:
        return os.readlink(slot) if slot.is_symlink() else slot.read_text()
    except OSError:
        return None
