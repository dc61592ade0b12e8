"""User-mode networking for networked local sandboxes: slirp4netns.

Why: a networked sandbox used to share the host's network namespace, and with
it everything the host only offers to itself. Untrusted code could connect to
any service listening on the host's loopback (databases, development servers,
debug ports, a Docker or cloud SDK endpoint, the API of another sandbox
manager), connect to the host's abstract unix sockets (they belong to a network
namespace, not to the filesystem, so bubblewrap's mounts do not hide them: X11,
D-Bus, container shims), and bind ports on the host. Now a networked sandbox gets
a network namespace of its own, as an offline one does, and slirp4netns, a
TCP/IP stack in an ordinary host process, relays its traffic. The host's kernel
sees only the sockets slirp4netns opens, as if an ordinary program had opened
them.

What the sandbox sees: the interface ``tap0`` at 10.0.2.100/24 (MTU 65520), a
default route through the gateway 10.0.2.2, a DNS forwarder at 10.0.2.3
(``RESOLV_CONF`` names it), and its own loopback. IPv4 only.

It can reach: any address the host can reach, the internet and the host's
local network included, over TCP and UDP (and ping, where
``net.ipv4.ping_group_range`` lets slirp4netns open ICMP sockets). Its
connections leave from the host, so a host service bound to all interfaces
(0.0.0.0) or to a non-loopback address of the host is reachable at that
address, and the host's firewall sees the connection come from the host
itself. The DNS forwarder relays port 53 (and only port 53) to the first IPv4
nameserver in the host's /etc/resolv.conf, even when that is a resolver on the
host's loopback (systemd-resolved, dnsmasq). Link-local addresses such as the
cloud metadata service 169.254.169.254 are NOT blocked: on a cloud VM, block
them with a firewall rule for slirp4netns's traffic if that matters.

It cannot reach: anything listening only on the host's loopback (127.0.0.0/8),
neither directly (127.0.0.1 is the sandbox's own loopback) nor through the
gateway (``--disable-host-loopback``: without it, 10.0.2.2 leads to the host's
127.0.0.1) nor through 10.0.2.3 on another port than 53; the host's abstract
unix sockets; the host's interfaces, routes and firewall. Nothing outside can
connect in: no port is forwarded and no API socket is opened.

slirp4netns parses packets that untrusted code writes, so a memory-safety bug in
libslirp would run code as its user (root when the caller is root). It is
started with ``--enable-seccomp`` (no execve, ptrace, mount, setns...) and, where
it works, ``--enable-sandbox`` (a mount namespace holding only a read-only /etc
and /run, and every capability dropped but CAP_NET_BIND_SERVICE). slirp4netns
1.2 can only sandbox itself as an ordinary user when the sandbox's user
namespace maps uid and gid 0 (it switches to them), and only when given the
sandbox by pid; the provider's user namespaces map the caller's uid to itself,
so an ordinary user's slirp4netns runs with seccomp alone.

Lifecycle: slirp4netns runs in a session of its own (a Ctrl-C in the caller's
terminal does not reach it), outlives the process that started it, as the
sandbox does, and ends by itself when the last holder of the write end of the
``exit_fd`` pipe is gone: the caller passes that write end into the sandbox, so
slirp4netns ends with the sandbox, whoever destroys it.

Who reaps it: ``attach`` returns the ``Popen`` of slirp4netns itself, a direct
child, so that it can be waited for or killed; this module also keeps it and
reaps the ended ones at every ``attach`` (and on ``reap()``), so a caller that
drops the ``Popen`` leaves at most a zombie until its next networked sandbox,
and never a ResourceWarning. Once the process that started it is gone,
slirp4netns is reparented to init (or the closest subreaper), which reaps it.
A double fork would hand it to init at once, but would leave no handle to wait
for it or to kill it, and no exit status to report.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import ProviderError, ProviderUnavailable

TAP = "tap0"
MTU = 65520
GUEST_ADDRESS = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS_FORWARDER = "10.0.2.3"
RESOLV_CONF = f"nameserver {DNS_FORWARDER}\n"
"""The /etc/resolv.conf of a sandbox networked by slirp4netns: its DNS forwarder."""

TUN = "/dev/net/tun"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Without any of these, slirp4netns cannot give a sandbox networking safely (all since 0.4).
REQUIRED_OPTIONS = ("--configure", "--mtu", "--disable-host-loopback", "--ready-fd", "--exit-fd", "--netns-type", "--userns-path")
MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class _Slirp:
    path: str
    sandbox: bool
    seccomp: bool


_lock = threading.Lock()
_checked: dict[int, tuple[str | None, _Slirp | None]] = {}  # by effective uid
_running: list[subprocess.Popen[bytes]] = []


def user_network_unavailable() -> str | None:
    """None when this process can network a sandbox with slirp4netns, else why not and how to fix it.

    Checked once per effective uid (root may use /dev/net/tun where others may
    not), then cached for the life of the process: it is asked at every
    networked sandbox creation.
    """
    return _check()[0]


def _check() -> tuple[str | None, _Slirp | None]:
    euid = os.geteuid()
    with _lock:
        if euid not in _checked:
            _checked[euid] = _probe()
        return _checked[euid]


def _probe() -> tuple[str | None, _Slirp | None]:
    search = os.pathsep.join(part for part in (os.environ.get("PATH", ""), SYSTEM_PATH) if part)
    path = shutil.which("slirp4netns", path=search)
    if path is None:
        return "slirp4netns is not installed: install it (apt-get install slirp4netns) to give networked local sandboxes a network of their own.", None
    try:
        usage = subprocess.run([path, "--help"], check=False, capture_output=True, text=True, timeout=10, env={}).stdout
        version = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=10, env={}).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"slirp4netns at {path} does not run ({error}): reinstall it (apt-get install --reinstall slirp4netns).", None
    missing = [option for option in REQUIRED_OPTIONS if option not in usage]
    if missing:
        return f"slirp4netns at {path} is too old (it lacks {', '.join(missing)}): install version 0.4 or newer (apt-get install slirp4netns).", None
    try:
        os.close(os.open(TUN, os.O_RDWR | os.O_CLOEXEC))
    except FileNotFoundError:
        return (
            f"{TUN} does not exist and slirp4netns needs it: load the tun module (modprobe tun), "
            f"or pass the device into this container (docker run --device {TUN}).",
            None,
        )
    except OSError as error:
        return (
            f"{TUN} cannot be opened by uid {os.geteuid()} ({error.strerror}) and slirp4netns needs it: "
            f"as root, give it its usual mode (chmod 0666 {TUN}) or allow the device in this container, or run as root."
        ), None
    return None, _Slirp(path=path, sandbox="--enable-sandbox" in usage, seccomp="--enable-seccomp" in usage and "libseccomp" in version)


def attach(pid: int, *, exit_fd: int, in_user_namespace: bool, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start slirp4netns for the network namespace of host pid ``pid``; return once the network is up.

    ``pid`` is a process inside the sandbox, in a network namespace of its own
    (attaching to this process's own namespace is refused), with its namespaces
    made (its uid and gid maps written: bwrap's child pid, once reported, is).
    ``in_user_namespace`` says the sandbox runs in a user namespace of its own,
    which slirp4netns joins.

    ``exit_fd`` is the read end of a pipe (``os.pipe()``). slirp4netns ends
    once every copy of its write end is closed: pass the write end into the
    sandbox and close the caller's copies (the read end too, after this call),
    and slirp4netns ends with the sandbox.

    Raises ``ProviderUnavailable`` (see ``user_network_unavailable``), or
    ``ProviderError`` with slirp4netns's output when it fails or is not ready
    within ``timeout`` seconds; it is then killed and reaped. On success its
    output is no longer read (later messages are dropped), and see the module
    docstring for who reaps it.
    """
    reason, slirp = _check()
    if slirp is None:
        raise ProviderUnavailable(reason or "slirp4netns is unavailable", provider="local")
    _check_exit_fd(exit_fd)
    reap()
    as_root = os.geteuid() == 0
    namespaces = [_open_namespace(pid, "net")]
    try:
        _refuse_own_namespace(pid, namespaces[0])
        argv = [slirp.path, "--configure", f"--mtu={MTU}", "--disable-host-loopback"]
        if slirp.seccomp:
            argv.append("--enable-seccomp")
        if slirp.sandbox and (as_root or (in_user_namespace and _maps_root(pid))):
            argv.append("--enable-sandbox")
        if as_root:
            # By the namespaces opened and checked above, so that a reused pid cannot
            # lead root's slirp4netns into another namespace (the host's, say).
            if in_user_namespace:
                namespaces.append(_open_namespace(pid, "user"))
                argv.append(f"--userns-path=/proc/self/fd/{namespaces[1]}")
            target = ["--netns-type=path", f"/proc/self/fd/{namespaces[0]}", TAP]
        else:
            # By pid: slirp4netns 1.2 joins the user namespace for --enable-sandbox from
            # the pid only (given a path, it fails). An ordinary user's slirp4netns
            # cannot enter namespaces it does not own, so a reused pid only fails.
            target = [str(pid), TAP]
        return _start(argv, target, exit_fd=exit_fd, namespaces=tuple(namespaces) if as_root else (), pid=pid, timeout=timeout)
    finally:
        for fd in namespaces:
            os.close(fd)


