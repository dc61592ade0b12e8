"""Per-sandbox cgroups (sandboxes/providers/local/cgroups.py), on this machine's real cgroups.

As root only: the tests make cgroups, give some to user nobody and run
processes as nobody. Everything runs under a parent cgroup of the test's own
(``sbtest-*``: not a ``sandboxes-*`` name, so no sweep removes it meanwhile),
removed with every process in it when the test ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxes.providers.local import cgroups
from sandboxes.providers.local.cgroups import CgroupParent, SandboxCgroup, find_cgroup_parent, sweep_stale

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes cgroups and hands them to user nobody: run as root")

MIB = 1024 * 1024
NOBODY = 65534
MODULE = Path(cgroups.__file__)

# Joins the cgroup ``argv[2]`` ("." or a cmd-N it makes) below each directory
# descriptor in ``argv[1]``, as the agent's command process will, then execs the rest.
ENTER = """
import os, sys
for fd in map(int, sys.argv[1].split(",")):
    sub = sys.argv[2]
    if sub != ".":
        try:
            os.mkdir(sub, dir_fd=fd)
        except FileExistsError:
            pass
    procs = os.open(os.path.join(sub, "cgroup.procs"), os.O_WRONLY, dir_fd=fd)
    os.write(procs, b"0")
    os.close(procs)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""

PRIVATE = """
chunks = []
for _ in range(200):
    chunk = bytearray(1 << 20)
    chunk[::4096] = b"\\1" * 256
    chunks.append(chunk)
print("allocated 200 MiB")
"""

# MAP_SHARED|MAP_ANONYMOUS is shmem: not data, so RLIMIT_DATA does not see it.
SHARED = """
import mmap, resource
resource.setrlimit(resource.RLIMIT_DATA, (64 << 20, 64 << 20))
shared = mmap.mmap(-1, 200 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for i in range(0, len(shared), 4096):
    shared[i] = 1
print("mapped 200 MiB")
"""

FORK_LOOP = """
import os, time
forked = 0
while True:
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        os.closerange(0, 3)  # let the runner see the end of its output
        time.sleep(60)
        os._exit(0)
    forked += 1
print(forked, flush=True)
"""

# Leaves a daemon: setsid, forked twice, its parent gone, stdio closed; says its pid on fd argv[1].
DAEMON = """
import os, sys, time
report = int(sys.argv[1])
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        os.write(report, f"{os.getpid()}\\n".encode())
        os.close(report)
        time.sleep(120)
        os._exit(0)
    os._exit(0)
os.wait()
"""


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts: killed and reaped when it ends, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _remove_tree(directory: str) -> None:
    """Remove a test parent: every sandbox cgroup in it (processes killed), then it."""
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        if entry.startswith(cgroups.PREFIX) and os.path.isdir(os.path.join(directory, entry)):
            SandboxCgroup.from_paths([os.path.join(directory, entry)]).remove()
    os.rmdir(directory)


@pytest.fixture
def make_parent() -> Iterator[Callable[..., CgroupParent]]:
    """Makes test parents (``sbtest-*``) below given directories; removes them and all in them afterwards."""
    made: list[str] = []

    def make(dirs: dict[str, str], version: int, controllers: frozenset[str] = frozenset(cgroups.CONTROLLERS)) -> CgroupParent:
        name = f"sbtest-{os.urandom(4).hex()}"
        mine = {key: os.path.join(directory, name) for key, directory in dirs.items()}
        for directory in mine.values():
            os.mkdir(directory)
            made.append(directory)
            if version == 2 and controllers:
                Path(directory, "cgroup.subtree_control").write_text(" ".join("+" + c for c in sorted(controllers)))
        return CgroupParent(version, mine, controllers=controllers, origin="test")

    yield make
    errors = []
    for directory in made:
        try:
            _remove_tree(directory)
        except OSError as error:
            errors.append(error)
    assert not errors, errors


