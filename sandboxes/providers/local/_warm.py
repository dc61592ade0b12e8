"""Warm Python in the agent: zygotes (``_zygote.py``) and the runs forked from them.

A run asked for warm (``python3 [flags] main.py [args]``) is forked from a
zygote started with the same interpreter, flags and environment, so it skips
the interpreter's start-up. Anything else about the run (stdio pipes, its
cgroup, timeouts, CPU time) is the agent's as for any command: a ``WarmChild``
looks like ``agent.Child`` to the pump. A zygote that dies, or a run it
cannot start, falls back to a plain start; nothing is ever half-warm.

Standard library only (``_socket``, ``_thread``, ``marshal``): this module is
part of the agent bundle.
"""

from __future__ import annotations

import _socket as socket
import _thread
import marshal
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_zygote.py")
START_SECONDS = 30.0  # a zygote's own start (site, .pth hooks) on a slow machine
# Interpreter options that may come before the program's path; anything else (-c, -m, -i, -) starts cold.
FLAGS = {"-s", "-E", "-I", "-B", "-u", "-O", "-OO", "-b", "-bb", "-q", "-P"}
COLD_ONLY = {"-S"}  # asks a cold start to skip site (the judge's harness sets it up lazily); a zygote set it up once
FLAGS_WITH_VALUE = {"-X", "-W"}
# Variables through which a zygote's start could read what a lease wrote (a path into the
# sandbox's writable mounts, or to a process's descriptor): such a zygote ends with its lease.
LEASE_REACHABLE_ENV = (
    *("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "PYTHONPLATLIBDIR", "PYTHONPYCACHEPREFIX"),
    *("LD_", "GCONV_PATH", "LOCPATH"),
    "OPENSSL_",  # the zygote never loads OpenSSL (its SHA-256 is Python's own): should anything in it ever do
)


def start_witness(executable: str, flags: tuple[str, ...], env: dict[str, str]) -> tuple[str, int] | None:
    """What must stay as it is while a zygote starts for it to serve later leases (``still_clean``); None: it never may.

    A reset keeps a zygote for the next lease only if nothing the lease wrote
    could have run in it: its interpreter is on a read-only mount, its command
    line (which anyone can read) carries no free words, no variable points its
    start elsewhere, and the user site (``$HOME/.local``, whose ``.pth`` files
    Python runs at start) did not exist from before it started until it first
    answered (``$HOME`` unchanged: its ctime, which no process can set back).
    """
    if any(flag in FLAGS_WITH_VALUE for flag in flags) or any(name.startswith(LEASE_REACHABLE_ENV) for name in env):
        return None
    # The interpreter, and where it was found: Python looks for a pyvenv.cfg (a venv's site-packages)
    # beside the path it was started by, a link's too, and in that directory's parent.
    places = (os.path.realpath(executable), os.path.dirname(executable), os.path.dirname(os.path.dirname(executable)))
    try:
        if not all(os.statvfs(place).f_flag & os.ST_RDONLY for place in places):
            return None
    except OSError:  # not a file (a descriptor's memfd, say)
        return None
    if "-s" in flags or "-I" in flags or env.get("PYTHONNOUSERSITE"):
        return ("", 0)
    return _home_state(env.get("HOME", ""))


def still_clean(witness: tuple[str, int]) -> bool:
    """The zygote has started and ``witness`` holds still: nothing of a lease's ran at its start."""
    return not witness[0] or _home_state(witness[0]) == witness


def _home_state(home: str) -> tuple[str, int] | None:
    try:
        if not home.startswith("/") or os.path.lexists(os.path.join(home, ".local")):
            return None
        return (home, os.stat(home).st_ctime_ns)
    except OSError:
        return None


def plan(argv: list[str]) -> tuple[tuple[str, ...], str, list[str]] | None:
    """(flags, path, args) of ``python3 [flags] path [args]``, or None when it is anything else."""
    flags: list[str] = []
    index = 1
    while index < len(argv) and argv[index].startswith("-"):
        flag = argv[index]
        if flag in FLAGS:
            flags.append(flag)
            index += 1
        elif flag in COLD_ONLY:
            index += 1
        elif flag in FLAGS_WITH_VALUE and index + 1 < len(argv):
            flags += [flag, argv[index + 1]]
            index += 2
        else:
            return None
    if index >= len(argv):
        return None
    return tuple(flags), argv[index], argv[index + 1 :]


class Zygote:
    """One warm interpreter: started once, forked per run, reaped by itself, heard through a socket."""

    def __init__(self, spawn: Any, executable: str, flags: tuple[str, ...], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.witness = start_witness(executable, flags, env)
        self.keep: bool | None = None if self.witness is not None else False  # past its lease: decided at its first answer
        self.clean = False  # started with no process of a lease alive (at a reset): only such a zygote outlives a lease
        self.group: str | None = None  # its cgroup (the agent's to name and remove)
        self.ready = _thread.allocate_lock()  # released once it is undumpable and serving
        self.ready.acquire()
        try:
            self.inode = str(os.fstat(theirs.fileno()).st_ino)  # its end, in /proc/net/unix: not a lease's socket
            self.pid = spawn([executable, *flags, ZYGOTE, "3"], env, theirs.fileno())
        finally:
            theirs.close()
        self.started_at = start_time(self.pid)  # tells it from a process that later takes its pid
        self.channel = ours
        self.lock = _thread.allocate_lock()  # one request on the wire at a time
        self.state = _thread.allocate_lock()  # guards the tables below
        self.tokens = 0
        self.started: dict[int, list[Any]] = {}  # token -> [a lock released on the answer, the pid]
        self.ended: dict[int, tuple[int, float]] = {}  # pid -> (wait status, cpu ms)
        self.watchers: dict[int, int] = {}  # pid -> the write end of a pipe closed when that run ends
        self.alive = True
        self.listener = 0  # the native id of the agent's thread that listens to it
        listening = _thread.allocate_lock()
        listening.acquire()
        _thread.start_new_thread(self._listen, (listening,))
        listening.acquire()

    def wait_ready(self, seconds: float = START_SECONDS / 3) -> bool:
        """Whether it said it is undumpable and serving within ``seconds``."""
        return bool(self.ready.acquire(timeout=seconds)) and self.alive

    def end(self) -> None:
        try:
            os.kill(self.pid, 9)  # its listener reaps it
        except OSError:
            pass

    def forget_runs(self) -> None:
        """A reset ended its runs: what it said of them is of no use now."""
        with self.state:
            self.ended.clear()
            self._close_watchers()

    def _listen(self, listening: Any) -> None:
        """Route the zygote's lines: a run's start to its requester, a run's end to its waiter."""
        self.listener = _thread.get_native_id()
        listening.release()
        while True:
            try:
                line = self.channel.recv(256)
            except OSError:
                line = b""
            if not line:
                break
            words = line.split()
            try:
                if words[0] == b"ready":
                    if not self.ready.locked():
                        break  # said twice: not what a zygote says
                    self.ready.release()
                elif words[0] == b"started":
                    with self.state:
                        waiter = self.started.get(int(words[1]))
                    if waiter is not None:
                        waiter[1] = int(words[2])
                        waiter[0].release()
                elif words[0] == b"ended":
                    with self.state:
                        self.ended[int(words[1])] = (int(words[2]), float(words[3]))
                        watcher = self.watchers.pop(int(words[1]), None)
                    if watcher is not None:
                        os.close(watcher)
            except (IndexError, ValueError):
                break  # not what a zygote says: it is not trusted further
        with self.state:
            self.alive = False
            for waiter in self.started.values():
                if waiter[0].locked():
                    waiter[0].release()
            if self.ready.locked():
                self.ready.release()  # whoever waits for it hears that it is gone
            self._close_watchers()
        self.channel.close()
        try:
            os.kill(self.pid, 9)  # it said something a zygote does not, or it is ending: it ends
            os.waitpid(self.pid, 0)  # the agent's child: reaped here, never left a zombie
        except OSError:
            pass

    def fork(self, argv: list[str], path: str, args: list[str], cwd: str, env: dict[str, str], fds: list[int], shared: str | None = None) -> int | None:
        """A run's pid, or None when this zygote cannot start it (then it starts cold). ``shared``: the
        sha256 of a script that is the same in every run, whose compiled code the zygote may keep."""
        with self.state:
            if not self.alive:
                return None
            self.tokens += 1
            token = self.tokens
            waiter: list[Any] = [_thread.allocate_lock(), None]
            waiter[0].acquire()
            self.started[token] = waiter
        request = marshal.dumps({"token": token, "orig_argv": argv, "path": path, "args": args, "cwd": cwd, "env": env, "shared": shared})
        rights = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        try:
            with self.lock:
                self.channel.sendmsg([request], [(socket.SOL_SOCKET, 1, rights)])  # SCM_RIGHTS
            waiter[0].acquire(timeout=START_SECONDS)
        except OSError:
            return None
        finally:
            with self.state:
                self.started.pop(token, None)
        pid: int | None = waiter[1]
        if pid is not None and self.keep is None and self.witness is not None:
            self.keep = still_clean(self.witness)
        return pid

    def watch(self, pid: int) -> int:
        """A descriptor that reads as ended (EOF) once the run ``pid`` has ended, or the zygote has."""
        readable, writable = os.pipe()
        with self.state:
            if pid in self.ended or not self.alive:
                os.close(writable)
            else:
                old = self.watchers.pop(pid, None)
                if old is not None:
                    os.close(old)
                self.watchers[pid] = writable
        return readable

    def _close_watchers(self) -> None:
        """(Under ``state``.)"""
        for fd in self.watchers.values():
            os.close(fd)
        self.watchers.clear()

    def exit_of(self, pid: int) -> tuple[int, float] | None:
        """(wait status, cpu ms) once the run ended; (SIGKILL's, None) when the zygote is gone."""
        with self.state:
            ended = self.ended.pop(pid, None)
            if ended is None and not self.alive:
                return (9, -1.0)
        return ended


def start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


class WarmChild:
    """A run forked from a zygote, seen by the pump as an ``agent.Child``."""

    def __init__(self, zygote: Zygote, pid: int, stdin: int | None, stdout: int, stderr: int) -> None:
        self.zygote = zygote
        self.pid, self.stdin, self.stdout, self.stderr = pid, stdin, stdout, stderr
        self.returncode: int | None = None
        self.cpu_ms: float | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            ended = self.zygote.exit_of(self.pid)
            if ended is not None:
                status, cpu_ms = ended
                self.returncode = os.waitstatus_to_exitcode(status)
                self.cpu_ms = cpu_ms if cpu_ms >= 0 else None
        return self.returncode

    def exit_fd(self) -> int | None:
        """A descriptor, the caller's to close, that is readable once the run has ended (``agent.Child``'s)."""
        return self.zygote.watch(self.pid)

    def wait(self) -> int:
        deadline = time.monotonic() + START_SECONDS
        while self.poll() is None:
            if time.monotonic() > deadline:  # a zygote that no longer reports (stopped): it serves no more runs
                self.zygote.alive = False
                self.returncode = -9
                break
            time.sleep(0.001)
        assert self.returncode is not None
        return self.returncode