def reap() -> None:
    """Collect the exit status of the slirp4netns processes started here that have ended."""
    with _lock:
        _running[:] = [process for process in _running if process.poll() is None]


def _start(argv: list[str], target: list[str], *, exit_fd: int, namespaces: tuple[int, ...], pid: int, timeout: float) -> subprocess.Popen[bytes]:
    ready_r, ready_w = os.pipe()
    try:
        argv = [*argv, f"--ready-fd={ready_w}", f"--exit-fd={exit_fd}", *target]
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(ready_w, exit_fd, *namespaces),
                env={},  # nothing of the caller's: SLIRP_DEBUG, say
                cwd="/",
                start_new_session=True,
            )
        except OSError as error:
            raise ProviderError(f"cannot start slirp4netns: {error}", provider="local") from error
        os.close(ready_w)
        ready_w = -1
        assert process.stdout is not None
        output = bytearray()
        try:
            ready = _wait_ready(ready_r, process.stdout.fileno(), output, timeout)
        except BaseException:
            _kill(process)
            raise
        if ready == "ready":
            process.stdout.close()  # slirp4netns ignores SIGPIPE by now: its later messages are dropped
            with _lock:
                _running.append(process)
            return process
        status = None
        if ready == "ended":  # its exit status, if it comes soon
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = process.wait(timeout=1)
        _kill(process)
        _drain(process.stdout.fileno(), output)
        process.stdout.close()
        why = (
            f"it was not ready within {timeout:g}s"
            if ready == "timeout"
            else f"it exited with status {status}"
            if status is not None
            else "it closed its ready pipe"
        )
        text = output.decode(errors="replace").strip() or "no output"
        raise ProviderError(f"slirp4netns could not network the sandbox of pid {pid} ({why}): {text}", provider="local")
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)


