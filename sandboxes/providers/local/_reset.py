"""Resetting a sandbox for its next lease, in the agent: end, empty, and prove.

A recycled sandbox must be as trustworthy as a new one. ``Baseline`` is taken
when the agent starts, before any workload runs; ``reset`` ends every process
of the sandbox but the agent, empties the writable mounts, and then compares
what it can see with the baseline. Anything it cannot put back as it was, it
names as residue, and the host destroys the sandbox instead of leasing it
again. Some things are never put back, only detected, because no reset can
undo what they leave (an IPC object's id sequence, a loopback packet counter,
a socket in TIME_WAIT): a lease that used them gets a new sandbox after it.

Loaded by the agent only in a recyclable sandbox; standard library only.
"""

from __future__ import annotations

import os
import resource
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

WRITABLE = ("/workspace", "/tmp", "/dev/shm")
MQUEUE = "/dev/mqueue"
# Not emptied but owned (as an ordinary user) by the sandbox's uid, whose modes and times a lease may set.
MOUNT_POINTS = ("/dev/pts", "/dev/pts/ptmx", MQUEUE)
SYSV_IPC = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")
FLOW_LABELS = "/proc/net/ip6_flowlabel"  # a label lingers after its socket, holding 148 bits of the lease's choosing
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # chattr's flags (+d, +A on tmpfs): the owner may set them
NET_COUNTERS = ("/proc/net/dev", "/proc/net/snmp", "/proc/net/netstat", "/proc/net/snmp6")  # only traffic (or an attempt at it) moves them
SETTLE_SECONDS = 3.0  # for killed processes to be reaped and their threads and sockets to go
RLIMITS = tuple(sorted(name for name in dir(resource) if name.startswith("RLIMIT_")))
IOPRIO_GET = {"x86_64": 252, "aarch64": 31, "riscv64": 31, "ppc64le": 274, "s390x": 283}
SCHED_GETATTR = {"x86_64": 315, "aarch64": 275, "riscv64": 275, "ppc64le": 356, "s390x": 346}
IOPRIO_WHO_PROCESS = 1
SCHED_ATTR_SIZE = 56  # struct sched_attr as of Linux 5.3 (policy, nice, priority, runtime/slice, deadline, period, clamps)


class Baseline:
    """What the agent and the writable places look like in a new sandbox."""

    def __init__(self, syscall: Callable[..., int]) -> None:
        self.syscall = syscall
        self.machine = os.uname().machine
        self.me = os.getpid()
        self.threads = set(_threads())  # the agent's own for good, besides those a request starts
        self.thread = self.attributes(self.me)
        self.limits = {name: resource.getrlimit(getattr(resource, name)) for name in RLIMITS}
        self.roots = {path: _root_state(path) for path in WRITABLE}
        self.mount_points = {path: _owner_and_mode(path) for path in MOUNT_POINTS}
        self.counters = _interface_counters()

    def attributes(self, tid: int) -> tuple[Any, ...]:
        """What a process of the same uid may change in an agent thread, and its children inherit:
        nice, CPUs, I/O priority, and the whole scheduling record (policy, time slice, clamps)."""
        ioprio = self.syscall(IOPRIO_GET[self.machine], IOPRIO_WHO_PROCESS, tid) if self.machine in IOPRIO_GET else None
        return (os.getpriority(os.PRIO_PROCESS, tid), sorted(os.sched_getaffinity(tid)), ioprio, self.sched_attr(tid))

    def intact(self, pid: int, started: str) -> bool:
        """A process the agent started (a warm interpreter) is as it was: the same process (the
        agent's child, started then: not another that took its pid), running, one thread, no
        signal pending but SIGCHLD, and the agent's own limits and scheduling."""
        stat = _read(f"/proc/{pid}/stat")
        status = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in _read(f"/proc/{pid}/status").splitlines() if ":" in line}
        try:
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] not in ("S", "R") or int(fields[1]) != self.me or fields[19] != started or status.get("Threads") != "1":
                return False
            if any(int(status.get(name, "1"), 16) & ~(1 << 16) for name in ("SigPnd", "ShdPnd")):  # SIGCHLD is bit 17
                return False
            limits = {name: resource.prlimit(pid, getattr(resource, name)) for name in RLIMITS}
            return limits == self.limits and self.attributes(pid) == self.thread
        except (OSError, ValueError, IndexError):
            return False

    def sched_attr(self, tid: int) -> bytes | None:
        if self.machine not in SCHED_GETATTR:
            return None
        record = _sched_record()
        if self.syscall(SCHED_GETATTR[self.machine], tid, record, SCHED_ATTR_SIZE, 0) != 0:
            return None
        return bytes(memoryview(record))


def _sched_record() -> Any:
    """A zeroed ``struct sched_attr`` buffer, through ``_ctypes`` alone (as the agent's libc calls)."""
    if not _RECORD:
        import _ctypes

        class Char(_ctypes._SimpleCData):  # type: ignore[type-arg]  # generic only in typeshed
            _type_ = "c"

        class Record(_ctypes.Array):  # type: ignore[type-arg]
            _type_ = Char
            _length_ = SCHED_ATTR_SIZE

        _RECORD.append(Record)
    return _RECORD[0]()


