"""The seccomp filter local sandboxes run under: kernel interfaces untrusted code has no use for.

Namespaces hide the host's files, processes and network from a sandbox, but
every system call still reaches the host's kernel, and most kernel escapes go
through a few interfaces no ordinary program calls. Following Docker's default
profile for a container without capabilities, this filter refuses with EPERM:

- new namespaces (``clone`` and ``unshare`` with a namespace flag, ``setns``):
  a user namespace hands out capabilities over fresh network and mount
  namespaces, the door most unprivileged kernel exploits come through;
- the largest attack surfaces: ``bpf``, ``io_uring_*``, ``userfaultfd``,
  ``perf_event_open``, the keyrings, inotify (it sees other sandboxes' use of
  the files they share);
- what changes the machine rather than the process: modules, kexec, mounts,
  clocks, swap, quotas, accounting, reboot, port I/O;
- what reads or steers other processes: ``ptrace``, ``process_vm_*``,
  ``kcmp``, ``pidfd_getfd``, NUMA memory policies;
- ``personality`` flags other than the ones Docker allows (ASLR stays on),
  ``socket(AF_VSOCK)`` (vsock is not namespaced: it would reach a VM's host)
  and the TIOCSTI/TIOCLINUX ioctls (typing into a terminal).

``deny_userns`` also refuses a user namespace on its own; without it a program
may make one (``unshare -Ur``), but no other namespace, inside it or not.

``clone3`` fails with ENOSYS, as under Docker: it passes its flags in memory,
out of a classic BPF filter's reach, and libc then falls back to ``clone``,
whose flags the filter reads. Only the native ABI is allowed: a call through
another one (i386's ``int 0x80`` on x86_64, the x32 ABI, AArch32 on aarch64)
kills the process.

Everything else is allowed, so compilers and runtimes work as on the host. The
program is compiled by libseccomp (through ctypes, loaded on first use) into the
raw ``struct sock_filter`` array that ``bwrap --seccomp FD`` reads, and cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import NamedTuple

from ...errors import ProviderError, ProviderUnavailable

FORMAT = 1  # bump when the way a rule set becomes a program changes
SOCK_FILTER_SIZE = 8  # sizeof(struct sock_filter): the file is an array of them

# Actions and operators of libseccomp's seccomp.h.
_ACT_ALLOW = 0x7FFF0000
_ACT_KILL_PROCESS = 0x80000000
_ACT_ERRNO = 0x00050000
_CMP_GT = 6
_CMP_MASKED_EQ = 7
_ATTR_ACT_BADARCH = 2
_ARCH_S390 = 0x00000016
_ARCH_S390X = 0x80000016

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# clone's low byte is the exit signal, so CLONE_NEWTIME only means a namespace to unshare (and clone3).
_CLONE_NAMESPACES = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET)
_UNSHARE_NAMESPACES = (*_CLONE_NAMESPACES, CLONE_NEWTIME)

AF_VSOCK = 40
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
# Docker's personalities: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and the query 0xffffffff.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
PERSONALITY_BITS = 0x20008

# Refused outright. Names a kernel or architecture lacks (umount, stime and vm86 on
# x86_64, say) are skipped, as are those this libseccomp does not know.
DENIED = (
    # Modules, kexec, reboot: changing the running kernel.
    "create_module", "init_module", "finit_module", "delete_module", "get_kernel_syms",
    "query_module", "kexec_load", "kexec_file_load", "reboot",
    # The machine's state: clocks, swap, accounting, quotas, hostname, console, port I/O.
    "acct", "swapon", "swapoff", "settimeofday", "stime", "clock_settime", "clock_settime64",
    "clock_adjtime", "clock_adjtime64", "quotactl", "quotactl_fd", "sethostname", "setdomainname",
    "vhangup", "syslog", "ioperm", "iopl", "vm86", "vm86old",
    # Obsolete interfaces: kernel internals and old binary formats.
    "uselib", "ustat", "sysfs", "_sysctl", "lookup_dcookie",
    # Mounts and namespaces (creating one is refused by the clone/unshare rules).
    "mount", "umount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "setns",
    # File handles: open_by_handle_at opens any file of a mounted filesystem by number.
    "name_to_handle_at", "open_by_handle_at",
    # The kernel's largest attack surfaces.
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "fanotify_init",
    # Watching files: inotify sees which files of the mounts shared with the host (/usr)
    # other sandboxes and the host open, and its instances count against a per-user
    # limit the host's own processes share. No toolchain needs it (fs.watch would fail).
    "inotify_init", "inotify_init1",
    # Other processes' memory and state. No toolchain needs ptrace (gdb, strace and
    # LeakSanitizer, which AddressSanitizer runs at exit, do: they fail here).
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    # NUMA placement (Docker allows it with CAP_SYS_NICE only). None of the ten toolchains
    # calls these (java, node and go included: checked with strace); numactl would fail.
    "mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages",
    "move_pages",
)  # fmt: skip


class Arg(NamedTuple):
    """A comparison of one argument, as libseccomp's ``struct scmp_arg_cmp``."""

    arg: int
    op: int
    a: int
    b: int = 0


