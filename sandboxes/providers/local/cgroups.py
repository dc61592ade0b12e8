"""Per-sandbox cgroups for the local provider: the host side.

Without cgroups, a local sandbox's memory is limited per process (rlimits):
a workload of many processes, or one that maps shared memory (which escapes
RLIMIT_DATA), or one that fills its tmpfs, gets past them. With a cgroup, the
limits hold for the sandbox as a whole, and a command's cgroup lets its
timeout end everything it started, daemons that ``setsid`` and fork twice
included.

Layout, per hierarchy (cgroup v1: the ``memory`` and the ``pids`` hierarchies;
cgroup v2: the unified one), under a parent this process may write to (see
``find_cgroup_parent``)::

    v1                                    v2
    <parent>/sandboxes-<id>/              <parent>/sandboxes-<id>/    +memory +pids in subtree_control
        (the agent; no limits)                agent/                  (the agent; no limits)
        work/    memory.limit_in_bytes        work/                   memory.max, memory.swap.max=0,
                 memory.memsw.limit_in_bytes                          pids.max; +memory +pids in
                 pids.max                                             subtree_control
            cmd-1/  (made by the agent)           cmd-1/  (made by the agent)

v2 forbids processes in a cgroup that hands controllers to its children,
hence ``agent/`` there; in v1 the agent lives in ``sandboxes-<id>/`` itself.

Why the agent stays outside ``work/``: the OOM killer acts within the cgroup
whose limit was hit, so when the workload exhausts ``work/`` it kills a
process of the workload, never the agent, which then reports what happened
and goes on serving. The same for ``pids.max``: a fork bomb fills ``work/``,
the agent can still make a thread or a process of its own.

What is charged: anonymous memory, shared memory (``MAP_SHARED|MAP_ANONYMOUS``,
SysV shm), page cache, and the pages of the tmpfs mounts the workload writes
(/workspace, /tmp): tmpfs pages are charged to the memory cgroup of the
process that first writes them, and stay charged after it exits, so a
workload cannot park memory in a file. The tmpfs ``size=`` caps still apply.

Who may write what. ``create(owner_uid=...)`` (a root caller, whose sandboxes
run on their own unprivileged uid) gives that uid ``work/`` (to make and
remove ``cmd-N/``) and the files that move processes in, never a limit file:

* v1: ``work/``, ``work/cgroup.procs``, ``work/tasks``, and
  ``sandboxes-<id>/cgroup.procs`` and ``tasks``: the agent may move one of
  its threads into ``work/cmd-N`` (v1 moves single threads through
  ``tasks``), fork the command from that thread (the child starts in the
  thread's cgroups) and move the thread back.
* v2: ``work/``, ``work/cgroup.procs``, and ``sandboxes-<id>/cgroup.procs``:
  v2 moves whole processes, and only for a writer who may write the
  ``cgroup.procs`` of the common ancestor of the source and destination
  cgroups (here ``sandboxes-<id>``); ``agent/cgroup.procs`` stays root's,
  so no process of that uid can move itself out of the limits into
  ``agent/``. A command's process moves itself (writes ``0`` to
  ``cmd-N/cgroup.procs`` between fork and exec).

In v1 the uid can also write ``sandboxes-<id>/tasks``, a cgroup without
limits: only the agent can reach it (through directory descriptors the host
passes, ``open_fds``), since the sandbox mounts no cgroup filesystem and its
processes have no capability to mount one.

Counting OOM kills: v1 counts a kill in the cgroup of the process killed,
not in its ancestors, so ``oom_kills`` sums the ``cmd-N`` still there (read a
command's count before removing its cgroup); v2 counts in ``work/`` for its
whole subtree, removed cgroups included.

Standard library only, and no import of the rest of the package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PREFIX = "sandboxes-"
ENV_PARENT = "SANDBOXES_CGROUP_PARENT"
CONTROLLERS = ("memory", "pids")
CPU = "cpu"  # optional: enforces a sandbox's cpus where the host has it
CPU_PERIOD_US = 100_000
UNIFIED = "unified"
DISABLED = ("off", "none", "no", "false", "0")
KILL_TIMEOUT = 5.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


class CgroupError(OSError):
    """A cgroup could not be made, limited, entered, emptied or removed."""


def cgroup_name(sandbox_id: str) -> str:
    """The cgroup name of a sandbox: ``sandboxes-<id>``."""
    return PREFIX + sandbox_id


# -- discovery ----------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    fstype: str  # "cgroup" (v1) or "cgroup2"
    mountpoint: str
    root: str  # the cgroup at the mount point
    options: frozenset[str]  # super options: a v1 hierarchy's controllers, nsdelegate, ...

    def directory(self, cgroup: str) -> str | None:
        """Where cgroup ``cgroup`` (a path in this hierarchy) is, or None when it is outside this mount."""
        root = self.root.rstrip("/")
        if cgroup != root and not cgroup.startswith(root + "/"):
            return None
        rest = cgroup[len(root) :].strip("/")
        return posixpath.join(self.mountpoint, rest) if rest else self.mountpoint


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _mounts() -> list[_Mount]:
    mounts = []
    try:
        with open("/proc/self/mountinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(" ")
        try:
            dash = fields.index("-")
        except ValueError:
            continue
        fstype = fields[dash + 1]
        if fstype in ("cgroup", "cgroup2") and len(fields) > dash + 3:
            options = frozenset(fields[dash + 3].split(","))
            mounts.append(_Mount(fstype, _unescape(fields[4]), _unescape(fields[3]), options))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup in each hierarchy: by v1 controller, and ``""`` for v2."""
    own: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            own[""] = parts[2]
        for controller in parts[1].split(","):
            if controller:
                own[controller] = parts[2]
    return own