_RECORD: list[Any] = []


def reset(
    baseline: Baseline, own_thread: int, reap: Callable[[], None] | None, keep: dict[int, tuple[int, str, str]] | None = None
) -> tuple[list[str], set[int]]:
    """Leave the sandbox as new; the residue that stops that (empty when clean), and the kept pids.

    ``keep``: the agent's warm interpreters (``_warm``), pid -> (the agent's
    thread that listens to it, the inode of its socket, its start time). Each
    stays only if it is as the agent made it (``Baseline.intact``); any other
    is ended.
    """
    kept = dict(keep or {})
    residue: list[str] = []
    if baseline.machine not in IOPRIO_GET or baseline.machine not in SCHED_GETATTR:
        residue.append(f"cannot read an I/O priority or a scheduling record on {baseline.machine}")
    # The agent refuses every new request of the last lease by now. Its requests
    # still in flight end once their processes do; then whatever they started
    # in their last moments is ended too, and only then is anything emptied.
    _end_processes(baseline.me, reap, kept)
    for pid in [pid for pid, (_, _, started) in kept.items() if not baseline.intact(pid, started)]:  # changed by the lease: it goes
        del kept[pid]
        _kill(pid)
    ours = {*baseline.threads, own_thread, *(thread for thread, _, _ in kept.values())}
    residue += _wait_for(lambda: [f"thread {tid}" for tid in _threads() if tid not in ours], "agent thread")
    _end_processes(baseline.me, reap, kept)
    residue += _wait_for(lambda: others(baseline.me, kept), "process")
    for path in WRITABLE:
        _empty(path)
    for path in (*WRITABLE, *MOUNT_POINTS):
        _touch(path)
    residue += _check_roots(baseline)
    residue += _check_mount_points(baseline)
    residue += _check_agent(baseline)
    residue += [f"a System V IPC object ({line})" for path in SYSV_IPC for line in _table(path)]
    residue += [f"a POSIX message queue ({name})" for name in _listdir(MQUEUE)]
    residue += [f"an IPv6 flow label ({line.split()[0]})" for line in _table(FLOW_LABELS)]
    if _interface_counters() != baseline.counters:
        residue.append("network traffic (its counters and sockets in TIME_WAIT outlive a reset)")
    residue += _wait_for(lambda: _unix_sockets({inode for _, inode, _ in kept.values()}), "unix socket")
    residue += [f"a process started during the reset: {item}" for item in others(baseline.me, kept)[:5]]
    return residue, set(kept)


def _end_processes(me: int, reap: Callable[[], None] | None, kept: dict[int, Any]) -> None:
    """SIGKILL every process but the agent, the namespace's init and ``kept``, until none is left.

    ``kill(-1)`` walks the process list under the lock that ``fork`` takes,
    so a process forking meanwhile cannot slip a child past it; it is repeated
    for the children of forks that were half-way through. With processes to
    keep, each pass kills every other one by pid: a killed process forks no
    more, so what one pass misses (a child forked before its parent died) the
    next one finds.
    """
    deadline = time.monotonic() + SETTLE_SECONDS
    while (victims := _pids(me, kept)) and time.monotonic() < deadline:
        if kept:
            for pid in victims:
                _kill(pid)
        else:
            try:
                os.kill(-1, 9)
            except ProcessLookupError:
                pass
        if reap is not None:
            reap()
        time.sleep(0.001)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def _pids(me: int, kept: dict[int, Any] | set[int] | None = None) -> list[int]:
    return [int(entry) for entry in _listdir("/proc") if entry.isdigit() and int(entry) not in (1, me) and int(entry) not in (kept or {})]


def others(me: int, kept: dict[int, Any] | set[int] | None = None) -> list[str]:
    return [f"pid {pid} ({_read(f'/proc/{pid}/comm').strip() or '?'})" for pid in _pids(me, kept)]


def _threads() -> list[int]:
    return [int(tid) for tid in _listdir("/proc/self/task")]


def _wait_for(left: Callable[[], list[str]], what: str) -> list[str]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while (found := left()) and time.monotonic() < deadline:
        time.sleep(0.002)
    return [f"a {what} that would not end: {item}" for item in found[:5]]


def _empty(top: str) -> None:
    """Remove everything under ``top``, however deep, modes 000 and unsearchable directories too.

    Directories are entered by descriptor and never through a link; no
    process is left to swap one in.
    """
    try:
        root = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    stack: list[tuple[int, str]] = [(root, "")]
    while stack:
        fd, dirname = stack[-1]
        _own(fd)
        entered = False
        for name in _listdir(fd):
            try:
                os.unlink(name, dir_fd=fd)
                continue
            except IsADirectoryError:
                pass
            except OSError:
                continue  # reported by the check that follows
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except PermissionError:  # a directory without r or x: its owner may give them back
                try:
                    os.chmod(name, 0o700, dir_fd=fd)
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue
            except OSError:
                continue
            stack.append((child, name))
            entered = True
            break
        if entered:
            continue
        stack.pop()
        os.close(fd)
        if stack:
            try:
                os.rmdir(dirname, dir_fd=stack[-1][0])
            except OSError:
                pass