def _wait_ready(ready_fd: int, output_fd: int, output: bytearray, timeout: float) -> str:
    """Whether slirp4netns became ready: "ready" once it writes "1" to its ready pipe, "ended" if it closes it first, else "timeout".

    Its output meanwhile goes to ``output``.
    """
    deadline = time.monotonic() + timeout
    watched = [ready_fd, output_fd]
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(watched, [], [], remaining)
        if output_fd in readable:
            chunk = os.read(output_fd, 65536)
            if chunk:
                output += chunk[: MAX_OUTPUT - len(output)]
            else:
                watched.remove(output_fd)
        if ready_fd in readable:
            return "ready" if os.read(ready_fd, 16) == b"1" else "ended"
    return "timeout"


def _drain(fd: int, output: bytearray) -> None:
    deadline = time.monotonic() + 1
    while (remaining := deadline - time.monotonic()) > 0 and select.select([fd], [], [], remaining)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        output += chunk[: MAX_OUTPUT - len(output)]


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill slirp4netns and the child it forks to set the tap device up (its session), then reap it."""
    if process.returncode is not None:
        return  # reaped: its pid, and so its session's id, may be another's by now
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def _check_exit_fd(fd: int) -> None:
    """slirp4netns waits for a hang-up on it: only a pipe's read end gets one when the writers are gone."""
    try:
        mode = os.fstat(fd).st_mode
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as error:
        raise ValueError(f"exit_fd {fd} is not an open file descriptor: {error.strerror}") from error
    if not stat.S_ISFIFO(mode) or access != os.O_RDONLY:
        raise ValueError(f"exit_fd {fd} must be the read end of a pipe (os.pipe()[0]), whose write end goes into the sandbox")


def _open_namespace(pid: int, kind: str) -> int:
    try:
        return os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise ProviderError(f"cannot open the {kind} namespace of pid {pid}: {error.strerror}", provider="local") from error


def _refuse_own_namespace(pid: int, namespace: int) -> None:
    """slirp4netns would add a tap device to the host's own network, and route it."""
    theirs = os.fstat(namespace)
    for reference in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            ours = os.stat(reference)
        except OSError:
            continue  # /proc/1 is not ours to look at as an ordinary user
        if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino):
            raise ProviderError(
                f"refusing to attach slirp4netns to pid {pid}: it is in the host's network namespace, not one of its own (bwrap --unshare-net)",
                provider="local",
            )


def _maps_root(pid: int) -> bool:
    """Whether uid 0 and gid 0 exist in pid's user namespace (slirp4netns's sandbox switches to them)."""
    for name in ("uid_map", "gid_map"):
        try:
            lines = Path(f"/proc/{pid}/{name}").read_text().splitlines()
        except OSError:
            return False
        if not any(line.split()[0] == "0" for line in lines if line.strip()):
            return False
    return True
