"""The agent that lives inside a local sandbox, as the child of bubblewrap.

It reads its settings (marshal) on stdin, sets the resource limits that all
sandboxed processes inherit, drops to the sandbox's own unprivileged uid for
good (when started as root), then serves requests on a unix socket until the
sandbox is destroyed or its lifetime runs out. When it exits, bubblewrap's
pid 1 exits and the kernel kills every process left in the pid namespace,
daemons included.

Standard library only, and only modules that load fast: it runs on the
system's Python (else the host's), inside the sandbox, from bytecode the
host compiled once (see ``layout.agent_bundle``).
"""

from __future__ import annotations

import _socket as socket  # not `socket` nor `signal`: both import enum, ~6 ms
import _thread  # not `threading` (nor `selectors`): start-up time is creation time
import marshal
import os
import resource
import select
import sys
import time

TYPE_CHECKING = False  # not `typing`: it costs milliseconds, and import time is creation time
if TYPE_CHECKING:  # the type checker reads the modules the agent's own imports below stand for
    import signal
    from typing import Any

    from . import _reset, _warm
    from . import _wire as wire
else:
    import _signal as signal

    import _wire as wire  # the agent runs with its own directory as sys.path[0]

CHUNK = 65536
DRAIN_QUIET_SECONDS = 0.02
OUTBOX_LIMIT = 4 * 1024 * 1024
TIMED_OUT_EXIT_CODE = 124


_LIBC: list[Any] = []
_FUNCTIONS: dict[str, Any] = {}


def _libc_function(name: str) -> Any:
    """``_make_libc_function(name)``, made once."""
    if name not in _FUNCTIONS:
        _FUNCTIONS[name] = _make_libc_function(name)
    return _FUNCTIONS[name]


def _make_libc_function(name: str) -> Any:
    """A libc function returning a C long, through ``_ctypes`` alone (``ctypes`` costs some
    3 ms to import). Its arguments are Python ints (passed as C ``long``) or bytes."""
    import _ctypes

    if not _LIBC:

        class Long(_ctypes._SimpleCData):  # type: ignore[type-arg]  # generic only in typeshed, not at run time
            _type_ = "l"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = Long

        class Libc:
            _handle = _ctypes.dlopen(None)  # type: ignore[arg-type]  # dlopen(NULL): the program itself, libc with it

        _LIBC.extend((Long, Function, Libc()))
    long, function, libc = _LIBC
    call = function((name, libc))
    return lambda *args: call(*(long(a) if isinstance(a, int) else a for a in args))


def _errno() -> int:
    import _ctypes

    return _ctypes.get_errno()


def _prctl(option: int, value: int) -> int:
    return int(_libc_function("prctl")(option, value, 0, 0, 0))


def _undumpable() -> None:
    """PR_SET_DUMPABLE 0: no process of the sandbox may trace the agent or read its
    memory, also where it shares their uid (in a user namespace)."""
    if _prctl(4, 0) != 0 or _prctl(3, 0) != 0:  # PR_SET_DUMPABLE, PR_GET_DUMPABLE
        raise OSError("the agent could not make itself undumpable")


def main() -> None:
    settings = marshal.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # The host made the listening socket, in a directory the sandbox cannot
    # see, and passed it in: nothing inside can replace or reach it. Neither it
    # nor any other descriptor the host passed may reach a command.
    for fd in settings["inherited_fds"]:
        os.set_inheritable(fd, False)
    server = socket.socket(fileno=settings["listen_fd"])
    _undumpable()
    cgroups = Cgroups(settings["cgroup"]) if settings.get("cgroup") else None
    if cgroups is not None:
        cgroups.enter()
    uid = settings.get("uid") if os.getuid() == 0 else None
    if uid is not None:
        os.chown(settings["cwd"], uid, settings["gid"])
    for name, value in settings["limits"].items():
        limit = getattr(resource, name)
        _soft, hard = resource.getrlimit(limit)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))
    if uid is not None:
        # Host root is not root: the agent and everything it runs become the
        # sandbox's own uid, for good (the kernel clears every capability and
        # makes the agent undumpable, so no workload can trace it).
        os.setgroups([])
        os.setgid(settings["gid"])
        os.setuid(uid)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an init gets the signals it handles: a workload's SIGINT must not end it
    agent = Agent(settings["env"], settings["cwd"], own_uid=uid is not None, track_commands=settings["isolation"] == "process", cgroups=cgroups)
    if os.getpid() == 1 or (cgroups is None and _prctl(36, 1) == 0):  # the init, or PR_SET_CHILD_SUBREAPER: orphans become ours
        agent.adopts = True
    agent.deadline = settings["deadline"]
    if settings.get("recyclable"):
        agent.baseline = __import__("_reset").Baseline(_libc_function("syscall"))  # before any workload runs
    ready_fd = settings["ready_fd"]
    if settings.get("workdir"):
        try:  # the default cwd of every command, made as the sandbox's own user
            os.close(_open_dir(settings["workdir"]))
        except OSError as error:
            os.write(ready_fd, f"workdir:{error.strerror}\n".encode())
            os._exit(1)
        agent.cwd = settings["workdir"]
        SAFE_CWD[0] = agent.cwd
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    while True:
        remaining = agent.deadline - time.time()
        if remaining <= 0:
            break
        server.settimeout(min(remaining, 1.0 if agent.adopts else 60.0))
        try:
            fd, _ = server._accept()  # type: ignore[attr-defined]  # the bare accept: we wrap the fd ourselves
        except TimeoutError:
            if agent.adopts:
                agent.reap_adopted()
            continue
        conn = socket.socket(fileno=fd)
        conn.settimeout(None)
        # Read here, in the one thread that accepts, before any later connection
        # (a reset's) is: a connection of a past lease is known as one.
        lease = agent.lease
        try:
            _thread.start_new_thread(agent.serve, (conn, lease))
        except RuntimeError:
            # Every process slot is taken (a fork bomb: the agent shares the
            # workload's uid and so its process limit): answer inline.
            agent.serve(conn, lease)
    agent.shutdown()


