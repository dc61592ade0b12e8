"""The curated /etc a local sandbox sees: a snapshot of a few host entries.

Binding some thirty /etc entries one by one cost bubblewrap about as long as
all its other work put together (each read-only bind re-reads the mount
table). Instead, the entries are copied once into one directory that is
bound as /etc, and copied again whenever the host changes them: a change is
seen through the modification times of the entries and of every directory
below them, which takes some forty ``stat`` calls per sandbox.

Only world-readable files are copied: what a sandboxed program may read of
/etc is what any user of the host may read. Nested symbolic links are kept
as links (they point into /usr, which the sandbox sees); a top-level link,
such as /etc/resolv.conf on systemd hosts, is copied as its target.
"""

import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

from .state import build_once

ETC_ENTRIES = (
    "alternatives", "ca-certificates", "ca-certificates.conf", "ssl", "pki", "hosts", "host.conf",
    "resolv.conf", "nsswitch.conf", "gai.conf", "localtime", "timezone", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "mime.types", "os-release", "debian_version", "protocols", "services", "profile",
    "bash.bashrc", "inputrc", "java-17-openjdk", "java-21-openjdk", "ruby", "gemrc", "npmrc", "magic",
    "python3", "python3.11",
)  # fmt: skip
PER_SANDBOX = ("passwd", "group")  # bound over the snapshot, one pair per sandbox
STALE_SECONDS = 24 * 3600

_watched: dict[tuple[Path, str], tuple[Path, tuple[str, ...]]] = {}  # -> the snapshot, the paths it depends on


def etc_snapshot(root: Path, host_etc: str = "/etc") -> Path:
    """The snapshot of the host's curated /etc under ``root``, made or refreshed as needed."""
    known = _watched.get((root, host_etc))
    if known is not None:
        snapshot, watched = known
        if snapshot.name == _name(watched) and snapshot.is_dir():
            return snapshot
    watched = _watch_list(host_etc)
    snapshot = build_once(root, _name(watched), lambda building: _fill(building, host_etc))
    _remove_stale(root, keep=snapshot)
    _watched[(root, host_etc)] = (snapshot, watched)
    return snapshot


def _watch_list(host_etc: str) -> tuple[str, ...]:
    paths = []
    for name in ETC_ENTRIES:
        top = os.path.join(host_etc, name)
        if not os.path.lexists(top):
            continue
        paths.append(top)
        if os.path.isdir(top):
            for directory, _, _ in os.walk(top, onerror=lambda error: None):
                paths.append(directory)
    return tuple(paths)


def _name(watched: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for path in watched:
        try:
            info = os.stat(path)
            digest.update(f"{path}\0{info.st_ino}\0{info.st_mtime_ns}\0{info.st_size}\0".encode())
        except OSError:
            digest.update(f"{path}\0gone\0".encode())
    return ".etc-" + digest.hexdigest()[:16]


def _fill(building: Path, host_etc: str) -> None:
    for name in ETC_ENTRIES:
        source = os.path.join(host_etc, name)
        if os.path.exists(source):
            _copy(source, str(building / name), top=True)
    for name in PER_SANDBOX:
        (building / name).touch(mode=0o644)  # mount points


def _copy(source: str, target: str, top: bool = False) -> None:
    try:
        info = os.stat(source) if top else os.lstat(source)
    except OSError:
        return
    if stat.S_ISLNK(info.st_mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISDIR(info.st_mode):
        if not info.st_mode & stat.S_IROTH or not info.st_mode & stat.S_IXOTH:
            return  # such as /etc/ssl/private
        os.mkdir(target, 0o755)
        for entry in sorted(os.listdir(source)):
            _copy(os.path.join(source, entry), os.path.join(target, entry))
    elif stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IROTH:
        try:
            shutil.copyfile(source, target)
        except OSError:
            return
        os.chmod(target, 0o755 if info.st_mode & stat.S_IXOTH else 0o644)


def _remove_stale(root: Path, keep: Path) -> None:
    """Old snapshots may still be bound by running sandboxes: remove them only after a day."""
    for old in root.glob(".etc-*"):
        try:
            if old != keep and time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