def _mount_of(mounts: list[_Mount], fstype: str, controller: str | None, cgroup: str) -> _Mount | None:
    """The mount of ``fstype`` (and, for v1, holding ``controller``) that shows ``cgroup``."""
    for mount in mounts:
        if mount.fstype == fstype and (controller is None or controller in mount.options) and mount.directory(cgroup) is not None:
            return mount
    return None


def _mount_of_path(path: str) -> _Mount | None:
    best = None
    for mount in _mounts():
        if path.startswith(mount.mountpoint.rstrip("/") + "/") and (best is None or len(mount.mountpoint) > len(best.mountpoint)):
            best = mount
    return best


_PROBES: dict[tuple[str, int], str | None] = {}


def _probe(directory: str) -> str | None:
    """None when this process can make (and remove) a cgroup in ``directory``, else why not; once per process."""
    key = (directory, os.geteuid())
    if key not in _PROBES:
        probe = posixpath.join(directory, f"{PREFIX}probe-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(probe)
        except OSError as error:
            _PROBES[key] = f"cannot make a cgroup in {directory} as uid {os.geteuid()}: {error.strerror}"
        else:
            try:
                os.rmdir(probe)
                _PROBES[key] = None
            except OSError as error:
                _PROBES[key] = f"cannot remove the cgroup {probe} it made: {error.strerror}"
    return _PROBES[key]


@dataclass
class CgroupParent:
    """A cgroup, in each hierarchy used, under which this process may make sandbox cgroups."""

    version: int
    dirs: dict[str, str]  # hierarchy key ("memory", "pids", "memory,pids" co-mounted; "unified") -> directory
    controllers: frozenset[str] = frozenset(CONTROLLERS)  # the controllers limited (discovery: always both)
    cgroups: dict[str, str] = field(default_factory=dict)  # hierarchy key -> cgroup path, to describe it
    origin: str = ""  # where it was found: the variable, or this process's cgroup
    local_events: bool = False  # v2 mounted with memory_localevents: memory.events counts one cgroup only

    def describe(self) -> str:
        """One line: which cgroups limit the sandboxes, e.g. for ``sandboxes providers``."""
        paths = self.cgroups or self.dirs
        places = set(paths.values())
        where = places.pop() if len(places) == 1 else ", ".join(f"{key}:{path}" for key, path in sorted(paths.items()))
        controllers = ", ".join(sorted(self.controllers)) or "no controllers"
        origin = f" ({self.origin})" if self.origin else ""
        return f"cgroup v{self.version} ({controllers}) under {where}{origin}"

    def create(self, name: str, *, memory_bytes: int, pids_max: int, owner_uid: int | None, cpus: float | None = None) -> SandboxCgroup:
        """Make the cgroups of one sandbox: ``name`` holds the agent, ``name/work`` the limits.

        ``owner_uid``: the sandbox's own uid (root callers), given ``work/`` and
        the files that move processes (see the module docstring); None leaves
        everything to the caller's uid.
        """
        _check_name(name)
        if memory_bytes <= 0 or pids_max <= 0:
            raise ValueError("memory_bytes and pids_max must be positive")
        sandbox = self.sandbox(name)
        made: list[str] = []
        try:
            sandbox._build(self.controllers, memory_bytes, pids_max, owner_uid, made, cpus)
        except BaseException:
            if made:  # only what this call made: never a namesake's
                with contextlib.suppress(OSError):
                    SandboxCgroup(self.version, {k: t for k, t in sandbox.tops.items() if t in made}).remove(timeout=1.0)
            raise
        return sandbox

    def sandbox(self, name: str) -> SandboxCgroup:
        """A handle on the (existing or not) cgroup of sandbox ``name`` under this parent."""
        _check_name(name)
        return SandboxCgroup(self.version, {key: posixpath.join(d, name) for key, d in self.dirs.items()}, local_events=self.local_events)


def find_cgroup_parent(configured: str | None = None) -> CgroupParent | None:
    """Where this process may make per-sandbox cgroups, or None (``cgroup_unavailable_reason`` says why).

    ``configured`` (else ``$SANDBOXES_CGROUP_PARENT``): a cgroup path such as
    ``/sandboxes``, the same in each hierarchy used, that an administrator
    delegated to this user (it is used or nothing is: no fallback hides a
    mistake); ``off`` disables cgroups. Without it, this process's own
    cgroup in each hierarchy, when it can make cgroups there (as root it
    can). cgroup v2 when its hierarchy has the memory and pids controllers,
    else the v1 memory and pids hierarchies.

    Checks by making and removing a probe cgroup (once per process and
    directory). On v2 it enables memory and pids in the parent's
    ``cgroup.subtree_control`` when they are not yet: possible only in a
    cgroup without processes (a delegated one), or the root.
    """
    return _discover(configured)[0]


def cgroup_unavailable_reason(configured: str | None = None) -> str | None:
    """Why ``find_cgroup_parent`` finds nothing, or None when it finds a parent."""
    return _discover(configured)[1]


def describe(configured: str | None = None) -> str:
    """One line for ``sandboxes providers``: what limits a local sandbox's memory and processes."""
    parent, reason = _discover(configured)
    if parent is not None:
        return parent.describe()
    return f"no cgroups ({reason}): memory and processes limited per process (rlimits)"


def _discover(configured: str | None) -> tuple[CgroupParent | None, str | None]:
    value = configured or os.environ.get(ENV_PARENT) or None
    origin = f"configured parent {value}" if configured else f"{ENV_PARENT}={value}"
    if value is not None:
        if value.lower() in DISABLED:
            return None, f"disabled by {origin}"
        if not value.startswith("/") or ".." in value.split("/"):
            return None, f"{origin}: expected a cgroup path such as /sandboxes"
        value = posixpath.normpath(value)
    else:
        origin = "this process's cgroup"
    mounts = _mounts()
    own = _own_cgroups()
    reasons: list[str] = []
    unified = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if unified is not None:
        available = _read(posixpath.join(unified.mountpoint, "cgroup.controllers")).split()
        if all(c in available for c in CONTROLLERS):
            parent, reason = _discover_v2(mounts, own, value, origin)
            if parent is not None:
                return parent, None
            reasons.append(reason or "")
        elif not any(m.fstype == "cgroup" for m in mounts):
            missing = ", ".join(c for c in CONTROLLERS if c not in available)
            reasons.append(f"cgroup2 at {unified.mountpoint} has no {missing} controller")
    if any(m.fstype == "cgroup" for m in mounts) and not reasons:
        parent, reason = _discover_v1(mounts, own, value, origin)
        if parent is not None:
            return parent, None
        reasons.append(reason or "")
    if not mounts:
        reasons.append("no cgroup filesystem is mounted")
    return None, "; ".join(reasons)


def _discover_v1(mounts: list[_Mount], own: dict[str, str], value: str | None, origin: str) -> tuple[CgroupParent | None, str | None]:
    missing = [c for c in CONTROLLERS if not any(m.fstype == "cgroup" and c in m.options for m in mounts)]
    if missing:
        return None, f"cgroup v1 has no {' or '.join(missing)} hierarchy mounted (both memory and pids are needed)"
    dirs: dict[str, str] = {}
    cgroups: dict[str, str] = {}
    for controller in CONTROLLERS:
        cgroup = value if value is not None else own.get(controller)
        if cgroup is None:
            return None, f"this process is in no cgroup v1 {controller} hierarchy"
        mount = _mount_of(mounts, "cgroup", controller, cgroup)
        if mount is None:
            return None, f"the {controller} cgroup {cgroup} ({origin}) is not under a mounted {controller} hierarchy"
        directory = mount.directory(cgroup)
        assert directory is not None
        key = ",".join(c for c in CONTROLLERS if c in mount.options)  # "memory,pids" when mounted together
        if key in dirs:
            continue
        if not os.path.isdir(directory):
            return None, f"{directory} ({origin}) does not exist"
        if reason := _probe(directory):
            return None, f"{reason} ({origin})"
        dirs[key] = directory
        cgroups[key] = cgroup
    controllers = set(CONTROLLERS)
    cpu_cgroup = value if value is not None else own.get("cpu")
    cpu_mount = _mount_of(mounts, "cgroup", "cpu", cpu_cgroup) if cpu_cgroup is not None else None
    if cpu_cgroup is not None and cpu_mount is not None and not set(CONTROLLERS) & set(cpu_mount.options):
        directory = cpu_mount.directory(cpu_cgroup)
        if directory is not None and os.path.isdir(directory) and not _probe(directory):
            dirs[CPU], cgroups[CPU] = directory, cpu_cgroup  # optional: where it can be had, cpus is enforced
            controllers.add(CPU)
    return CgroupParent(1, dirs, controllers=frozenset(controllers), cgroups=cgroups, origin=origin), None


def _discover_v2(mounts: list[_Mount], own: dict[str, str], value: str | None, origin: str) -> tuple[CgroupParent | None, str | None]:
    cgroup = value if value is not None else own.get("")
    if cgroup is None:
        return None, "this process is in no cgroup v2"
    mount = _mount_of(mounts, "cgroup2", None, cgroup)
    directory = mount.directory(cgroup) if mount is not None else None
    if mount is None or directory is None:
        return None, f"the cgroup {cgroup} ({origin}) is not under the mounted cgroup2"
    if not os.path.isdir(directory):
        return None, f"{directory} ({origin}) does not exist"
    available = _read(posixpath.join(directory, "cgroup.controllers")).split()
    if not all(c in available for c in CONTROLLERS):
        return None, f"{directory} ({origin}) has no {' and '.join(c for c in CONTROLLERS if c not in available)} controller to give its children"
    if reason := _probe(directory):
        return None, f"{reason} ({origin})"
    enabled = _read(posixpath.join(directory, "cgroup.subtree_control")).split()
    controllers = set(CONTROLLERS) | ({CPU} if CPU in available else set())
    wanted = [c for c in sorted(controllers) if c not in enabled]
    if wanted:
        try:
            _write(posixpath.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        except OSError as error:
            why = " (it holds processes: v2 gives controllers only to the children of a cgroup without any)" if error.errno == errno.EBUSY else ""
            return None, f"cannot enable {', '.join(wanted)} for the children of {directory} ({origin}): {error.strerror}{why}"
    # v2 moves a process only for a writer of the common ancestor's cgroup.procs:
    # from this process's cgroup (where the agent starts) to the sandbox's.
    mine = own.get("")
    if mine is not None and os.geteuid() != 0:
        common = _common_ancestor(mine, cgroup)
        place = mount.directory(common)
        if place is not None and not os.access(posixpath.join(place, "cgroup.procs"), os.W_OK):
            return None, (
                f"cannot move processes from this process's cgroup {mine} into {cgroup} ({origin}): "
                f"cgroup v2 needs write access to {place}/cgroup.procs; run this process inside the delegated cgroup"
            )
    local_events = "memory_localevents" in mount.options
    return CgroupParent(2, {UNIFIED: directory}, controllers=frozenset(controllers), cgroups={UNIFIED: cgroup}, origin=origin, local_events=local_events), None


def _common_ancestor(a: str, b: str) -> str:
    common: list[str] = []
    for x, y in zip(a.strip("/").split("/"), b.strip("/").split("/"), strict=False):
        if x != y:
            break
        common.append(x)
    return "/" + "/".join(common)


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX) or not _NAME.fullmatch(name):
        raise ValueError(f"a sandbox cgroup's name is {PREFIX}<id> of letters, digits, '_', '.', '-', not {name!r}")


# -- one sandbox's cgroups ------------------------------------------------------------


class SandboxCgroup:
    """The cgroups of one sandbox, in each hierarchy: ``<parent>/<name>/`` and what is below it."""

    def __init__(self, version: int, tops: dict[str, str], *, local_events: bool = False) -> None:
        if version not in (1, 2) or not tops:
            raise ValueError("a sandbox cgroup is v1 or v2, in at least one hierarchy")
        names = {posixpath.basename(top) for top in tops.values()}
        if len(names) != 1:
            raise ValueError(f"one sandbox cgroup has one name, not {sorted(names)}")
        self.version = version
        self.tops = dict(tops)  # hierarchy key -> <parent>/<name>
        self.name = names.pop()
        self.local_events = local_events

    def __repr__(self) -> str:
        return f"SandboxCgroup(v{self.version}, {self.tops!r})"

    # -- saving and finding again --------------------------------------------------------
    def paths(self) -> list[str]:
        """What to save to act on these cgroups from another process (``from_paths``)."""
        return [self.tops[key] for key in sorted(self.tops)]

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> SandboxCgroup:
        """The cgroups saved with ``paths()``, in this or another process, whether they still exist or not.

        Each path must be a ``sandboxes-*`` directory below a mounted cgroup
        hierarchy: a damaged state file cannot make ``remove`` kill and
        remove anything else.
        """
        tops: dict[str, str] = {}
        versions = set()
        local_events = False
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
                raise ValueError(f"not an absolute, normalized path: {path!r}")
            _check_name(posixpath.basename(path))
            mount = _mount_of_path(path)
            if mount is None:
                raise ValueError(f"{path} is not below a mounted cgroup hierarchy")
            if mount.fstype == "cgroup2":
                key = UNIFIED
                versions.add(2)
                local_events = "memory_localevents" in mount.options
            else:
                key = ",".join(c for c in CONTROLLERS if c in mount.options) or (CPU if CPU in mount.options else "")
                if not key:
                    raise ValueError(f"{path} is in none of the memory, pids and cpu hierarchies")
                versions.add(1)
            tops[key] = path
        if len(versions) != 1:
            raise ValueError("saved cgroup paths must all be v1 or all v2")
        return cls(versions.pop(), tops, local_events=local_events)

    # -- where things are -------------------------------------------------------------------
    def agent_dir(self, key: str) -> str:
        """The cgroup the agent goes in: the sandbox's own in v1, its ``agent/`` in v2."""
        return posixpath.join(self.tops[key], "agent") if self.version == 2 else self.tops[key]

    def work_dir(self, key: str) -> str:
        """The limited cgroup, parent of the commands' ``cmd-N``."""
        return posixpath.join(self.tops[key], "work")

    def exists(self) -> bool:
        return any(os.path.isdir(top) for top in self.tops.values())

    def open_fds(self) -> dict[str, int]:
        """Directory descriptors for the agent: ``<key>.agent`` and ``<key>.work`` per hierarchy.

        Keys: ``memory.agent``, ``memory.work``, ``pids.agent``, ``pids.work``
        (v1; ``memory,pids.*`` when mounted together) or ``unified.agent``,
        ``unified.work`` (v2). Not inheritable: mark the ones passed on. The
        agent makes and enters a command's cgroup relative to them, e.g.
        ``os.mkdir("cmd-7", dir_fd=fds["pids.work"])``, then
        ``os.open("cmd-7/cgroup.procs", os.O_WRONLY, dir_fd=...)``.
        """
        fds: dict[str, int] = {}
        try:
            for key in sorted(self.tops):
                fds[f"{key}.agent"] = os.open(self.agent_dir(key), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                fds[f"{key}.work"] = os.open(self.work_dir(key), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as error:
            for fd in fds.values():
                os.close(fd)
            raise CgroupError(error.errno, f"cannot open the cgroups of {self.name}: {error.strerror}", error.filename) from error
        return fds

    # -- making ------------------------------------------------------------------------------
    def _build(self, controllers: frozenset[str], memory_bytes: int, pids_max: int, owner_uid: int | None, made: list[str], cpus: float | None = None) -> None:
        for key, top in sorted(self.tops.items()):
            here = set(key.split(",")) if self.version == 1 else set(controllers)
            here &= controllers
            enable = " ".join("+" + c for c in (*CONTROLLERS, CPU) if c in here) if self.version == 2 else ""
            _mkdir(top)
            made.append(top)
            with contextlib.suppress(OSError):
                os.utime(top)  # kernfs keeps times set explicitly: the age sweep_stale sees
            work = self.work_dir(key)
            if enable:
                _write(posixpath.join(top, "cgroup.subtree_control"), enable)
            if self.version == 2:
                _mkdir(self.agent_dir(key))
            _mkdir(work)
            if "memory" in here:
                self._limit_memory(work, memory_bytes)
            if "pids" in here:
                _write(posixpath.join(work, "pids.max"), str(pids_max))
            if CPU in here and cpus is not None:
                quota = max(1000, round(cpus * CPU_PERIOD_US))
                if self.version == 2:
                    _write(posixpath.join(work, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
                else:
                    _write(posixpath.join(work, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                    _write(posixpath.join(work, "cpu.cfs_quota_us"), str(quota))
            if enable:
                _write(posixpath.join(work, "cgroup.subtree_control"), enable)
            if owner_uid is not None:
                movers = ("cgroup.procs",) if self.version == 2 else ("cgroup.procs", "tasks")
                owned = [work, *(posixpath.join(work, f) for f in movers), *(posixpath.join(top, f) for f in movers)]
                for path in owned:
                    try:
                        os.chown(path, owner_uid, -1)
                    except OSError as error:
                        raise CgroupError(error.errno, f"cannot give {path} to uid {owner_uid}: {error.strerror}", path) from error

    def _limit_memory(self, work: str, memory_bytes: int) -> None:
        if self.version == 2:
            _write(posixpath.join(work, "memory.max"), str(memory_bytes))
            if os.path.exists(posixpath.join(work, "memory.swap.max")):
                _write(posixpath.join(work, "memory.swap.max"), "0")
            return
        hierarchy = posixpath.join(work, "memory.use_hierarchy")
        if _read(hierarchy).strip() == "0":  # kernels before 5.16: limits must cover cmd-N
            _write(hierarchy, "1")
        _write(posixpath.join(work, "memory.limit_in_bytes"), str(memory_bytes))
        memsw = posixpath.join(work, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # swap accounting on: memory+swap gets the same limit, so swap cannot dodge it
            _write(memsw, str(memory_bytes))

    # -- processes -------------------------------------------------------------------------------
    def place(self, pid: int) -> None:
        """Move process ``pid`` (all its threads: the agent, or the bubblewrap above it) into the agent's cgroups."""
        for key in sorted(self.tops):
            _write(posixpath.join(self.agent_dir(key), "cgroup.procs"), str(pid))

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in ``work/`` (and the ``cmd-N`` still there for v1)."""
        total = 0
        for key in self.tops:
            if self.version == 2:
                work = self.work_dir(key)
                dirs = _walk_top_down(work) if self.local_events else [work]
                total += sum(_field(posixpath.join(d, "memory.events"), "oom_kill") for d in dirs)
            elif "memory" in key.split(","):
                total += sum(_field(posixpath.join(d, "memory.oom_control"), "oom_kill") for d in _walk_top_down(self.work_dir(key)))
        return total

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process in the sandbox's cgroups, the agent included, and wait until they are out.

        v2: ``cgroup.kill``. v1 (or v2 before Linux 5.14): kill what each
        ``cgroup.procs`` lists, bottom-up, again until all are empty, each
        process through a pidfd opened while it was listed, so a recycled pid
        is never signalled. Raises CgroupError when some remain past ``timeout``.
        """
        left = self._kill(time.monotonic() + timeout)
        if left:
            raise CgroupError(errno.EBUSY, f"processes of {self.name} outlived SIGKILL for {timeout:g} s: {', '.join(left)}")

    def _kill(self, deadline: float) -> list[str]:
        """Kill; the directories still holding processes at ``deadline``."""
        if self.version == 2:
            left = []
            for top in self.tops.values():
                try:
                    _write(posixpath.join(top, "cgroup.kill"), "1")
                except FileNotFoundError:
                    if os.path.isdir(top):  # a kernel without cgroup.kill
                        left += _kill_listed(_walk_bottom_up(top), deadline)
                    continue
                delay = 0.0005
                while _field(posixpath.join(top, "cgroup.events"), "populated") and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                if _field(posixpath.join(top, "cgroup.events"), "populated"):
                    left.append(top)
            return left
        dirs = [d for top in self.tops.values() for d in _walk_bottom_up(top)]
        return _kill_listed(dirs, deadline)

    def remove(self, timeout: float = KILL_TIMEOUT) -> None:
        """Kill everything, then remove every directory bottom-up, ``cmd-N`` included; nothing when already gone."""
        deadline = time.monotonic() + timeout
        self._kill(deadline)
        left = []
        for top in self.tops.values():
            for directory in _walk_bottom_up(top):
                delay = 0.0005
                while True:
                    try:
                        os.rmdir(directory)
                        break
                    except FileNotFoundError:
                        break
                    except OSError as error:
                        if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                            left.append(f"{directory} ({error.strerror})")
                            break
                        time.sleep(delay)  # the killed are still leaving
                        delay = min(delay * 2, 0.05)
        if left:
            raise CgroupError(errno.EBUSY, f"cannot remove the cgroups of {self.name}: {', '.join(left)}")


def sweep_stale(parent: CgroupParent, alive: Callable[[str], bool], *, prefix: str = PREFIX, min_age: float = 60.0) -> list[str]:
    """Remove the sandbox cgroups under ``parent`` whose sandbox is gone; the names removed.

    ``alive(id)`` gets the part of a ``<prefix><id>`` name after the prefix.
    Cgroups younger than ``min_age`` seconds are left alone: their sandbox
    may be being made. When several state directories share a parent, give
    each a prefix of its own (``sandboxes-<tag>-``), or ``alive`` must know
    them all.
    """
    if not prefix.startswith(PREFIX):
        raise ValueError(f"the prefix starts with {PREFIX!r}")
    names: set[str] = set()
    for directory in parent.dirs.values():
        try:
            with os.scandir(directory) as entries:
                names.update(e.name for e in entries if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False) and _NAME.fullmatch(e.name))
        except FileNotFoundError:
            continue
    removed = []
    now = time.time()
    for name in sorted(names):
        if alive(name[len(prefix) :]):
            continue
        sandbox = parent.sandbox(name)
        ages: list[float] = []
        for top in sandbox.tops.values():
            try:
                ages.append(now - os.stat(top).st_mtime)
            except FileNotFoundError:
                continue
        if ages and min(ages) < min_age:
            continue
        try:
            sandbox.remove()
        except CgroupError:
            continue  # processes that outlive SIGKILL (D state): the next sweep
        removed.append(name)
    return removed


# -- helpers --------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        raise CgroupError(error.errno, f"cannot open {path}: {error.strerror}", path) from error
    try:
        os.write(fd, text.encode())
    except OSError as error:
        raise CgroupError(error.errno, f"cannot write {text!r} to {path}: {error.strerror}", path) from error
    finally:
        os.close(fd)


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path)
    except OSError as error:
        raise CgroupError(error.errno, f"cannot make the cgroup {path}: {error.strerror}", path) from error


def _field(path: str, name: str) -> int:
    """The number on the ``name <n>`` line of a flat-keyed cgroup file, 0 when absent."""
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _walk_top_down(top: str) -> list[str]:
    """``top`` and every cgroup below it, each before its children (iterative: no recursion)."""
    order = []
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        order.append(directory)
        stack.extend(children)
    return order


def _walk_bottom_up(top: str) -> list[str]:
    """Every cgroup from ``top`` down, each after its children."""
    return _walk_top_down(top)[::-1]


def _procs(directory: str) -> set[int]:
    return {int(p) for p in _read(posixpath.join(directory, "cgroup.procs")).split() if p.isdigit() and p != "0"}


def _kill_listed(dirs: list[str], deadline: float) -> list[str]:
    """SIGKILL what each directory's cgroup.procs lists until all are empty; those not empty at ``deadline``."""
    me = os.getpid()
    delay = 0.0005
    while True:
        busy = []
        for directory in dirs:
            pids = _procs(directory) - {me}  # never this process, even placed there by mistake
            if pids:
                busy.append(directory)
                _kill_verified(directory, pids)
        if not busy or time.monotonic() >= deadline:
            return busy
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _kill_verified(directory: str, pids: set[int]) -> None:
    """Kill these processes, listed in ``directory``: a pidfd first, then still listed, then the signal."""
    handles: dict[int, int | None] = {}
    try:
        for pid in pids:
            try:
                handles[pid] = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
            except ProcessLookupError:
                continue
            except OSError:  # a kernel before 5.3
                handles[pid] = None
        still = _procs(directory)  # listed after its pidfd opened: that pidfd is this cgroup's process
        for pid, handle in handles.items():
            if pid not in still:
                continue
            try:
                if handle is not None:
                    signal.pidfd_send_signal(handle, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    finally:
        for handle in handles.values():
            if handle is not None:
                os.close(handle)