def _touch(path: str) -> None:
    """Its times say when it was reset, not when the last lease last wrote there."""
    try:
        os.utime(path)
    except OSError:
        pass


def _own(fd: int) -> None:
    """Give a directory of ours back the write and search bits, so its entries can go."""
    try:
        status = os.fstat(fd)
        if status.st_uid == os.geteuid() and status.st_mode & 0o700 != 0o700:
            os.fchmod(fd, (status.st_mode & 0o7777) | 0o700)
    except OSError:
        pass


def _root_state(path: str) -> tuple[Any, ...]:
    status = os.stat(path, follow_symlinks=False)
    vfs = os.statvfs(path)
    return (status.st_mode, status.st_uid, status.st_gid, vfs.f_blocks - vfs.f_bfree, vfs.f_files - vfs.f_ffree, _xattrs(path), _flags(path))


def _flags(path: str, wanted: int | None = None) -> int | None:
    """The directory's inode flags (``lsattr``), first set to ``wanted``; None where the file system has none."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if wanted is not None:
            try:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, wanted.to_bytes(8, "little"))
            except OSError:
                pass
        try:
            return int.from_bytes(fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8)), "little")
        except OSError:
            return None
    finally:
        os.close(fd)


def _xattrs(path: str) -> list[str]:
    try:
        return sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return []


def _check_roots(baseline: Baseline) -> list[str]:
    residue = []
    for path, wanted in baseline.roots.items():
        mode, uid = wanted[0], wanted[1]
        for name in _xattrs(path):
            if name not in wanted[5]:
                try:
                    os.removexattr(path, name, follow_symlinks=False)
                except OSError:
                    pass
        if wanted[6] is not None:
            _flags(path, wanted[6])
        if uid == os.geteuid():
            try:
                os.chmod(path, mode & 0o7777, follow_symlinks=False)
            except (OSError, NotImplementedError):
                try:
                    os.chmod(path, mode & 0o7777)
                except OSError:
                    pass
        left = _listdir(path)
        if left:
            residue.append(f"files left in {path}: {', '.join(repr(name) for name in left[:5])}")
        now = _wait_until_equal(path, wanted)  # freed pages can lag the unlink
        if now != wanted:
            residue.append(f"{path} is not as new: (mode, uid, gid, blocks used, inodes used, xattrs, flags) {now} != {wanted}")
    return residue


def _owner_and_mode(path: str) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (status.st_uid, status.st_gid, status.st_mode)


def _check_mount_points(baseline: Baseline) -> list[str]:
    """Their modes put back (their times were, by ``_touch``)."""
    residue = []
    for path, wanted in baseline.mount_points.items():
        now = _owner_and_mode(path)
        if now != wanted and now is not None and wanted is not None and now[0] == os.geteuid():
            try:
                os.chmod(path, wanted[2] & 0o7777)
            except OSError:
                pass
            now = _owner_and_mode(path)
        if now != wanted:
            residue.append(f"{path} is not as new: (uid, gid, mode) {now} != {wanted}")
    return residue


def _wait_until_equal(path: str, wanted: tuple[Any, ...]) -> tuple[Any, ...]:
    deadline = time.monotonic() + SETTLE_SECONDS
    while (now := _root_state(path)) != wanted and time.monotonic() < deadline:
        time.sleep(0.002)
    return now


def _check_agent(baseline: Baseline) -> list[str]:
    residue = []
    limits = {name: resource.getrlimit(getattr(resource, name)) for name in RLIMITS}
    for name, value in limits.items():
        if value != baseline.limits[name]:
            residue.append(f"the agent's {name} was changed to {value} (was {baseline.limits[name]})")
    for tid in _threads():
        try:
            now = baseline.attributes(tid)
        except OSError:
            continue  # a thread that just ended
        if now != baseline.thread:
            residue.append(f"agent thread {tid}'s nice value, CPUs, I/O priority or scheduling record (policy, slice, clamps) was changed")
    return residue


def _interface_counters() -> list[str]:
    """The namespace's network counters (interfaces, IP, TCP, UDP, ICMP), which only traffic moves."""
    return [_read(path) for path in NET_COUNTERS]


def _unix_sockets(kept: set[str]) -> list[str]:
    """Unix sockets of this network namespace that are not the agent's own (or its warm interpreters')."""
    own = set(kept)
    for fd in _listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            own.add(target[8:-1])
    return [line for line in _table("/proc/net/unix") if line.split()[6] not in own]


def _table(path: str, header_lines: int = 1) -> list[str]:
    return [line for line in _read(path).splitlines()[header_lines:] if line.strip()]


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _listdir(path: str | int) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