class Agent:
    def __init__(self, env: dict[str, str], cwd: str, own_uid: bool, track_commands: bool, cgroups: Cgroups | None = None) -> None:
        self.env = env
        SAFE_CWD[0] = cwd
        self.cgroups = cgroups
        self.cwd = cwd
        self.own_uid = own_uid  # the sandbox has a uid of its own, no other process has it
        self.track_commands = track_commands  # no pid namespace to end them all
        self.spawned: list[int] = []
        # Without a cgroup, the agent is a subreaper: what a command leaves behind
        # (a daemon that left its session) is adopted by it, so a timeout can find it.
        self.adopts = False
        self.running: dict[int, bytes] = {}  # command pid -> its start time (/proc stat field 22)
        self.deadline = 0.0  # the end of the sandbox's lifetime, or of its lease (``lease``)
        self.baseline: _reset.Baseline | None = None  # a recyclable sandbox's state when new
        # Counts the resets: work asked for on a connection of an earlier lease is refused,
        # and ``lease_lock`` makes that check and a command's spawn one step against a reset.
        self.lease = 0
        self.lease_lock = _thread.allocate_lock()
        self.connections: dict[socket.socket, int] = {}  # open ones, by the lease they came in
        self.zygotes: dict[tuple[Any, ...], _warm.Zygote] = {}  # warm Python, by (interpreter, flags, env)

    def reap_adopted(self) -> None:
        """Reap adopted orphans that ended (never a command: its thread waits for it)."""
        with Child._spawning:  # no command is between its spawn and its entry in ``running``
            for pid, parent, state, _ in _processes():
                if parent == os.getpid() and state == b"Z" and pid not in self.running:
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass

    def shutdown(self) -> None:
        """End every process of the sandbox, then the agent."""
        if not self.track_commands or self.own_uid:
            # -1 means every process this agent may signal but itself and init:
            # in our own pid namespace, or with a uid of our own, the sandbox's.
            os.kill(-1, signal.SIGKILL)
        for pid in self.spawned:
            kill_tree(pid)
        os._exit(0)

    def reset(self, deadline: float, own: socket.socket) -> list[str]:
        """End the lease: the sandbox as new, or the residue that stops it (then it is destroyed)."""
        if self.baseline is None:
            return ["this sandbox was not made to be recycled"]
        with self.lease_lock:
            self.lease += 1  # from here, nothing more of the last lease starts
            for conn, lease in self.connections.items():
                if lease < self.lease and conn is not own:  # a request on its way or in flight: it ends now
                    try:
                        conn.shutdown(2)  # SHUT_RDWR
                    except OSError:
                        pass
        keep = {
            zygote.pid: (zygote.listener, zygote.inode, zygote.started_at) for zygote in self.zygotes.values() if zygote.alive and zygote.keep and zygote.clean
        }
        residue: list[str]
        residue, kept = __import__("_reset").reset(self.baseline, _thread.get_native_id(), self.reap_adopted if self.adopts else None, keep)
        self.running.clear()
        # A warm interpreter the lease left as the agent made it serves the next one; the others ended.
        ended = {key: zygote for key, zygote in self.zygotes.items() if zygote.pid not in kept}
        for zygote in ended.values():
            self._zygote_ended(zygote)
        self.zygotes = {key: zygote for key, zygote in self.zygotes.items() if zygote.pid in kept}
        for zygote in self.zygotes.values():
            zygote.forget_runs()
        if not residue:
            self._restart_zygotes_clean(ended)
        self.deadline = deadline  # until leased again: an idle sandbox whose owner is gone ends soon
        return residue

    def check_lease(self, lease: int) -> None:
        if lease != self.lease:
            raise LeaseEnded("this sandbox was destroyed (its lease ended) while the request was on its way")

    def serve(self, conn: socket.socket, lease: int) -> None:
        reader = _Reader(conn)
        with self.lease_lock:
            self.connections[conn] = lease  # from here a reset shuts it
        try:
            self.check_lease(lease)  # a reset that began before it was counted
            parts = []
            kind, payload = reader.next()
            while kind == wire.HEADER_PART:
                parts.append(payload)
                kind, payload = reader.next()
            request = wire.decode_request(b"".join(parts) + payload)
            op = request.pop("op")
            if op in ("exec", "write", "read", "pack"):
                self.check_lease(lease)
            if op == "exec":
                self.execute(conn, reader, lease, **request)
            elif op == "write":
                self.write(conn, reader, **request)
            elif op == "read":
                self.read(conn, **request)
            elif op == "pack":
                self.pack(conn, **request)
            elif op == "reset":
                residue = self.reset(request["deadline"], conn)
                conn.sendall(wire.reply_frame(wire.OK, {"residue": "\n".join(residue)}))
            elif op == "lease":
                self.env, self.deadline = request["env"], request["deadline"]
                conn.sendall(wire.reply_frame(wire.OK, {}))
            elif op == "ping":
                conn.sendall(wire.reply_frame(wire.OK, {"pid": os.getpid()}))
            elif op == "shutdown":
                conn.sendall(wire.reply_frame(wire.OK, {}))
                self.shutdown()
            else:
                raise ValueError(f"unknown operation {op!r}")
        except OSError as error:
            _send_error(conn, error)
        except Exception as error:  # report, never crash the agent
            _send_error(conn, error)
        finally:
            with self.lease_lock:
                self.connections.pop(conn, None)
            conn.close()

    # -- files -------------------------------------------------------------
    def _path(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.cwd, path))

    def write(self, conn: socket.socket, reader: _Reader, paths: list[str]) -> None:
        """Each file's bytes, ended by an EOF frame, in the order of ``paths``; one answer for all."""
        for path in paths:
            self._write_one(reader, path)
        conn.sendall(wire.reply_frame(wire.OK, {}))

    def _write_one(self, reader: _Reader, path: str) -> None:
        target = self._path(path)
        parent = _open_dir(os.path.dirname(target))
        try:
            fd = _checked(_open(os.path.basename(target), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=parent), path)
        finally:
            os.close(parent)
        try:
            os.ftruncate(fd, 0)
            while True:
                kind, payload = reader.next()
                if kind == wire.EOF:
                    break
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def read(self, conn: socket.socket, path: str, limit: int) -> None:
        """Send a regular file to its end, never more than ``limit`` bytes.

        Its size is not trusted (files under /proc say 0, a file may grow):
        past ``limit`` the reply is EFBIG. Anything but a regular file (a FIFO
        that would block, a link to /dev/zero that never ends) is refused.
        """
        fd = _open_regular(self._path(path))
        try:
            sent = 0
            while data := os.read(fd, min(wire.MAX_FRAME, limit + 1 - sent)):
                sent += len(data)
                if sent > limit:
                    raise OSError(errno_EFBIG, f"larger than the limit of {limit} bytes (max_file_bytes)", path)
                conn.sendall(wire.frame(wire.DATA, data))
        finally:
            os.close(fd)
        conn.sendall(wire.reply_frame(wire.OK, {}))

    def pack(self, conn: socket.socket, path: str, limit: int) -> None:
        """Stream a directory tree as a tar archive (regular files, directories, and the
        names of links and special files, which the host skips); at most ``limit`` bytes.

        Walked iteratively with ``lstat`` semantics; each file is opened without
        following links and checked to be regular, so swapping one for a FIFO or a
        link while the walk runs gets it skipped, never blocks or escapes.
        """
        import tarfile  # only when a tree is downloaded: it is slow to import

        target = self._path(path)
        try:
            root = _checked(_open(target, os.O_RDONLY | os.O_DIRECTORY), path)
        except NotADirectoryError:
            raise OSError(20, "Not a directory", path) from None  # ENOTDIR: the host reads it as a file
        out = _FrameWriter(conn, limit)
        pending = [(root, "")]  # directory fds, entered by name only: a swapped-in link is never followed
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # a write-only object of our own, not an IO
                while pending:
                    directory, relative = pending.pop()
                    try:
                        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
                    except OSError:
                        entries = []  # unreadable: left out, as tar would
                    for entry in entries:
                        name = f"{relative}/{entry.name}" if relative else entry.name
                        info = tarfile.TarInfo(name)
                        info.mode = 0o755
                        if entry.is_dir(follow_symlinks=False):
                            info.type = tarfile.DIRTYPE
                            tar.addfile(info)
                            try:
                                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                                pending.append((os.open(entry.name, flags, dir_fd=directory), name))
                            except OSError:
                                pass
                            continue
                        try:
                            fd = _open_regular(entry.name, follow=False, dir_fd=directory)
                        except OSError:
                            info.type = tarfile.SYMTYPE if entry.is_symlink() else tarfile.FIFOTYPE
                            tar.addfile(info)  # named, so the host can say what it skipped
                            continue
                        with open(fd, "rb") as handle:
                            status = os.fstat(fd)
                            info.size, info.mode = status.st_size, status.st_mode & 0o777
                            tar.addfile(info, handle)  # exactly st_size bytes; an error if it shrank
                    os.close(directory)
        finally:
            for directory, _ in pending:
                os.close(directory)
        conn.sendall(out.take() + wire.reply_frame(wire.OK, {}))

    # -- commands ------------------------------------------------------------
    def execute(
        self,
        conn: socket.socket,
        reader: _Reader,
        lease: int,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: bool = False,
        script: str | None = None,
        warm: bool = False,
        shared: str | None = None,
    ) -> None:

        started = time.monotonic()
        full_env = {**self.env, **(env or {})}
        workdir = self._path(cwd) if cwd else self.cwd
        script_fd = None
        if script is not None:
            # A command too long for one argument: give sh the script on fd 3.
            script_fd = os.memfd_create("sandbox-command")
            os.write(script_fd, script.encode())
            os.lseek(script_fd, 0, os.SEEK_SET)
            argv = ["/bin/sh", "/dev/fd/3"]
        cgroups = self.cgroups
        group = cgroups.command() if cgroups is not None else None
        try:
            with self.lease_lock:  # a reset that began meanwhile ends it here, or kills what it starts
                self.check_lease(lease)
                child: Child | _warm.WarmChild | None = None
                if warm and script is None and self.baseline is not None:
                    child = self._warm_start(argv, full_env, workdir, stdin, cgroups, group, shared)
                if child is None:
                    child = Child.spawn(argv, full_env, workdir, stdin, script_fd, cgroups, group, self.running)
        except LeaseEnded:
            if cgroups is not None and group is not None:
                cgroups.done(group)
            raise
        except OSError as error:
            if cgroups is not None and group is not None:
                cgroups.done(group)
            if isinstance(error, (FileNotFoundError, NotADirectoryError)) and not os.path.isdir(workdir):
                message, code = f"sandbox: working directory not found: {cwd}\n", 1
            elif isinstance(error, FileNotFoundError):
                message, code = f"sandbox: command not found: {argv[0]}\n", 127
            elif isinstance(error, BlockingIOError):
                message, code = "sandbox: cannot start the command: every process slot of the sandbox is taken\n", 126
            else:
                message, code = f"sandbox: cannot run {argv[0]}: {error.strerror}\n", 126
            self._drain_stdin(reader, stdin)
            conn.sendall(wire.frame(wire.STDERR, message.encode()))
            conn.sendall(wire.reply_frame(wire.EXIT, {"exit_code": code, "timed_out": False, "duration_ms": _ms(started)}))
            return
        finally:
            if script_fd is not None:
                os.close(script_fd)
        if self.track_commands:
            self.spawned.append(child.pid)
        timed_out, vanished = _pump(child, conn, reader, stdin, timeout, started)
        if timed_out or vanished:
            # The orphans adopted since the command started are its own only without a cgroup to
            # tell: a start time is counted in ticks, and another command's daemon born in the same
            # tick would be taken for this one's (the cgroup's kill below is exact).
            since = self.running.get(child.pid) if self.adopts and cgroups is None else None
            kill_tree(child.pid, adopted_since=since, commands=set(self.running))
            if cgroups is not None and group is not None:
                cgroups.kill(group)  # everything it started: setsid and double-forked daemons too
        code = child.wait()
        self.running.pop(child.pid, None)
        exit_code = TIMED_OUT_EXIT_CODE if timed_out else (128 - code if code < 0 else code)
        oom_killed = False
        if cgroups is not None and group is not None:
            oom_killed = cgroups.finish(group)
        if not vanished:
            try:
                status = {"exit_code": exit_code, "timed_out": timed_out, "duration_ms": _ms(started), "oom_killed": oom_killed, "cpu_ms": child.cpu_ms}
                conn.sendall(wire.reply_frame(wire.EXIT, status))
            except OSError:
                pass

    # -- warm Python ---------------------------------------------------------
    def _zygote(self, key: tuple[Any, ...]) -> _warm.Zygote:
        zygote = self.zygotes.get(key)
        if zygote is None or not zygote.alive:
            if zygote is not None:
                self._zygote_ended(zygote)
            # Clean when no process of the lease lives: none can open its memory while it starts
            # (dumpable), and none can start meanwhile (the caller holds lease_lock until it answers).
            alone = self.baseline is not None and not __import__("_reset").others(self.baseline.me, _living(self.zygotes.values()))
            zygote = self.zygotes[key] = self._start_zygote(key)
            zygote.clean = alone
        return zygote

    def _start_zygote(self, key: tuple[Any, ...]) -> _warm.Zygote:
        executable, flags, env = key
        group = self.cgroups.command() if self.cgroups is not None else None
        try:
            zygote: _warm.Zygote = __import__("_warm").Zygote(_zygote_spawner(self.cgroups, group), executable, flags, dict(env))
        except BaseException:
            if self.cgroups is not None and group is not None:
                self.cgroups.done(group)
            raise
        zygote.group = group
        return zygote

    def _restart_zygotes_clean(self, ended: dict[tuple[Any, ...], _warm.Zygote]) -> None:
        """Start again, now that no process of any lease is left, each zygote the last lease started
        while some of its processes lived.

        Python is dumpable until the zygote makes itself undumpable, after its start: a
        process of the lease could open its memory then, and write into it at leisure.
        Only a zygote started when there was no such process serves later leases.
        """
        for key, zygote in ended.items():
            if zygote.clean or not zygote.keep:
                continue  # ended by the lease (changed, killed), or never to be kept: started again when asked
            try:
                fresh = self._start_zygote(key)
            except OSError:
                continue
            fresh.clean = True
            if fresh.wait_ready() and __import__("_warm").still_clean(fresh.witness):
                fresh.keep = True
                self.zygotes[key] = fresh
            else:
                fresh.end()
                self._zygote_ended(fresh)

    def _zygote_ended(self, zygote: _warm.Zygote) -> None:
        if self.cgroups is not None and zygote.group is not None:
            self.cgroups.done(zygote.group)  # removed once empty

    def _warm_start(
        self, argv: list[str], env: dict[str, str], cwd: str, want_stdin: bool, cgroups: Cgroups | None, group: str | None, shared: str | None
    ) -> _warm.WarmChild | None:
        """The run forked from a zygote of its interpreter, flags and environment; None: start it cold.
        ``shared``: the sha256 of a script that is the same in every run, whose code the zygote may keep."""
        warm = __import__("_warm")
        plan = warm.plan(argv)
        if plan is None:
            return None
        flags, path, args = plan
        os.close(_checked(_open(cwd, os.O_RDONLY | os.O_DIRECTORY), cwd))  # as a cold start checks it
        key = (_which(argv[0], env.get("PATH", ""), cwd), flags, tuple(sorted(env.items())))
        zygote = self._zygote(key)
        stdin_r, stdin_w = os.pipe() if want_stdin else (os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        theirs = [stdin_r, out_w, err_w, *(cgroups.entry_fds(group) if cgroups is not None and group is not None else [])]
        try:
            pid = zygote.fork(argv, path, args, cwd, env, theirs, shared)
        finally:
            for fd in theirs:
                os.close(fd)
        if pid is None:
            for fd in (stdin_w, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            return None
        self.running[pid] = _start_time(pid)
        child: _warm.WarmChild = warm.WarmChild(zygote, pid, stdin_w if want_stdin else None, out_r, err_r)
        return child

    @staticmethod
    def _drain_stdin(reader: _Reader, stdin: bool) -> None:
        while stdin:
            kind, _ = reader.next()
            if kind == wire.EOF:
                break


def _spawn(
    executable: str,
    argv: list[str],
    env: dict[str, str],
    actions: list[tuple[Any, ...]],
    cwd: str,
    cgroups: Cgroups | None,
    group: str | None,
    running: dict[int, bytes] | None = None,
) -> int:
    """posix_spawn in ``cwd``, in its own session, the child born in the cgroup ``group``."""
    procs = -1
    if cgroups is not None and group is not None and cgroups.v2:
        # cgroup v2 keeps a process's threads together: the child moves
        # itself before it runs the command (fd 9 is its cgroup.procs).
        procs = cgroups.procs_fd(group)
        actions = [*actions, (os.POSIX_SPAWN_DUP2, procs, 9)]
        argv = ["/bin/sh", "-c", 'echo 0 >&9 || exit 125; exec 9>&-; exec "$@"', "sh", executable, *argv[1:]]
        executable = "/bin/sh"
    try:
        with Child._spawning:
            if cwd == SAFE_CWD[0] or cwd == "/":
                os.chdir(cwd)  # the sandbox's own workspace (the agent's default, no link in it), or the root
            else:
                directory = _checked(_open(cwd, os.O_RDONLY | os.O_DIRECTORY), cwd)
                try:
                    os.fchdir(directory)
                finally:
                    os.close(directory)
            mover = cgroups if cgroups is not None and group is not None and not cgroups.v2 else None
            try:
                if mover is not None and group is not None:
                    mover.enter_command(group)  # v1: this thread, so the child it spawns
                pid = os.posix_spawn(
                    executable, argv, env, file_actions=actions, setsid=True,
                    setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                )  # fmt: skip
            finally:
                if mover is not None:
                    mover.leave_command()
                os.chdir("/")
            if running is not None:
                running[pid] = _start_time(pid)
    finally:
        if procs >= 0:
            os.close(procs)
    return pid


def _living(zygotes: Any) -> set[int]:
    """The pids of the zygotes that still run as the agent started them: never the pid of one
    that ended, which a process of the lease may have taken since (a red team's find)."""
    warm = __import__("_warm")
    return {zygote.pid for zygote in zygotes if zygote.alive and warm.start_time(zygote.pid) == zygote.started_at}


def _zygote_spawner(cgroups: Cgroups | None, group: str | None) -> Any:
    """How a zygote starts: as a command (own session, default SIGPIPE), in the sandbox's cgroup
    ``group`` (its memory counts as the sandbox's), its channel on fd 3, no stdio."""

    def spawn(argv: list[str], env: dict[str, str], channel: int) -> int:
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
        actions.append((os.POSIX_SPAWN_DUP2, channel, 3))
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in FOREIGN_FDS]
        return _spawn(argv[0], argv, env, actions, "/", cgroups, group)

    return spawn


class LeaseEnded(Exception):
    """A request on a connection of a lease that a reset ended (the host reads it as a gone sandbox)."""


errno_EFBIG = 27  # not `import errno`: every import is start-up time
_S_IFMT, _S_IFREG = 0o170000, 0o100000
# The file systems of descriptors the agent holds for the host (its cgroup
# directories). A link to /proc/self/fd/N resolves, in the agent, to those:
# nothing the agent opens or enters for a request may lie on one of them.
FOREIGN_DEVICES: set[int] = set()
FOREIGN_FDS: list[int] = []  # closed in a command's child before it resolves its program's path
SAFE_CWD: list[str] = [""]  # the agent's own working directory, set at start


RESOLVE_NO_MAGICLINKS = 0x02
ENOSYS = 38
SYS_OPENAT2 = 437  # the same number on every architecture


def _open(path: str, flags: int, mode: int = 0, dir_fd: int | None = None) -> int:
    """``os.open`` through openat2(RESOLVE_NO_MAGICLINKS): a link into /proc/self/fd/N
    (which, resolved by the agent, would lead to its descriptors on the host's
    cgroups, and with ``..`` on to the host's whole tree) is refused with ELOOP.

    A kernel without openat2 (before 5.6) gets plain ``os.open``: the host gives
    the agent no cgroup descriptors there (``provider._openat2_works``), so no
    magic link leads anywhere a plain open should not.
    """
    how = b"".join(v.to_bytes(8, sys.byteorder) for v in (flags | os.O_CLOEXEC, mode, RESOLVE_NO_MAGICLINKS))
    fd = int(_libc_function("syscall")(SYS_OPENAT2, -100 if dir_fd is None else dir_fd, os.fsencode(path), how, len(how)))
    if fd < 0:
        error = _errno()
        if error == ENOSYS and not FOREIGN_FDS:
            return os.open(path, flags | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        raise OSError(error, os.strerror(error), path)
    return fd


def _checked(fd: int, path: str) -> int:
    """``fd`` when it lies inside the sandbox; closed and refused when a /proc magic link led out."""
    if os.fstat(fd).st_dev in FOREIGN_DEVICES:
        os.close(fd)
        raise OSError(13, "Permission denied: the path leads out of the sandbox through /proc", path)  # EACCES
    return fd


def _open_dir(path: str) -> int:
    """An fd on a directory of the sandbox, made with its parents when missing, one checked step at a time."""
    fd = _checked(_open("/", os.O_RDONLY | os.O_DIRECTORY), "/")
    for part in [p for p in path.split("/") if p]:
        try:
            try:
                step = _open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                step = _open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        finally:
            os.close(fd)
        fd = _checked(step, path)
    return fd


def _open_regular(path: str, *, follow: bool = True, dir_fd: int | None = None) -> int:
    """An fd open for reading on a regular file, else OSError (never blocks on a FIFO)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = _checked(_open(path, flags, dir_fd=dir_fd), path)
    try:
        mode = os.fstat(fd).st_mode & _S_IFMT
        if mode != _S_IFREG:
            if mode == 0o040000:
                raise OSError(21, "Is a directory", path)  # EISDIR
            raise OSError(22, "Not a regular file (a device, FIFO or socket): refused", path)  # EINVAL
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


class _FrameWriter:
    """A write-only file over the connection: DATA frames, at most ``limit`` bytes in all."""

    def __init__(self, conn: socket.socket, limit: int) -> None:
        self.conn, self.limit, self.sent = conn, limit, 0
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.sent += len(data)
        if self.sent > self.limit:
            raise OSError(errno_EFBIG, f"the tree is larger than the limit of {self.limit} bytes (max_file_bytes)")
        self.buffer += data
        if len(self.buffer) >= wire.MAX_FRAME:
            self.conn.sendall(self.take())
        return len(data)

    def take(self) -> bytes:
        """The buffered bytes as frames, and an empty buffer."""
        frames = b"".join(wire.chunked(wire.DATA, bytes(self.buffer)))
        self.buffer.clear()
        return frames


class Child:
    """A command started with posix_spawn: a vfork, nothing to import.

    (``subprocess`` would import ``re``, ``enum`` and ``locale``: some 20 ms
    that the first command in every new sandbox would wait for.)
    """

    _spawning = _thread.allocate_lock()  # the agent's cwd is the child's for a moment

    def __init__(self, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None
        self.cpu_ms: float | None = None  # from wait4: the command and every process it waited for

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        want_stdin: bool,
        script_fd: int | None,
        cgroups: Cgroups | None = None,
        group: str | None = None,
        running: dict[int, bytes] | None = None,
    ) -> Child:
        executable = _which(argv[0], env.get("PATH", ""), cwd)
        ours: list[int] = []  # the parent's ends, closed if the spawn fails
        theirs: list[int] = []  # the child's ends, closed once it has them
        try:
            if want_stdin:
                stdin_r, stdin_w = os.pipe()
                ours.append(stdin_w)
                theirs.append(stdin_r)
                actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, stdin_r, 0)]
            else:
                actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            ours += [out_r, err_r]
            theirs += [out_w, err_w]
            actions += [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
            if script_fd is not None:
                actions.append((os.POSIX_SPAWN_DUP2, script_fd, 3))
            # The child resolves the program's path with the agent's descriptors: close the
            # host's first, or a path through /proc/self/fd/N/.. would lead onto the host.
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in FOREIGN_FDS]
            pid = _spawn(executable, argv, env, actions, cwd, cgroups, group, running)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        return cls(pid, stdin_w if want_stdin else None, out_r, err_r)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self._ended(status, usage)
        return self.returncode

    def exit_fd(self) -> int | None:
        """A descriptor, the caller's to close, that is readable once it has ended (a pidfd);
        None where there is none (Linux before 5.3, Python before 3.9): then it is polled."""
        try:
            return os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            return None

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status, usage = os.wait4(self.pid, 0)
                self._ended(status, usage)
            except ChildProcessError:  # reaped already: it was killed
                self.returncode = -9
        return -9 if self.returncode is None else self.returncode

    def _ended(self, status: int, usage: resource.struct_rusage) -> int:
        self.cpu_ms = round((usage.ru_utime + usage.ru_stime) * 1000, 3)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Cgroups:
    """The sandbox's cgroups, reached through directory fds the host opened
    (``cgroups.py`` on the host made them; /sys is not mounted inside).

    The agent lives in an unlimited cgroup of its own; each command gets
    ``work/cmd-N``, under the sandbox's memory and process limits, so the OOM
    killer takes the workload and never the agent, and a timeout kills all
    that the command started, however it detached itself. A command's cgroup
    that its processes left empty serves a later command (``FREE_KEPT`` of
    them): made and removed for each, a memory cgroup cost the kernel some
    0.15 ms, and more in the work it defers. Its OOM count goes on from where
    the last command left it, so each command's is read against that.
    """

    FREE_KEPT = 4

    def __init__(self, spec: dict[str, Any]) -> None:
        self.v2 = spec["version"] == 2
        self.agent_fds: list[int] = spec["agent"]
        self.work_fds: list[int] = spec["work"]
        for fd in self.agent_fds + self.work_fds:
            FOREIGN_DEVICES.add(os.fstat(fd).st_dev)
            FOREIGN_FDS.append(fd)
        self.memory_fd: int = spec["memory"]
        self.count = 0
        self.finished: list[str] = []  # left with processes in them: removed once they are gone
        self.free: list[str] = []  # empty, for the next commands
        self.ooms: dict[str, int] = {}  # a reused cgroup's OOM count when it was last left empty
        self.lock = _thread.allocate_lock()

    def enter(self) -> None:
        """Move the agent (still one thread) into its cgroup. On v1 through ``tasks``:
        moving a thread skips the whole-process lock, whose RCU wait costs some 7 ms."""
        for fd in self.agent_fds:
            _write_at(fd, "cgroup.procs" if self.v2 else "tasks", "0")

    def command(self) -> str:
        """A command's cgroup: an empty one that served an earlier command, else a new one
        (after removing finished ones that are empty by now)."""
        with self.lock:
            if self.free:
                return self.free.pop()
            self.count += 1
            name = f"cmd-{self.count}"
            finished, self.finished = self.finished, []
        for old in finished:
            if not self._remove(old):
                with self.lock:
                    self.finished.append(old)  # background processes still live in it
        for fd in self.work_fds:
            os.mkdir(name, 0o755, dir_fd=fd)
        return name

    def _remove(self, name: str) -> bool:
        removed = True
        for fd in self.work_fds:
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed

    def enter_command(self, name: str) -> None:
        for fd in self.work_fds:
            _write_at(fd, f"{name}/tasks", "0")  # cgroup v1 moves one thread

    def leave_command(self) -> None:
        for fd in self.agent_fds:
            _write_at(fd, "tasks", "0")

    def entry_fds(self, name: str) -> list[int]:
        """Files a process writes "0" to, to enter the command's cgroups itself (a run forked from a zygote)."""
        if self.v2:
            return [self.procs_fd(name)]
        return [os.open(f"{name}/tasks", os.O_WRONLY | os.O_CLOEXEC, dir_fd=fd) for fd in self.work_fds]

    def procs_fd(self, name: str) -> int:
        return os.open(f"{name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self.work_fds[0])

    def kill(self, name: str) -> None:
        if self.v2:
            try:
                _write_at(self.work_fds[0], f"{name}/cgroup.kill", "1")
                return
            except OSError:
                pass  # a kernel before 5.14: kill them one by one
        me = os.getpid()
        for _ in range(100):
            pids = {int(pid) for fd in self.work_fds for pid in _read_at(fd, f"{name}/cgroup.procs").split()} - {me}
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)

    def finish(self, name: str) -> bool:
        """The command in ``name`` is over: whether the OOM killer took one of its processes (since the
        cgroup was handed out); then it is done with, its count read once for both."""
        count = self._ooms(name)
        killed = count > self.ooms.get(name, 0)
        self.done(name, count)
        return killed

    def _ooms(self, name: str) -> int:
        text = _read_at(self.memory_fd, f"{name}/memory.events" if self.v2 else f"{name}/memory.oom_control")
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def done(self, name: str, ooms: int | None = None) -> None:
        """Its processes are over: the cgroup is kept for another command when empty, else removed once
        it is. ``ooms``: its OOM count, when the caller has just read it."""
        try:
            empty = len(self.free) < self.FREE_KEPT and not any(_read_at(fd, f"{name}/cgroup.procs").strip() for fd in self.work_fds)
            if empty and ooms is None:
                ooms = self._ooms(name)
        except OSError:
            empty = False
        with self.lock:
            if empty and ooms is not None and len(self.free) < self.FREE_KEPT:
                self.ooms[name] = ooms
                self.free.append(name)
                return
            self.ooms.pop(name, None)
        if not self._remove(name):
            with self.lock:
                self.finished.append(name)


def _write_at(directory: int, path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read_at(directory: int, path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        return ""
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _which(name: str, path: str, cwd: str) -> str:
    """Resolve a command on the command's own PATH (posix_spawnp would use the agent's)."""
    if "/" in name:
        return os.path.join(cwd, name)
    for directory in path.split(":"):
        candidate = os.path.join(cwd, directory or ".", name)
        try:  # never through a /proc magic link: that would probe the host's files
            fd = _checked(_open(candidate, os.O_PATH), candidate)
        except OSError:
            continue
        try:
            if os.access(f"/proc/self/fd/{fd}", os.X_OK) and not os.path.isdir(f"/proc/self/fd/{fd}"):
                return candidate
        finally:
            os.close(fd)
    raise FileNotFoundError(2, "command not found", name)


_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


def _pump(child: Child | _warm.WarmChild, conn: socket.socket, reader: _Reader, want_stdin: bool, timeout: float | None, started: float) -> tuple[bool, bool]:
    """Move bytes between the command and the socket until the command ends.

    Returns (timed_out, client_vanished). Never blocks on one side while the
    other has data: the client may be sending stdin while output piles up.
    After the command exits, output is drained until it goes quiet; pipes
    still held by background children are handed to a thread that discards
    their output, so those children live on.
    """
    poller = select.poll()
    outputs = {child.stdout: wire.STDOUT, child.stderr: wire.STDERR}
    for fd in outputs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    client = conn.fileno()
    conn.setblocking(False)
    poller.register(client, select.POLLIN)
    pending_stdin = bytearray()
    stdin_fd = child.stdin
    stdin_eof = False
    stdin_polled = False
    if stdin_fd is not None:
        os.set_blocking(stdin_fd, False)
    deadline = None if timeout is None else started + timeout
    exited_at = None
    outbox = bytearray()
    paused = False
    exit_fd = child.exit_fd()  # wakes the poll when it ends: no sleeping to find out
    watching = exit_fd is not None
    if exit_fd is not None:
        poller.register(exit_fd, select.POLLIN)

    def take(frames: list[tuple[bytes, bytes]]) -> None:
        nonlocal stdin_eof, stdin_polled
        for kind, payload in frames:
            if kind == wire.STDIN:
                pending_stdin.extend(payload)
            elif kind == wire.EOF:
                stdin_eof = True
        if stdin_fd is not None and (pending_stdin or stdin_eof) and not stdin_polled:
            poller.register(stdin_fd, select.POLLOUT)
            stdin_polled = True

    take(reader.feed(b""))  # frames that arrived together with the request
    try:
        while outputs:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True, False
            if exited_at is None and child.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_QUIET_SECONDS and not outbox:
                break
            wait = 0.05 if exited_at is None else DRAIN_QUIET_SECONDS
            if deadline is not None:
                wait = min(wait, max(deadline - now, 0))
            for fd, events in poller.poll(wait * 1000):
                if fd == exit_fd:
                    poller.unregister(exit_fd)  # it stays readable; the loop asks the child
                    watching = False
                elif fd == client:
                    if events & select.POLLOUT and outbox:
                        try:
                            del outbox[: conn.send(outbox)]
                        except BlockingIOError:
                            pass
                    if events & _READABLE:
                        try:
                            data = conn.recv(CHUNK * 4)
                        except BlockingIOError:
                            continue
                        if not data:
                            return False, True  # the client went away: stop the command
                        take(reader.feed(data))
                elif fd == stdin_fd:
                    written = 0
                    try:
                        if pending_stdin:
                            written = os.write(stdin_fd, pending_stdin[:CHUNK])
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        pending_stdin.clear()
                        stdin_eof = True
                    del pending_stdin[:written]
                    if not pending_stdin:
                        poller.unregister(stdin_fd)
                        stdin_polled = False
                        if stdin_eof:
                            os.close(stdin_fd)
                            stdin_fd = child.stdin = None
                elif fd in outputs:
                    try:
                        data = os.read(fd, CHUNK)
                    except BlockingIOError:
                        continue
                    if data:
                        if exited_at is not None:
                            exited_at = time.monotonic()
                        for piece in wire.chunked(outputs[fd], data):
                            outbox += piece
                    else:
                        poller.unregister(fd)
                        del outputs[fd]
                        os.close(fd)
            # Back-pressure: stop reading output while the client is behind.
            should_pause = len(outbox) > OUTBOX_LIMIT
            if should_pause != paused:
                paused = should_pause
                for fd in outputs:
                    if paused:
                        poller.unregister(fd)
                    else:
                        poller.register(fd, select.POLLIN)
            if outbox:
                try:
                    del outbox[: conn.send(outbox)]
                except BlockingIOError:
                    pass
            poller.modify(client, select.POLLIN | (select.POLLOUT if outbox else 0))
        # Its pipes are closed but it may still run (`exec >&-`): wait within the deadline.
        pause = 0.001
        while exited_at is None and child.poll() is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True, False
            if watching:
                pause = 0.05  # woken by its end
            for fd, events in poller.poll(1000 * (pause if deadline is None else min(pause, deadline - now))):
                if fd == exit_fd:
                    poller.unregister(exit_fd)
                    watching = False
                elif fd == client and events & _READABLE:
                    try:
                        data = conn.recv(CHUNK * 4)
                    except BlockingIOError:
                        continue
                    if not data:
                        return False, True
                    take(reader.feed(data))
            pause = min(pause * 2, 0.05)
        return False, False
    except (BrokenPipeError, ConnectionResetError):
        outbox.clear()
        return False, True
    finally:
        conn.setblocking(True)
        if outbox:  # whole frames only: the exit frame follows
            try:
                conn.sendall(outbox)
            except OSError:
                pass
        if child.stdin is not None:
            os.close(child.stdin)
            child.stdin = None
        if exit_fd is not None:
            os.close(exit_fd)
        if outputs:
            try:
                _thread.start_new_thread(_discard, (list(outputs),))
            except RuntimeError:  # every process slot is taken (a fork bomb): let them have SIGPIPE
                for fd in outputs:
                    os.close(fd)


def _discard(fds: list[int]) -> None:
    """Read and drop what background children still write to a finished command's pipes."""
    poller = select.poll()
    for fd in fds:
        os.set_blocking(fd, True)
        poller.register(fd, select.POLLIN)
    open_fds = set(fds)
    while open_fds:
        for fd, _ in poller.poll():
            if not os.read(fd, CHUNK):
                poller.unregister(fd)
                open_fds.discard(fd)
                os.close(fd)


def kill_tree(pid: int, *, adopted_since: bytes | None = None, commands: set[int] | frozenset[int] = frozenset()) -> None:
    """SIGKILL a command's whole process tree: descendants, its group and session, and,
    where the agent is a subreaper (no cgroup), the orphans it adopted since the command
    started that are no command's own, with their trees (a daemon that left the session)."""
    for _ in range(20):
        victims = _tree(pid, adopted_since, commands)
        if not victims:
            return
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _processes() -> list[tuple[int, int, bytes, list[bytes]]]:
    """(pid, ppid, state, the stat fields after the command name) of every process we can see."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        found.append((int(entry), int(fields[1]), fields[0], fields))
    return found


def _start_time(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        return stat[stat.rindex(b")") + 2 :].split()[19]
    except OSError:
        return b""


def _tree(root: int, adopted_since: bytes | None = None, commands: set[int] | frozenset[int] = frozenset()) -> set[int]:
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    me = os.getpid()
    stack = [root]
    for pid, ppid, state, fields in _processes():
        if state == b"Z" or pid == me:
            continue
        children.setdefault(ppid, []).append(pid)
        if int(fields[3]) == root or int(fields[2]) == root:  # its session or its group
            found.add(pid)
        if adopted_since and ppid == me and pid not in commands and int(fields[19]) >= int(adopted_since):
            stack.append(pid)
            found.add(pid)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    try:
        with open(f"/proc/{root}/stat", "rb") as handle:
            if handle.read().split(b") ")[1][:1] != b"Z":
                found.add(root)
    except OSError:
        pass
    found.discard(me)
    return found


class _Reader:
    """Blocking frame reader over the connection (before a command's pump starts)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.parser = wire.FrameParser()
        self.frames: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        frames = self.frames + self.parser.feed(data)
        self.frames = []
        return frames

    def next(self) -> tuple[bytes, bytes]:
        while not self.frames:
            data = self.conn.recv(CHUNK * 4)
            if not data:
                raise ConnectionError("client closed the connection")
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)


def _send_error(conn: socket.socket, error: BaseException) -> None:
    reply: dict[str, str | int | None] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, OSError) and error.errno is not None:
        # The sandbox's own files said no: the caller's error, never the provider's.
        reply.update(errno=error.errno, message=error.strerror or str(error), filename=error.filename)
    try:
        conn.setblocking(True)
        conn.sendall(wire.reply_frame(wire.ERROR, reply))
    except OSError:
        pass


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


if __name__ == "__main__":
    main()