@pytest.fixture
def parent(make_parent: Callable[..., CgroupParent], monkeypatch: pytest.MonkeyPatch) -> CgroupParent:
    """A parent of the test's own, below the one discovery finds for this process."""
    monkeypatch.delenv(cgroups.ENV_PARENT, raising=False)
    found = find_cgroup_parent()
    if found is None:
        pytest.skip(f"no cgroups for sandboxes here: {cgroups.cgroup_unavailable_reason()}")
    return make_parent(found.dirs, found.version)


def _name() -> str:
    return cgroups.cgroup_name(f"test-{os.urandom(4).hex()}")


def _where(cgroup: SandboxCgroup) -> str:
    """Where a test's workload goes: work/ itself in v1; v2 allows no process in a cgroup with controllers to give."""
    return "." if cgroup.version == 1 else "cmd-1"


def _work_fds(cgroup: SandboxCgroup) -> list[int]:
    fds = cgroup.open_fds()
    for key, fd in list(fds.items()):
        if not key.endswith(".work"):
            os.close(fd)
            del fds[key]
    return list(fds.values())


def _run_in(cgroup: SandboxCgroup, sub: str, argv: list[str], extra_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``work/<sub>`` of every hierarchy, entered as the agent's commands will."""
    fds = _work_fds(cgroup)
    try:
        return subprocess.run(
            [sys.executable, "-c", ENTER, ",".join(map(str, fds)), sub, *argv],
            pass_fds=(*fds, *extra_fds), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)


def _cgroup_of(pid: int) -> dict[str, str]:
    """A process's cgroup by hierarchy key: "memory", "pids", "unified"."""
    return _parse(Path(f"/proc/{pid}/cgroup").read_text())


def _parse(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup (or task/<tid>/cgroup) by hierarchy key."""
    found = {}
    for line in text.split():
        number, controllers, path = line.split(":", 2)
        if number == "0":
            found["unified"] = path
        for controller in controllers.split(","):
            found[controller] = path
    return found


def _pidfd_of(pid: int, inside: str) -> int:
    """A pidfd of ``pid``, checked to be in a cgroup whose path contains ``inside``."""
    fd = os.pidfd_open(pid)
    assert inside in Path(f"/proc/{pid}/cgroup").read_text()
    return fd


def _ended(pidfd: int, timeout: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


def _all_procs(cgroup: SandboxCgroup) -> list[str]:
    lines = []
    for top in cgroup.paths():
        for directory, _, _ in os.walk(top):
            lines += Path(directory, "cgroup.procs").read_text().split()
    return lines


def _nobody_python() -> str:
    for python in (sys.executable, "/usr/bin/python3"):
        check = subprocess.run(_as_nobody([python, "-c", "import sys; assert sys.version_info >= (3, 10)"], {}), capture_output=True)
        if check.returncode == 0:
            return python
    pytest.skip("no Python that user nobody can run")


def _start_agent_as_nobody(program: str, fds: dict[str, int]) -> subprocess.Popen[bytes]:
    """``program`` as nobody with the cgroup fds passed in (and closed here)."""
    try:
        return subprocess.Popen(
            _as_nobody([_nobody_python(), "-c", program, json.dumps(fds)], {}),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=tuple(fds.values()),
        )  # fmt: skip
    finally:
        for fd in fds.values():
            os.close(fd)


def _as_nobody(argv: list[str], env: dict[str, str]) -> list[str]:
    assignments = [f"{k}={v}" for k, v in {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **env}.items()]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i", *assignments, *argv]


@pytest.fixture
def module_copy() -> Iterator[str]:
    """A directory holding a copy of cgroups.py that nobody can import (the checkout may be private)."""
    directory = tempfile.mkdtemp(prefix="sbtest-cgroups-", dir="/tmp")
    shutil.copy(MODULE, os.path.join(directory, "cgroups.py"))
    os.chmod(os.path.join(directory, "cgroups.py"), 0o644)
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# -- discovery ----------------------------------------------------------------------------


def test_discovery_finds_this_process_cgroups_and_describes_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cgroups.ENV_PARENT, raising=False)
    found = find_cgroup_parent()
    if found is None:
        pytest.skip(f"no cgroups for sandboxes here: {cgroups.cgroup_unavailable_reason()}")
    assert cgroups.cgroup_unavailable_reason() is None
    assert found.controllers >= {"memory", "pids"}  # and cpu where that hierarchy can be used too
    own = _cgroup_of(os.getpid())
    for key, path in found.cgroups.items():
        assert path == own[key.split(",")[0]]
    assert cgroups.describe().startswith(f"cgroup v{found.version} ({', '.join(sorted(found.controllers))}) under ")
    for directory in found.dirs.values():  # the probe is gone
        assert not [e for e in os.listdir(directory) if e.startswith(f"{cgroups.PREFIX}probe-{os.getpid()}-")]


def test_discovery_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cgroups.ENV_PARENT, "/sbtest-does-not-exist")
    assert find_cgroup_parent() is None
    assert "does not exist" in (cgroups.cgroup_unavailable_reason() or "")
    assert cgroups.describe().startswith("no cgroups (")
    assert find_cgroup_parent("off") is None and "disabled" in (cgroups.cgroup_unavailable_reason("off") or "")
    assert "expected a cgroup path" in (cgroups.cgroup_unavailable_reason("relative/path") or "")


# -- limits ----------------------------------------------------------------------------------


def test_memory_limit_oom_kills_the_workload_not_the_agent(parent: CgroupParent, processes: list[subprocess.Popen[bytes]]) -> None:
    cgroup = parent.create(_name(), memory_bytes=64 * MIB, pids_max=20, owner_uid=None)
    agent = subprocess.Popen(["sleep", "60"])
    processes.append(agent)
    cgroup.place(agent.pid)
    outside = subprocess.run([sys.executable, "-c", SHARED], capture_output=True, text=True, timeout=60)
    assert outside.stdout.strip() == "mapped 200 MiB", "a shared mapping escapes RLIMIT_DATA"
    for program in (PRIVATE, SHARED):
        done = _run_in(cgroup, _where(cgroup), [sys.executable, "-c", program])
        assert done.returncode == -signal.SIGKILL, (done.stdout, done.stderr[-1000:])
    assert cgroup.oom_kills() >= 2
    assert agent.poll() is None, "the agent, outside work/, is never the OOM killer's choice"
    cgroup.remove()
    assert not cgroup.exists()


def test_tmpfs_pages_stay_charged_to_the_workload(parent: CgroupParent) -> None:
    if not os.path.ismount("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm")
    cgroup = parent.create(_name(), memory_bytes=64 * MIB, pids_max=20, owner_uid=None)
    target = f"/dev/shm/sbtest-{os.urandom(4).hex()}"
    writer = f"import os\nfd = os.open({target!r}, os.O_WRONLY | os.O_CREAT, 0o600)\nfor _ in range(200): os.write(fd, bytes(1 << 20))"
    try:
        done = _run_in(cgroup, _where(cgroup), [sys.executable, "-c", writer])
        assert done.returncode == -signal.SIGKILL
        key = next(k for k in cgroup.tops if "memory" in k or k == "unified")
        usage = "memory.usage_in_bytes" if cgroup.version == 1 else "memory.current"
        charged = int(Path(cgroup.work_dir(key), usage).read_text())
        assert charged >= 32 * MIB, "the file's pages outlive their writer, still charged"
    finally:
        if os.path.exists(target):
            os.unlink(target)
        cgroup.remove()


def test_a_fork_loop_stops_at_the_pids_limit(parent: CgroupParent) -> None:
    cgroup = parent.create(_name(), memory_bytes=256 * MIB, pids_max=20, owner_uid=None)
    done = _run_in(cgroup, _where(cgroup), [sys.executable, "-c", FORK_LOOP])
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == 19  # 20 with the loop itself
    key = next(k for k in cgroup.tops if "pids" in k or k == "unified")
    assert int(Path(cgroup.work_dir(key), "pids.current").read_text()) == 19  # its children sleep on
    cgroup.remove()
    assert not cgroup.exists()


# -- killing and removing -----------------------------------------------------------------------------


def test_kill_all_ends_a_double_forked_daemon_and_remove_leaves_nothing(parent: CgroupParent, processes: list[subprocess.Popen[bytes]]) -> None:
    cgroup = parent.create(_name(), memory_bytes=256 * MIB, pids_max=50, owner_uid=None)
    agent = subprocess.Popen(["sleep", "60"])
    processes.append(agent)
    cgroup.place(agent.pid)
    for key in cgroup.tops:
        assert _cgroup_of(agent.pid)[key.split(",")[0]].endswith(f"/{cgroup.name}" if cgroup.version == 1 else f"/{cgroup.name}/agent")
    read, write = os.pipe()
    try:
        done = _run_in(cgroup, "cmd-1", [sys.executable, "-c", DAEMON, str(write)], extra_fds=(write,))
        os.close(write)
        assert done.returncode == 0, done.stderr
        daemon = int(os.read(read, 64))
    finally:
        os.close(read)
    pidfd = _pidfd_of(daemon, f"/{cgroup.name}/work/cmd-1")
    try:
        for top in cgroup.paths():  # cgroups the agent may have left, nested too
            os.makedirs(os.path.join(top, "work", "cmd-2", "deeper"))
        cgroup.kill_all()
        assert _ended(pidfd, 5), "the daemon outlived kill_all"
    finally:
        os.close(pidfd)
    assert agent.wait(timeout=5) == -signal.SIGKILL
    assert _all_procs(cgroup) == []
    cgroup.remove()
    assert [p for p in cgroup.paths() if os.path.exists(p)] == []
    cgroup.remove()  # again: nothing to do


def test_from_paths_removes_it_from_another_process(parent: CgroupParent) -> None:
    cgroup = parent.create(_name(), memory_bytes=256 * MIB, pids_max=50, owner_uid=None)
    read, write = os.pipe()
    try:
        done = _run_in(cgroup, "cmd-1", [sys.executable, "-c", DAEMON, str(write)], extra_fds=(write,))
        os.close(write)
        assert done.returncode == 0, done.stderr
        pidfd = _pidfd_of(int(os.read(read, 64)), cgroup.name)
    finally:
        os.close(read)
    try:
        saved = json.dumps(cgroup.paths())
        fresh = SandboxCgroup.from_paths(json.loads(saved))
        assert (fresh.version, fresh.tops, fresh.name) == (cgroup.version, cgroup.tops, cgroup.name)
        gc = (
            "import importlib.util, json, sys\n"
            "spec = importlib.util.spec_from_file_location('cgroups', sys.argv[1])\n"
            "module = sys.modules['cgroups'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "module.SandboxCgroup.from_paths(json.loads(sys.argv[2])).remove()\n"
        )
        done = subprocess.run([sys.executable, "-c", gc, str(MODULE), saved], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert _ended(pidfd, 5)
    finally:
        os.close(pidfd)
    assert not cgroup.exists() and not fresh.exists()
    fresh.remove()


def test_from_paths_refuses_what_is_not_a_sandbox_cgroup(parent: CgroupParent) -> None:
    some = next(iter(parent.dirs.values()))
    for paths in ([some], [os.path.dirname(some)], ["/tmp/sandboxes-x"], ["sandboxes-x"], [some + "/../sandboxes-x"]):
        with pytest.raises(ValueError):
            SandboxCgroup.from_paths(paths)
    with pytest.raises(ValueError):
        parent.create("not-prefixed", memory_bytes=MIB, pids_max=1, owner_uid=None)


def test_sweep_stale_removes_only_the_cgroups_of_gone_sandboxes(parent: CgroupParent) -> None:
    kept = parent.create(cgroups.cgroup_name("sb-kept"), memory_bytes=64 * MIB, pids_max=20, owner_uid=None)
    gone = parent.create(cgroups.cgroup_name("sb-gone"), memory_bytes=64 * MIB, pids_max=20, owner_uid=None)
    alive = {"sb-kept"}.__contains__
    assert sweep_stale(parent, alive) == []  # both younger than a minute: maybe being made
    assert sweep_stale(parent, alive, min_age=0) == [gone.name]
    assert kept.exists() and not gone.exists()
    kept.remove()


# -- ownership: a sandbox's own uid, a delegated parent ----------------------------------------------------------


V1_AGENT = """
import json, os, subprocess, sys, threading
fds = json.loads(sys.argv[1])
sys.stdin.readline()  # placed in the agent's cgroups by now
keys = sorted(k[: -len(".work")] for k in fds if k.endswith(".work"))
report = {}
for key in keys:
    os.mkdir("cmd-1", dir_fd=fds[key + ".work"])

def enter(directory_fd, path):
    fd = os.open(path, os.O_WRONLY, dir_fd=directory_fd)
    os.write(fd, b"0")  # 0: this thread
    os.close(fd)

def command():
    tid = threading.get_native_id()
    for key in keys:
        enter(fds[key + ".work"], "cmd-1/tasks")
    report["thread"] = open(f"/proc/self/task/{tid}/cgroup").read()
    report["leader"] = open(f"/proc/self/task/{os.getpid()}/cgroup").read()
    report["child"] = subprocess.run(["cat", "/proc/self/cgroup"], capture_output=True, text=True).stdout
    for key in keys:
        enter(fds[key + ".agent"], "tasks")
    report["back"] = open(f"/proc/self/task/{tid}/cgroup").read()

thread = threading.Thread(target=command)
thread.start()
thread.join()
print(json.dumps(report), flush=True)
"""


def test_v1_an_agent_on_the_sandbox_uid_runs_a_command_through_a_thread(parent: CgroupParent, processes: list[subprocess.Popen[bytes]]) -> None:
    """The agent's way to place a command in v1, with just what ``owner_uid`` is given."""
    if parent.version != 1:
        pytest.skip("threads are placed on their own in cgroup v1 only")
    cgroup = parent.create(_name(), memory_bytes=64 * MIB, pids_max=20, owner_uid=NOBODY)
    for top in cgroup.paths():
        assert os.stat(os.path.join(top, "work")).st_uid == NOBODY
        assert os.stat(os.path.join(top, "tasks")).st_uid == NOBODY
        assert os.stat(top).st_uid == 0
    assert os.stat(os.path.join(cgroup.work_dir("memory"), "memory.limit_in_bytes")).st_uid == 0
    assert os.stat(os.path.join(cgroup.work_dir("pids"), "pids.max")).st_uid == 0
    fds = cgroup.open_fds()
    agent = _start_agent_as_nobody(V1_AGENT, fds)
    processes.append(agent)
    cgroup.place(agent.pid)
    out, _ = agent.communicate(b"go\n", timeout=30)
    assert agent.returncode == 0
    report = json.loads(out)
    seen = {what: _parse(text) for what, text in report.items()}
    for hierarchy in ("memory", "pids"):
        agent_cgroup = "/" + os.path.relpath(cgroup.agent_dir(hierarchy), _v1_mount(hierarchy))
        command_cgroup = f"{agent_cgroup}/work/cmd-1"
        assert seen["thread"][hierarchy] == command_cgroup, "one thread moves"
        assert seen["leader"][hierarchy] == agent_cgroup, "the rest of the agent stays"
        assert seen["child"][hierarchy] == command_cgroup, "a child the moved thread forks starts in its cgroup"
        assert seen["back"][hierarchy] == agent_cgroup, "the thread goes back"
    cgroup.remove()


DELEGATED = """
import json, os, subprocess, sys
import cgroups
parent = cgroups.find_cgroup_parent()
report = {"describe": cgroups.describe(), "uid": os.getuid()}
cgroup = parent.create(cgroups.cgroup_name("delegated"), memory_bytes=64 << 20, pids_max=20, owner_uid=None)
report["paths"] = cgroup.paths()
agent = subprocess.Popen(["sleep", "60"])
cgroup.place(agent.pid)
report["agent"] = open(f"/proc/{agent.pid}/cgroup").read()
fds = cgroup.open_fds()
work = [fd for key, fd in fds.items() if key.endswith(".work")]
enter = (
    "import os, sys\\n"
    "for fd in map(int, sys.argv[1].split(',')):\\n"
    "    os.mkdir('cmd-1', dir_fd=fd)\\n"
    "    p = os.open('cmd-1/cgroup.procs', os.O_WRONLY, dir_fd=fd); os.write(p, b'0'); os.close(p)\\n"
    "print(open('/proc/self/cgroup').read(), flush=True)\\n"
    "b = bytearray(200 << 20); b[::4096] = bytes(len(b) // 4096)\\n"
)
done = subprocess.run([sys.executable, "-c", enter, ",".join(map(str, work))], pass_fds=work, capture_output=True, text=True)
report["command"] = done.stdout
report["command_rc"] = done.returncode
report["oom_kills"] = cgroup.oom_kills()
cgroup.remove()
report["agent_rc"] = agent.wait()
report["left"] = [p for p in cgroup.paths() if os.path.exists(p)]
print(json.dumps(report))
"""


def test_v1_a_delegated_parent_serves_an_ordinary_user(parent: CgroupParent, module_copy: str) -> None:
    if parent.version != 1:
        pytest.skip("delegating a v2 cgroup also needs the user's processes inside it: the v1 case is tested")
    relative = f"/sbtest-delegated-{os.urandom(4).hex()}"
    made = []
    try:
        for controller in ("memory", "pids"):  # an administrator's delegation: one cgroup path in both hierarchies
            directory = _v1_mount(controller) + relative
            if directory in made:
                continue
            os.mkdir(directory)
            made.append(directory)
            os.chown(directory, NOBODY, NOBODY)
        env = {cgroups.ENV_PARENT: relative, "PYTHONPATH": module_copy}
        done = subprocess.run(_as_nobody([_nobody_python(), "-c", DELEGATED], env), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
    finally:
        for directory in made:
            _remove_tree(directory)
    assert report["uid"] == NOBODY
    assert report["describe"].startswith(f"cgroup v1 (memory, pids) under {relative} ({cgroups.ENV_PARENT}=")
    for hierarchy in ("memory", "pids"):
        assert _parse(report["agent"])[hierarchy] == f"{relative}/sandboxes-delegated"
        assert _parse(report["command"])[hierarchy] == f"{relative}/sandboxes-delegated/work/cmd-1"
    assert report["command_rc"] == -signal.SIGKILL and report["oom_kills"] >= 1
    assert report["agent_rc"] == -signal.SIGKILL
    assert report["left"] == []


def _v1_mount(controller: str) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup" and controller in fields[dash + 3].split(",") and fields[3] == "/":
            return fields[4]
    pytest.skip(f"no cgroup v1 {controller} hierarchy mounted at its root")


# -- cgroup v2 without controllers: directories, placement, cgroup.kill ------------------------------------------

V2_AGENT = """
import json, os, sys, time
fds = json.loads(sys.argv[1])
sys.stdin.readline()  # placed in agent/ by now
report = {"before": open("/proc/self/cgroup").read()}
os.mkdir("cmd-1", dir_fd=fds["unified.work"])
fd = os.open("cmd-1/cgroup.procs", os.O_WRONLY, dir_fd=fds["unified.work"])
os.write(fd, b"0")
os.close(fd)
report["after"] = open("/proc/self/cgroup").read()
try:
    fd = os.open("cgroup.procs", os.O_WRONLY, dir_fd=fds["unified.agent"])
    os.write(fd, b"0")
    report["escape"] = "moved back into agent/"
except OSError as error:
    report["escape"] = type(error).__name__
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        time.sleep(120)
        os._exit(0)
    os._exit(0)
os.wait()
print(json.dumps(report), flush=True)
time.sleep(120)
"""


def _unified() -> tuple[str, str] | None:
    """The cgroup2 mount and this process's cgroup there."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2" and fields[3] == "/":
            own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
            return fields[4], fields[4] + own.rstrip("/")
    return None


def test_v2_directories_placement_and_cgroup_kill(
    make_parent: Callable[..., CgroupParent], processes: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What can be tested of v2 on a cgroup2 without the memory and pids controllers (a hybrid layout).

    Without them the limit files do not exist: the limits are tested on v1.
    """
    monkeypatch.delenv(cgroups.ENV_PARENT, raising=False)
    found = find_cgroup_parent()
    if found is not None and found.version == 2:
        pytest.skip("cgroup v2 is what the sandboxes use here: the tests above cover it, limits included")
    unified = _unified()
    if unified is None or not os.access(unified[1], os.W_OK):
        pytest.skip("no writable cgroup2 here")
    parent = make_parent({"unified": unified[1]}, 2, frozenset())
    cgroup = parent.create(_name(), memory_bytes=64 * MIB, pids_max=20, owner_uid=NOBODY)
    top = cgroup.tops["unified"]
    assert sorted(e for e in os.listdir(top) if os.path.isdir(os.path.join(top, e))) == ["agent", "work"]
    assert os.stat(os.path.join(top, "work")).st_uid == NOBODY
    assert os.stat(os.path.join(top, "work", "cgroup.procs")).st_uid == NOBODY
    assert os.stat(os.path.join(top, "cgroup.procs")).st_uid == NOBODY, "the common ancestor: v2 checks it to move"
    assert os.stat(os.path.join(top, "agent", "cgroup.procs")).st_uid == 0, "no way back out of the limits"
    fds = cgroup.open_fds()
    assert sorted(fds) == ["unified.agent", "unified.work"]
    agent = _start_agent_as_nobody(V2_AGENT, fds)
    processes.append(agent)
    cgroup.place(agent.pid)
    assert _cgroup_of(agent.pid)["unified"].endswith(f"/{cgroup.name}/agent")
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write(b"go\n")
    agent.stdin.flush()
    report = json.loads(agent.stdout.readline())
    assert report["before"].strip().endswith(f"/{cgroup.name}/agent")
    assert report["after"].strip().endswith(f"/{cgroup.name}/work/cmd-1")
    assert report["escape"] == "PermissionError"
    pids = [int(p) for p in Path(cgroup.work_dir("unified"), "cmd-1", "cgroup.procs").read_text().split()]
    assert agent.pid in pids and len(pids) == 2  # the agent (moved) and the daemon
    pidfds = [_pidfd_of(pid, cgroup.name) for pid in pids]
    try:
        cgroup.kill_all()
        assert all(_ended(fd, 5) for fd in pidfds)
    finally:
        for fd in pidfds:
            os.close(fd)
    assert "populated 0" in Path(top, "cgroup.events").read_text()
    assert cgroup.oom_kills() == 0  # no memory controller: nothing counted
    cgroup.remove()
    assert not os.path.exists(top)
    cgroup.remove()


def test_module_imports_alone() -> None:
    """The module runs from a copy, without the package (another process's gc, another user)."""
    spec = importlib.util.spec_from_file_location("cgroups_alone", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cgroups_alone"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["cgroups_alone"]
    assert module.PREFIX == cgroups.PREFIX
