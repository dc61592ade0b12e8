"""The local provider's seccomp filter, tried for real under bubblewrap.

A probe program makes each refused system call, with arguments the kernel
would reject harmlessly (or accept harmlessly, inside the probe's own
namespaces) were the filter absent; a control run without the filter shows
that the refusal comes from the filter. The probes run as root without a user
namespace (bwrap keeps root's capabilities there), as an unprivileged uid, and
in a user namespace. Then the ten languages' toolchains build and run a hello
world under the filter.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxes.errors import ProviderUnavailable
from sandboxes.providers.local import seccomp
from sandboxes.providers.local.layout import find_bwrap
from sandboxes.providers.local.seccomp import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWTIME,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    Rule,
    rules,
    seccomp_filter,
)

pytestmark = pytest.mark.hostile

X86_64 = platform.machine() == "x86_64"
ROOT = os.geteuid() == 0
MODES = ["root", "nobody", "userns"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
AT_FDCWD = -100
SIGCHLD = int(signal.SIGCHLD)
CLONE_FILES = 0x400
AF_UNIX, AF_VSOCK = 1, 40
TIOCSTI = 0x5412
KEY_SPEC_PROCESS_KEYRING, KEY_SPEC_SESSION_KEYRING = -2, -3
HOST_TOOLS = (str(Path.home() / ".cargo" / "bin"), "/usr/local/go/bin")  # often missing from PATH

# The probe runs each attack in a child of its own, so that one that succeeds
# (in the control run) or kills its process changes nothing for the next.
PROBE = r"""
import ctypes, json, mmap, os, signal, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
keep = []


def pointer(data):
    buffer = ctypes.create_string_buffer(data, len(data) + 1)
    keep.append(buffer)
    return ctypes.addressof(buffer)


def value(arg):
    if isinstance(arg, int):
        return arg & (1 << 64) - 1
    if "s" in arg:
        return pointer(arg["s"].encode())
    if "buf" in arg:
        return pointer(bytes(arg["buf"]))
    if "u64" in arg:
        return pointer(struct.pack("%dQ" % len(arg["u64"]), *arg["u64"]))
    if "iov" in arg:
        return pointer(struct.pack("QQ", pointer(bytes(arg["iov"])), arg["iov"]))
    if "pid" in arg:
        return os.getpid()
    raise ValueError(arg)


def call(nr, args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(value(a)) for a in args))
    return {"ret": ret, "errno": ctypes.get_errno() if ret == -1 else 0}


def fork_like(nr, args):
    result = call(nr, args)
    if result["ret"] == 0:
        os._exit(0)  # the new process: done
    if result["ret"] > 0:
        os.waitpid(result["ret"], 0)
    return result


def ptrace_child(nr, args):
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        return call(nr, [args[0], child, 0, 0])
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def nodump(nr, args):
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: a kill leaves no core
    return call(nr, args)


def int80(nr, args):
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    # mov eax, nr; int 0x80; ret: the i386 entry point, from a 64-bit process
    code = b"\xb8" + struct.pack("<I", nr) + b"\xcd\x80\xc3"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ret = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    return {"ret": ret, "errno": -ret if ret < 0 else 0}


KINDS = {"call": call, "fork": fork_like, "ptrace": ptrace_child, "nodump": nodump, "int80": int80}


def run(probe):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, json.dumps(KINDS[probe["kind"]](probe["nr"], probe["args"])).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return json.loads(data) if data else {"exit": os.WEXITSTATUS(status)}