@dataclass(frozen=True)
class Rule:
    """Fail ``syscall`` with ``errno`` when every comparison in ``when`` holds."""

    syscall: str
    errno: int = errno.EPERM
    when: tuple[Arg, ...] = ()


def _has(arg: int, flag: int) -> Arg:
    return Arg(arg, _CMP_MASKED_EQ, flag, flag)


def _low32_is(arg: int, value: int) -> Arg:
    """The argument's low 32 bits equal ``value``: the kernel reads an int and ignores the rest."""
    return Arg(arg, _CMP_MASKED_EQ, 0xFFFFFFFF, value)


def rules(*, deny_userns: bool, clone_flags_arg: int = 0) -> tuple[Rule, ...]:
    """The rule set; ``clone_flags_arg`` is 1 on s390, whose clone takes the stack first."""
    userns = (CLONE_NEWUSER,) if deny_userns else ()
    return (
        *(Rule(name) for name in DENIED),
        Rule("clone3", errno.ENOSYS),
        *(Rule("clone", when=(_has(clone_flags_arg, flag),)) for flag in (*_CLONE_NAMESPACES, *userns)),
        *(Rule("unshare", when=(_has(0, flag),)) for flag in (*_UNSHARE_NAMESPACES, *userns)),
        *_personality_rules(),
        Rule("socket", when=(_low32_is(0, AF_VSOCK),)),
        *(Rule("ioctl", when=(_low32_is(1, request),)) for request in (TIOCSTI, TIOCLINUX)),
    )


def _personality_rules() -> tuple[Rule, ...]:
    """Refuse every personality but PERSONALITIES, as a union of rules of one comparison each.

    libseccomp 2.5 takes a single comparison per argument in a rule, so "none
    of these five values" cannot be one rule. Each rule below refuses a set
    holding none of them:

    - values above 32 bits (the kernel would read their low half);
    - some bit outside PERSONALITY_BITS set and the next such bit, taken
      cyclically, clear: that covers every value whose other bits are mixed;
    - all other bits set, but bit 3 or bit 17 clear.

    What passes has all other bits clear (0x0, 0x8, 0x20000, 0x20008) or all
    32 bits set (0xffffffff).
    """
    others = [bit for bit in range(32) if not (1 << bit) & PERSONALITY_BITS]
    pairs = zip(others, [*others[1:], others[0]], strict=True)
    mixed = (Rule("personality", when=(Arg(0, _CMP_MASKED_EQ, (1 << bit) | (1 << after), 1 << bit),)) for bit, after in pairs)
    low = 1 << others[0]
    partial = (Rule("personality", when=(Arg(0, _CMP_MASKED_EQ, low | flag, low),)) for flag in (0x8, 0x20000))
    return (Rule("personality", when=(Arg(0, _CMP_GT, 0xFFFFFFFF),)), *mixed, *partial)


def seccomp_filter(cache: Path, *, deny_userns: bool) -> Path:
    """The file holding the compiled filter, built into ``cache`` on first use.

    Open it and pass the descriptor to ``bwrap --seccomp FD``. Creating a
    namespace of any other kind is always refused; ``deny_userns`` also refuses
    a user namespace on its own (``unshare -U``). Without it a program may make
    one, but inside it still cannot mount or make any other namespace.
    """
    name, ruleset = _plan(deny_userns)
    path = cache / name
    if not _usable(path):
        _write_atomically(path, _compile(_libseccomp(), ruleset))
    return path