print(json.dumps({probe["name"]: run(probe) for probe in json.load(sys.stdin)}))
"""


def _probe(name: str, syscall: str, *args: Any, expect: str = "EPERM", kind: str = "call", nr: int | None = None) -> dict[str, Any]:
    return {"name": name, "syscall": syscall, "args": list(args), "expect": expect, "kind": kind, "nr": nr}


def _ns_name(flag: int) -> str:
    names = {CLONE_NEWNS: "newns", CLONE_NEWUTS: "newuts", CLONE_NEWIPC: "newipc", CLONE_NEWUSER: "newuser"}
    names |= {CLONE_NEWPID: "newpid", CLONE_NEWNET: "newnet", CLONE_NEWCGROUP: "newcgroup", CLONE_NEWTIME: "newtime"}
    return names[flag]


CLONE_NS = [CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP]
S = {"s": "/"}

PROBES = [
    # The kernel's largest attack surfaces.
    _probe("keyctl", "keyctl", 0, KEY_SPEC_SESSION_KEYRING, 0),  # KEYCTL_GET_KEYRING_ID
    _probe("add_key", "add_key", {"s": "user"}, {"s": "probe"}, {"s": "x"}, 1, KEY_SPEC_PROCESS_KEYRING),
    _probe("request_key", "request_key", {"s": "user"}, {"s": "no-such-key"}, 0, 0),
    _probe("bpf", "bpf", 0, 0, 0),  # BPF_MAP_CREATE without attributes
    _probe("perf_event_open", "perf_event_open", 0, 0, -1, -1, 0),
    _probe("userfaultfd", "userfaultfd", 0o2000000),
    _probe("io_uring_setup", "io_uring_setup", 4, {"buf": 120}),
    _probe("io_uring_enter", "io_uring_enter", -1, 0, 0, 0, 0, 0),
    _probe("io_uring_register", "io_uring_register", -1, 0, 0, 0),
    _probe("fanotify_init", "fanotify_init", 0, 0),
    # Watching the files shared with other sandboxes and the host.
    _probe("inotify_init1", "inotify_init1", 0),
    _probe("inotify_init", "inotify_init"),
    # Changing the kernel or the machine (arguments the kernel rejects, were the filter absent).
    _probe("kexec_load", "kexec_load", 0, 100, 0, 0),  # more segments than KEXEC_SEGMENT_MAX
    _probe("kexec_file_load", "kexec_file_load", -1, -1, 0, 0, 0),
    _probe("init_module", "init_module", 0, 0, {"s": ""}),
    _probe("finit_module", "finit_module", -1, {"s": ""}, 0),
    _probe("delete_module", "delete_module", 0, 0),
    _probe("create_module", "create_module", 0, 0),
    _probe("reboot", "reboot", 0, 0, 0, 0),  # no magic numbers
    _probe("acct", "acct", 1),
    _probe("swapon", "swapon", 0, 0),
    _probe("swapoff", "swapoff", 0),
    _probe("settimeofday", "settimeofday", 0, 0),
    _probe("clock_settime", "clock_settime", 0, 0),
    _probe("clock_adjtime", "clock_adjtime", 0, 0),
    _probe("quotactl", "quotactl", 0, 0, 0, 0),
    _probe("sethostname", "sethostname", 0, 5),
    _probe("syslog", "syslog", 10, 0, 0),  # SYSLOG_ACTION_SIZE_BUFFER
    _probe("iopl", "iopl", 0),
    _probe("ioperm", "ioperm", 0, 0, 0),
    _probe("uselib", "uselib", 0),
    _probe("ustat", "ustat", 0, 0),
    _probe("sysfs", "sysfs", 3),
    _probe("_sysctl", "_sysctl", 0),
    _probe("lookup_dcookie", "lookup_dcookie", 0, 0, 0),
    # Mounts and file handles.
    _probe("mount", "mount", {"s": "none"}, {"s": "/tmp"}, {"s": "tmpfs"}, 0, 0),
    _probe("umount2", "umount2", {"s": "/no-such-mount"}, 0),
    _probe("pivot_root", "pivot_root", 0, 0),
    _probe("chroot", "chroot", S),
    _probe("open_tree", "open_tree", AT_FDCWD, S, 0),
    _probe("move_mount", "move_mount", -1, {"s": ""}, -1, {"s": ""}, 0),
    _probe("fsopen", "fsopen", {"s": "tmpfs"}, 0),
    _probe("fsconfig", "fsconfig", -1, 0, 0, 0, 0),
    _probe("fsmount", "fsmount", -1, 0, 0),
    _probe("fspick", "fspick", AT_FDCWD, S, 0),
    _probe("mount_setattr", "mount_setattr", -1, {"s": ""}, 0, 0, 0),
    _probe("quotactl_fd", "quotactl_fd", -1, 0, 0, 0),
    _probe("name_to_handle_at", "name_to_handle_at", AT_FDCWD, S, 0, 0, 0),
    _probe("open_by_handle_at", "open_by_handle_at", -1, 0, 0),
    _probe("setns", "setns", -1, 0),
    # Other processes and memory.
    _probe("ptrace", "ptrace", 16, kind="ptrace"),  # PTRACE_ATTACH to a child
    _probe("process_vm_readv", "process_vm_readv", {"pid": 1}, {"iov": 16}, 1, {"iov": 16}, 1, 0),
    _probe("process_vm_writev", "process_vm_writev", {"pid": 1}, {"iov": 16}, 1, {"iov": 16}, 1, 0),
    _probe("kcmp", "kcmp", {"pid": 1}, {"pid": 1}, 1, 0, 0),  # KCMP_VM
    _probe("pidfd_getfd", "pidfd_getfd", -1, 0, 0),
    _probe("process_madvise", "process_madvise", -1, 0, 0, 0, 0),
    _probe("mbind", "mbind", 0, 0, 0, 0, 0, 0),
    _probe("get_mempolicy", "get_mempolicy", 0, 0, 0, 0, 0),
    _probe("set_mempolicy", "set_mempolicy", 0, 0, 0),
    _probe("migrate_pages", "migrate_pages", 0, 0, 0, 0),
    _probe("move_pages", "move_pages", 0, 0, 0, 0, 0, 0),
    # Namespaces: clone's flags are its first argument on x86_64 and aarch64.
    *(_probe(f"unshare_{_ns_name(flag)}", "unshare", flag) for flag in [*CLONE_NS, CLONE_NEWTIME]),
    *(_probe(f"clone_{_ns_name(flag)}", "clone", flag | SIGCHLD, 0, 0, 0, 0, kind="fork") for flag in CLONE_NS),
    _probe("clone3_newuser", "clone3", {"u64": [CLONE_NEWUSER, 0, 0, 0, SIGCHLD, 0, 0, 0]}, 64, expect="ENOSYS", kind="fork"),
    _probe("clone3_plain", "clone3", {"u64": [0, 0, 0, 0, SIGCHLD, 0, 0, 0]}, 64, expect="ENOSYS", kind="fork"),
    # Arguments: personality, vsock, terminal injection (high bits must not get past).
    *(_probe(f"personality_{value:#x}", "personality", value) for value in (0x0040000, 0x0400000, 0xFFFFFFFE, 0x20009, 1 << 32)),
    _probe("socket_vsock", "socket", AF_VSOCK, 1, 0),
    _probe("socket_vsock_high_bits", "socket", (1 << 32) | AF_VSOCK, 1, 0),
    _probe("ioctl_tiocsti", "ioctl", 0, TIOCSTI, {"s": "x"}),
    _probe("ioctl_tiocsti_high_bits", "ioctl", 0, (1 << 32) | TIOCSTI, {"s": "x"}),
    # Allowed: what ordinary programs do.
    _probe("getpid", "getpid", expect="ok"),
    _probe("unshare_files", "unshare", CLONE_FILES, expect="ok"),
    _probe("clone_plain", "clone", SIGCHLD, 0, 0, 0, 0, expect="ok", kind="fork"),
    *(_probe(f"personality_{value:#x}", "personality", value, expect="ok") for value in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)),
    _probe("socket_unix", "socket", AF_UNIX, 1, 0, expect="ok"),
    # Other ABIs: x32 (the syscall number's bit 30) and i386 (int 0x80) kill the process.
    *([_probe("x32_getpid", "getpid", expect="SIGSYS", kind="nodump", nr=39 | 0x40000000)] if X86_64 else []),
    *([_probe("i386_getpid", "getpid", expect="SIGSYS", kind="int80", nr=20)] if X86_64 else []),
]


def _resolve(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probes whose system call exists on this machine, with its number."""
    lib = seccomp._libseccomp()
    arch = lib.seccomp_arch_native()
    resolved = []
    for probe in probes:
        nr = probe["nr"] if probe["nr"] is not None else lib.seccomp_syscall_resolve_name_arch(arch, probe["syscall"].encode())
        if nr >= 0:
            resolved.append({**probe, "nr": nr})
    return resolved