@functools.lru_cache(maxsize=2)
def _plan(deny_userns: bool) -> tuple[str, tuple[Rule, ...]]:
    """The rule set for this machine, and a file name carrying a digest of all the program depends on."""
    lib = _libseccomp()
    arch = int(lib.seccomp_arch_native())
    ruleset = rules(deny_userns=deny_userns, clone_flags_arg=1 if arch in (_ARCH_S390, _ARCH_S390X) else 0)
    version = lib.seccomp_version().contents
    key = json.dumps([FORMAT, arch, [version.major, version.minor, version.micro], deny_userns, [astuple(r) for r in ruleset]])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"seccomp-{platform.machine() or 'native'}-{digest}.bpf", ruleset


def _usable(path: Path) -> bool:
    """A whole program is there (files are renamed into place, but someone may have truncated one)."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return size > 0 and size % SOCK_FILTER_SIZE == 0


def _write_atomically(path: Path, program: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(program)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _compile(lib: ctypes.CDLL, ruleset: tuple[Rule, ...]) -> bytes:
    """The BPF program of ``ruleset`` for the native architecture."""
    arch = lib.seccomp_arch_native()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise ProviderError("libseccomp: seccomp_init failed", provider="local")
    try:
        # The filter holds the native architecture only. A call through another ABI
        # gets the bad-architecture action; on x86_64 libseccomp also sends x32
        # calls there (number >= 0x40000000 under the x86_64 audit arch), so x32
        # needs no rule of its own.
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, _ACT_KILL_PROCESS), "seccomp_attr_set(ACT_BADARCH)")
        for rule in ruleset:
            number = lib.seccomp_syscall_resolve_name_arch(arch, rule.syscall.encode())
            if number < 0:  # not a system call of this architecture (or unknown to this libseccomp)
                continue
            args = (_ScmpArgCmp * max(len(rule.when), 1))(*(_ScmpArgCmp(*arg) for arg in rule.when))
            action = _ACT_ERRNO | (rule.errno & 0xFFFF)
            _check(lib.seccomp_rule_add_array(ctx, action, number, len(rule.when), args), f"rule for {rule.syscall}")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    """The program as ``seccomp_export_bpf`` writes it: what bwrap loads."""
    with tempfile.TemporaryFile() as handle:
        _check(lib.seccomp_export_bpf(ctx, handle.fileno()), "seccomp_export_bpf")
        handle.seek(0)
        program = handle.read()
    if not program or len(program) % SOCK_FILTER_SIZE:
        raise ProviderError(f"libseccomp exported a malformed filter ({len(program)} bytes)", provider="local")
    return program


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise ProviderError(f"libseccomp: {what} failed: {os.strerror(-rc)}", provider="local")


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _ScmpVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    """libseccomp, loaded on first use; ProviderUnavailable when it is missing or too old (before 2.4)."""
    lib = _load("libseccomp.so.2") or _load(ctypes.util.find_library("seccomp"))
    if lib is None:
        raise ProviderUnavailable(
            "libseccomp is not installed: the local provider needs it to build its seccomp filter; "
            "install libseccomp2 (apt-get install libseccomp2, dnf install libseccomp)",
            provider="local",
        )
    try:
        _declare(lib)
    except AttributeError as error:
        raise ProviderUnavailable(
            f"libseccomp is too old ({error}): install libseccomp2 2.4 or newer (apt-get install libseccomp2)",
            provider="local",
        ) from error
    return lib


def _load(name: str | None) -> ctypes.CDLL | None:
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _declare(lib: ctypes.CDLL) -> None:
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_native.argtypes = []
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ScmpArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.argtypes = []
    lib.seccomp_version.restype = ctypes.POINTER(_ScmpVersion)
    lib.seccomp_api_get.restype = ctypes.c_uint  # added in 2.4, with SCMP_ACT_KILL_PROCESS