@pytest.fixture(scope="module")
def bwrap() -> str:
    try:
        return find_bwrap()
    except ProviderUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def filters(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    cache = tmp_path_factory.mktemp("seccomp-cache")
    try:
        return {deny: seccomp_filter(cache, deny_userns=deny) for deny in (True, False)}
    except ProviderUnavailable as error:
        pytest.skip(str(error))


def _home_binds() -> list[str]:
    """A private home (root's, 0700) as a tmpfs showing only its toolchains, so another uid reaches them."""
    home = Path.home()
    if not ROOT or home.stat().st_mode & 0o001:
        return []
    binds = ["--perms", "0755", "--tmpfs", str(home)]
    for name in (".pyenv", ".cargo", ".rustup"):
        if (home / name).is_dir():
            binds += ["--ro-bind", str(home / name), str(home / name)]
    return binds


def _sandbox(
    bwrap: str,
    argv: list[str],
    *,
    mode: str,
    program: Path | None,
    work: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in bwrap under the filter at ``program`` (None: unfiltered) as ``mode``'s user."""
    if mode in ("root", "nobody") and not ROOT:
        pytest.skip("needs root: bwrap without a user namespace")
    command = [bwrap, "--ro-bind", "/", "/", *_home_binds(), "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
    command += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--new-session", "--die-with-parent"]
    if work is not None:
        command += ["--bind", str(work), "/work", "--chdir", "/work"]
    if mode == "userns":
        command += ["--unshare-user", "--uid", "1000", "--gid", "1000"]
    prefix = NOBODY if mode == "nobody" else []
    with open(program, "rb") if program else open(os.devnull, "rb") as handle:
        if program:
            command += ["--seccomp", str(handle.fileno())]
        command += ["--", *prefix, *argv]
        return subprocess.run(
            command,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            pass_fds=(handle.fileno(),),
            env=env or {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )


def _run_probes(bwrap: str, program: Path | None, mode: str, probes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    result = _sandbox(bwrap, [sys.executable, "-I", "-c", PROBE], mode=mode, program=program, stdin=json.dumps(probes))
    assert result.returncode == 0, result.stderr
    outcome: dict[str, dict[str, int]] = json.loads(result.stdout)
    return outcome


@pytest.fixture(scope="module")
def probes() -> list[dict[str, Any]]:
    try:
        return _resolve(PROBES)
    except ProviderUnavailable as error:
        pytest.skip(str(error))


Outcomes = dict[str, dict[str, int]]  # probe name -> {"ret", "errno"} or {"signal"}


@pytest.fixture(scope="module")
def outcomes(bwrap: str, filters: dict[bool, Path], probes: list[dict[str, Any]]) -> Callable[[str], Outcomes]:
    """Every probe's outcome in a mode under the filter, or as root without it ("control"); each run once."""
    runs: dict[str, Outcomes] = {}

    def get(mode: str) -> Outcomes:
        if mode not in runs:
            program = None if mode == "control" else filters[True]
            runs[mode] = _run_probes(bwrap, program, "root" if mode == "control" else mode, probes)
        return runs[mode]

    return get


def _describe(outcome: dict[str, int]) -> str:
    if "signal" in outcome:
        return signal.Signals(outcome["signal"]).name
    if "exit" in outcome:
        return f"exit {outcome['exit']}"
    if outcome["ret"] == -1:
        return errno.errorcode.get(outcome["errno"], str(outcome["errno"]))
    return "ok"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [probe["name"] for probe in PROBES])
def test_attack_is_refused(name: str, mode: str, outcomes: Callable[[str], Outcomes], probes: list[dict[str, Any]]) -> None:
    probe = next((p for p in probes if p["name"] == name), None)
    if probe is None:
        pytest.skip(f"{name}: no such system call on {platform.machine()}")
    got = outcomes(mode)[name]
    assert _describe(got) == probe["expect"], f"{name} as {mode}: {got}"


@pytest.mark.parametrize("name", [probe["name"] for probe in PROBES if probe["expect"] != "ok"])
def test_without_the_filter_the_attack_gets_further(name: str, outcomes: Callable[[str], Outcomes], probes: list[dict[str, Any]]) -> None:
    """The control: as root without the filter, the kernel answers otherwise, so the refusal is the filter's."""
    probe = next((p for p in probes if p["name"] == name), None)
    if probe is None:
        pytest.skip(f"{name}: no such system call on {platform.machine()}")
    got = outcomes("control")[name]
    if _describe(got) == probe["expect"]:
        pytest.skip(f"{name}: this kernel refuses it unfiltered too ({_describe(got)}), so the control shows nothing here")


def test_a_user_namespace_alone_is_allowed_only_without_deny_userns(bwrap: str, filters: dict[bool, Path], probes: list[dict[str, Any]]) -> None:
    wanted = {"unshare_newuser", "clone_newuser", "unshare_newnet", "clone_newnet", "clone3_newuser"}
    chosen = [p for p in probes if p["name"] in wanted]
    lenient = _run_probes(bwrap, filters[False], "nobody" if ROOT else "userns", chosen)
    assert {name: _describe(outcome) for name, outcome in lenient.items()} == {
        "unshare_newuser": "ok",
        "clone_newuser": "ok",
        "unshare_newnet": "EPERM",
        "clone_newnet": "EPERM",
        "clone3_newuser": "ENOSYS",
    }


@pytest.mark.parametrize("mode", MODES)
def test_unshare_command_cannot_make_a_user_namespace(bwrap: str, filters: dict[bool, Path], mode: str) -> None:
    if not shutil.which("unshare"):
        pytest.skip("util-linux unshare is not installed")
    refused = _sandbox(bwrap, ["unshare", "-Ur", "true"], mode=mode, program=filters[True])
    assert refused.returncode != 0
    assert "Operation not permitted" in refused.stderr
    allowed = _sandbox(bwrap, ["unshare", "-Ur", "id", "-u"], mode=mode, program=filters[False])
    assert (allowed.returncode, allowed.stdout) == (0, "0\n"), allowed.stderr


def _matches(rule: Rule, args: tuple[int, ...]) -> bool:
    for arg in rule.when:
        value = args[arg.arg]
        if arg.op == seccomp._CMP_MASKED_EQ and value & arg.a != arg.b:
            return False
        if arg.op == seccomp._CMP_GT and not value > arg.a:
            return False
    return True


def test_personality_rules_refuse_all_but_dockers_values() -> None:
    personality = [rule for rule in rules(deny_userns=True) if rule.syscall == "personality"]
    assert {op for rule in personality for (_, op, _, _) in rule.when} <= {seccomp._CMP_MASKED_EQ, seccomp._CMP_GT}

    def refused(value: int) -> bool:
        return any(_matches(rule, (value,)) for rule in personality)

    generator = random.Random(4711)
    samples = {1 << bit for bit in range(64)} | {(1 << bit) - 1 for bit in range(65)}
    samples |= {allowed | (1 << bit) for allowed in seccomp.PERSONALITIES for bit in range(64)}
    samples |= {allowed & ~(1 << bit) for allowed in seccomp.PERSONALITIES for bit in range(32)}
    samples |= {generator.getrandbits(width) for width in (8, 20, 32, 64) for _ in range(2000)}
    wrong = {value for value in samples if refused(value) == (value in seccomp.PERSONALITIES)}
    assert not wrong, sorted(wrong)[:10]


def test_filter_is_cached_per_rule_set(tmp_path: Path) -> None:
    first = seccomp_filter(tmp_path, deny_userns=True)
    assert seccomp_filter(tmp_path, deny_userns=True) == first
    other = seccomp_filter(tmp_path, deny_userns=False)
    assert other != first
    program = first.read_bytes()
    assert program and len(program) % 8 == 0  # an array of struct sock_filter
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temporary left
    first.write_bytes(program[:-3])  # truncated: rebuilt
    assert seccomp_filter(tmp_path, deny_userns=True).read_bytes() == program


@pytest.mark.parametrize("mode", MODES)
def test_the_sandboxed_program_runs_under_the_filter(bwrap: str, filters: dict[bool, Path], mode: str) -> None:
    status = _sandbox(bwrap, ["cat", "/proc/self/status"], mode=mode, program=filters[True]).stdout
    assert "\nSeccomp:\t2\n" in status
    assert "\nNoNewPrivs:\t1\n" in status


def test_missing_libseccomp_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seccomp._libseccomp.cache_clear()
    seccomp._plan.cache_clear()
    monkeypatch.setattr(seccomp, "_load", lambda name: None)
    try:
        with pytest.raises(ProviderUnavailable, match="apt-get install libseccomp2") as raised:
            seccomp_filter(tmp_path, deny_userns=True)
        assert raised.value.provider == "local"
    finally:
        seccomp._libseccomp.cache_clear()


@dataclass(frozen=True)
class Language:
    tools: tuple[str, ...]  # what must be on PATH
    filename: str
    source: str
    commands: tuple[tuple[str, ...], ...]  # run in /work; the last prints "hello from <name>"


# Each starts a thread and a process where the language makes that easy: both
# go through clone (clone3 gets ENOSYS), the call the filter inspects.
LANGUAGES = {
    "python": Language(
        ("python3",),
        "hello.py",
        (
            "import subprocess, threading\n"
            "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
            "subprocess.run(['true'], check=True)\n"
            "print('hello from python')\n"
        ),
        ((sys.executable, "hello.py"),),
    ),
    "javascript": Language(
        ("node",),
        "hello.js",
        (
            "require('child_process').execFileSync('true');\n"
            "require('crypto').pbkdf2Sync('x', 'y', 1000, 32, 'sha256');\n"
            "console.log('hello from javascript');\n"
        ),
        (("node", "hello.js"),),
    ),
    "typescript": Language(
        ("tsx",),
        "hello.ts",
        "const who: string = 'typescript';\nconsole.log(`hello from ${who}`);\n",
        (("tsx", "hello.ts"),),
    ),
    "go": Language(
        ("go",),
        "hello.go",
        (
            'package main\n\nimport (\n\t"fmt"\n\t"os/exec"\n\t"sync"\n)\n\n'
            "func main() {\n\tvar wg sync.WaitGroup\n"
            "\tfor i := 0; i < 8; i++ {\n\t\twg.Add(1)\n\t\tgo func() { defer wg.Done() }()\n\t}\n\twg.Wait()\n"
            '\tif err := exec.Command("true").Run(); err != nil {\n\t\tpanic(err)\n\t}\n'
            '\tfmt.Println("hello from go")\n}\n'
        ),
        (("go", "build", "-o", "hello-go", "hello.go"), ("./hello-go",), ("go", "run", "hello.go")),
    ),
    "rust": Language(
        ("rustc",),
        "hello.rs",
        (
            "fn main() {\n"
            "    std::thread::spawn(|| ()).join().unwrap();\n"
            '    assert!(std::process::Command::new("true").status().unwrap().success());\n'
            '    println!("hello from rust");\n'
            "}\n"
        ),
        (("rustc", "-o", "hello-rs", "hello.rs"), ("./hello-rs",)),
    ),
    "c": Language(
        ("gcc",),
        "hello.c",
        (
            "#include <pthread.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
            "static void *run(void *arg) { return arg; }\n"
            "int main(void) {\n"
            "    pthread_t t;\n"
            "    if (pthread_create(&t, NULL, run, NULL) || pthread_join(t, NULL)) return 1;\n"
            '    if (system("true")) return 2;\n'
            '    puts("hello from c");\n'
            "    return 0;\n"
            "}\n"
        ),
        (("gcc", "-pthread", "-o", "hello-c", "hello.c"), ("./hello-c",)),
    ),
    "cpp": Language(
        ("g++",),
        "hello.cpp",
        (
            "#include <iostream>\n#include <thread>\n"
            "int main() {\n"
            "    std::thread t([] {});\n"
            "    t.join();\n"
            '    std::cout << "hello from cpp" << std::endl;\n'
            "}\n"
        ),
        (("g++", "-pthread", "-o", "hello-cpp", "hello.cpp"), ("./hello-cpp",)),
    ),
    "java": Language(
        ("javac", "java"),
        "Hello.java",
        (
            "public class Hello {\n"
            "    public static void main(String[] args) throws Exception {\n"
            "        Thread t = new Thread(() -> {});\n"
            "        t.start();\n"
            "        t.join();\n"
            '        if (new ProcessBuilder("true").start().waitFor() != 0) System.exit(2);\n'
            '        System.out.println("hello from java");\n'
            "    }\n"
            "}\n"
        ),
        (("javac", "Hello.java"), ("java", "-cp", ".", "Hello")),
    ),
    "ruby": Language(
        ("ruby",),
        "hello.rb",
        "Thread.new { 1 }.join\nsystem('true') or exit 2\nputs 'hello from ruby'\n",
        (("ruby", "hello.rb"),),
    ),
    "bash": Language(
        ("bash",),
        "hello.sh",
        'who=$(echo bash)\n/bin/true\necho "hello from $who"\n',
        (("bash", "hello.sh"),),
    ),
}


def _tool_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), *HOST_TOOLS])


@pytest.mark.parametrize("language", sorted(LANGUAGES))
def test_toolchain_works_under_the_filter(bwrap: str, filters: dict[bool, Path], tmp_path: Path, language: str) -> None:
    tools, filename, source, commands = astuple(LANGUAGES[language])
    path = _tool_path()
    missing = [tool for tool in tools if not shutil.which(tool, path=path)]
    if missing:
        pytest.skip(f"{language}: {', '.join(missing)} not on PATH")
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)  # the sandbox's uid is not the owner
    (work / filename).write_text(source)
    home = str(Path.home())
    env = {
        "PATH": os.pathsep.join(os.path.dirname(os.path.realpath(shutil.which(t, path=path) or t)) for t in tools) + os.pathsep + path,
        "HOME": "/work",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "GOCACHE": "/work/.cache/go-build",
        "GOPATH": "/work/go",
        "GOTOOLCHAIN": "local",
        "RUSTUP_HOME": os.environ.get("RUSTUP_HOME", f"{home}/.rustup"),
        "CARGO_HOME": os.environ.get("CARGO_HOME", f"{home}/.cargo"),
    }
    mode = "nobody" if ROOT else "userns"
    for command in commands:
        result = _sandbox(bwrap, list(command), mode=mode, program=filters[True], work=work, env=env, timeout=120)
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.rstrip().endswith(f"hello from {language}"), result.stdout
