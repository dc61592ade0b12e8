"""Hostile programs: what an LLM writes by mistake or on purpose.

Each must be contained in its own sandbox and leave the host unharmed. The
limits here are small so that a weak sandbox could not take the machine down.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from sandboxes import CircuitBreaker, ProviderError, RetryPolicy, SandboxConfig, SandboxError, SandboxNotFoundError, SharedHostNetworkWarning
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local.recycling import IDLE
from sandboxes.providers.local.state import remove_tree
from sandboxes.resilient import ResilientDriver
from tests.local.processes import agent_pid
from tests.local.processes import parent as _parent

pytestmark = [pytest.mark.anyio, pytest.mark.hostile]

MIB = 1024 * 1024
SMALL = {"max_processes": 64, "memory_mb": 256, "workspace_mb": 64, "tmp_mb": 32, "max_file_mb": 16}


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(**SMALL)


def _processes_with_marker(marker: str) -> list[int]:
    """Host pids whose command line carries ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _processes_in_namespace_of(pid: int) -> list[int]:
    """Host pids in the same pid namespace as ``pid`` (counted from outside the sandbox)."""
    try:
        namespace = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == namespace:
                    found.append(int(entry))
            except OSError:
                continue
    return found


async def test_fork_bomb_is_bounded_and_ends_with_the_sandbox(provider: LocalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    state = provider._load(info.id)
    assert state is not None
    await provider.execute_command(info.id, "bash -c 'bomb() { bomb | bomb & }; bomb' >/dev/null 2>&1 &")
    peak = 0
    for _ in range(40):  # counted on the host, every 50 ms, while the bomb runs
        peak = max(peak, len(_processes_in_namespace_of(state.pid)))
        await anyio.sleep(0.05)
    assert peak > SMALL["max_processes"] // 2, f"the bomb never got going ({peak} processes): the test measures nothing"
    assert peak <= SMALL["max_processes"] + 8, f"{peak} processes in a sandbox limited to {SMALL['max_processes']}"
    await provider.destroy_sandbox(info.id)
    assert len(_processes_in_namespace_of(state.pid)) <= 2, "the bomb outlived its lease"  # none, or a reset sandbox's init and agent
    IDLE.drain()
    assert _processes_in_namespace_of(state.pid) == []
    assert subprocess.run(["true"]).returncode == 0, "the host can no longer start processes"


async def test_memory_bomb_fails_inside(provider: LocalProvider, box: str) -> None:
    hog = "x = bytearray(1024 * 1024 * 1024); print('allocated')"
    result = await provider.execute_command(box, ["python3", "-c", hog], timeout=30)
    assert not result.success
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr or result.exit_code >= 128


async def test_disk_filler_hits_the_workspace_cap(provider: LocalProvider, box: str) -> None:
    result = await provider.execute_command(box, "for i in 1 2 3 4 5 6 7 8 9 10; do head -c 15000000 /dev/zero > f$i || exit 9; done", timeout=60)
    assert result.exit_code == 9
    assert "No space left" in result.stderr
    tmp = await provider.execute_command(box, "head -c 50000000 /dev/zero > /tmp/fill", timeout=60)
    assert not tmp.success
    # The sandbox still works once the hog is removed.
    await provider.execute_command(box, "rm -f f* /tmp/fill")
    assert (await provider.execute_command(box, "echo ok > small && cat small")).stdout == "ok\n"


async def test_single_file_size_limit(provider: LocalProvider, box: str) -> None:
    result = await provider.execute_command(box, "head -c 20000000 /dev/zero > big", timeout=30)
    assert not result.success
    size = await provider.execute_command(box, "stat -c %s big")
    assert int(size.stdout) <= SMALL["max_file_mb"] * 1024 * 1024


async def test_output_flood_is_capped(box: str) -> None:
    provider = LocalProvider()
    result = await provider.execute_command(box, "yes flood", timeout=2)
    assert result.timed_out
    assert result.truncated
    assert len(result.stdout) <= 1024 * 1024 + 100
    assert result.stdout.startswith("flood\n")


def _serve_once(host: str) -> tuple[socket.socket, int]:
    """A host server that greets whoever connects (in a thread), and its port."""
    server = socket.create_server((host, 0))
    server.settimeout(20)

    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"hello from host\n")
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _host_address() -> str:
    """This host's own non-loopback address (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))
        return probe.getsockname()[0]


def _connect_probe(address: str, port: int) -> list[str]:
    code = f"import socket; s = socket.create_connection(({address!r}, {port}), timeout=3); print(s.recv(100).decode(), end='')"
    return ["python3", "-c", code]


ABSTRACT_PROBE = "import socket; s = socket.socket(socket.AF_UNIX); s.connect('\\0sandboxes-host-abstract'); print('CONNECTED')"


async def test_no_network_by_default_and_its_own_network_when_asked(provider: LocalProvider) -> None:
    loopback, loopback_port = _serve_once("127.0.0.1")
    everywhere, everywhere_port = _serve_once("0.0.0.0")
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0sandboxes-host-abstract")
    abstract.listen(1)
    try:
        closed = await provider.create_sandbox(SandboxConfig())
        try:
            result = await provider.execute_command(closed.id, _connect_probe("127.0.0.1", loopback_port), timeout=10)
            assert not result.success and "hello from host" not in result.stdout
            dns = await provider.execute_command(closed.id, ["python3", "-c", "import socket; socket.getaddrinfo('pypi.org', 443)"], timeout=10)
            assert not dns.success
        finally:
            await provider.destroy_sandbox(closed.id)
        own_network = provider.describe_network().startswith("network=True: own network")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SharedHostNetworkWarning)
            opened = await provider.create_sandbox(SandboxConfig(network=True))
        try:
            shared = [w for w in caught if issubclass(w.category, SharedHostNetworkWarning)]
            if not own_network:  # slirp4netns cannot run here: said in a warning and the metadata
                assert shared and opened.metadata["network_mode"] == "host"
                result = await provider.execute_command(opened.id, _connect_probe("127.0.0.1", loopback_port), timeout=10)
                assert result.stdout == "hello from host\n", result.describe()
                return
            assert not shared and opened.metadata["network_mode"] == "slirp4netns"
            outbound = await provider.execute_command(opened.id, _connect_probe(_host_address(), everywhere_port), timeout=10)
            assert outbound.stdout == "hello from host\n", outbound.describe()
            for address in ("127.0.0.1", "10.0.2.2"):
                blocked = await provider.execute_command(opened.id, _connect_probe(address, loopback_port), timeout=10)
                assert "hello from host" not in blocked.stdout, address
            reach = await provider.execute_command(opened.id, ["python3", "-c", ABSTRACT_PROBE], timeout=10)
            assert "CONNECTED" not in reach.stdout
        finally:
            await provider.destroy_sandbox(opened.id)
    finally:
        for server in (loopback, everywhere, abstract):
            server.close()


async def test_host_environment_and_secrets_are_invisible(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_supersecret_value")
    monkeypatch.setenv("MY_HOST_SECRET", "host-only-secret")
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text("top secret")
    provider = LocalProvider()
    info = await provider.create_sandbox(SandboxConfig(env={"VISIBLE": "yes"}))
    try:
        result = await provider.execute_command(info.id, f"env; cat /proc/1/environ; cat /proc/1/cmdline; cat {secret_file}; cat /etc/shadow; ls /work /home")
        everything = result.stdout + result.stderr
        assert "VISIBLE=yes" in result.stdout
        assert "supersecret" not in everything
        assert "host-only-secret" not in everything
        assert "top secret" not in everything
        shadow = await provider.execute_command(info.id, "cat /etc/shadow")
        assert shadow.exit_code != 0
    finally:
        await provider.destroy_sandbox(info.id)


async def test_workspace_escape_and_system_writes_fail(provider: LocalProvider, box: str) -> None:
    result = await provider.execute_command(box, "echo x > /usr/evil; echo x > /etc/evil; ln -s / root; cat root/work/main/README.md; ls /root/.ssh")
    assert result.exit_code != 0
    assert not os.path.exists("/usr/evil") and not os.path.exists("/etc/evil")
    escape = await provider.execute_command(box, "cd ..; cd ..; pwd; ls")
    assert "work" not in escape.stdout.split()


async def test_no_mounts_no_privileges(provider: LocalProvider, box: str) -> None:
    result = await provider.execute_command(box, "mount -t tmpfs none /tmp 2>&1; echo rc=$?; grep -E 'CapEff|NoNewPrivs' /proc/self/status; id -u")
    lines = result.stdout.splitlines()
    assert "rc=0" not in lines
    assert "CapEff:\t0000000000000000" in lines
    assert "NoNewPrivs:\t1" in lines
    assert lines[-1] != "0" or os.geteuid() != 0, "host root must not be root in the sandbox"


async def test_host_processes_cannot_be_signalled(provider: LocalProvider, box: str) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        result = await provider.execute_command(box, f"kill -9 {victim.pid}; pkill sleep; echo done")
        assert victim.poll() is None, "a sandbox killed a host process"
        assert "done" in result.stdout
        listing = await provider.execute_command(box, "ps -e -o pid=,comm=")
        assert "pytest" not in listing.stdout and str(os.getpid()) not in listing.stdout.split()
    finally:
        victim.kill()
        victim.wait()


async def test_the_inits_descriptors_lead_to_no_host_file(provider: LocalProvider, box: str, tmp_path: Path) -> None:
    # As an ordinary user bubblewrap's init shares the sandbox's uid: its stdio
    # must be nothing on the host that a program could write (or fill) through /proc/1/fd.
    marker = "init-fd-marker-5521"
    tries = f"for fd in 0 1 2; do (echo {marker} >> /proc/1/fd/$fd) 2>&1; done; echo tried"  # in subshells: SIGPIPE may end them
    result = await provider.execute_command(box, tries)
    assert result.stdout.strip().endswith("tried"), result.describe()
    state = provider.root
    written = [path for path in state.rglob("*") if path.is_file() and not path.is_symlink() and marker.encode() in _head(path)]
    assert written == [], f"a program wrote into host files through /proc/1/fd: {written}"


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except OSError:
        return b""


async def test_kill_everything_harms_only_its_own_sandbox(provider: LocalProvider) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    bystander = await provider.create_sandbox(SandboxConfig())
    info = await provider.create_sandbox(SandboxConfig())
    try:
        command = "sleep 100 & kill -9 -1; echo survived"
        if AGENT_IS_INIT:
            # The agent shares the workload's uid, but is its namespace's init: kill -9 -1
            # ends every other process of this sandbox (not its caller) and nothing else.
            assert (await provider.execute_command(info.id, command)).stdout == "survived\n"
            left = (await provider.execute_command(info.id, "ps -e -o comm=")).stdout.split()
            assert "sleep" not in left and left.count("python3") == 1, left  # the agent, alive, and this command
        else:
            # As root, the agent took the workload's uid: killing every process of that uid
            # ends this sandbox, and only this one.
            with pytest.raises(SandboxNotFoundError):
                await provider.execute_command(info.id, command)
        assert victim.poll() is None, "a sandbox killed a host process"
        assert (await provider.execute_command(bystander.id, "echo fine")).stdout == "fine\n"
    finally:
        await provider.destroy_sandbox(info.id)
        await provider.destroy_sandbox(bystander.id)
        victim.kill()
        victim.wait()


async def test_daemons_do_not_outlive_the_sandbox(provider: LocalProvider) -> None:
    marker = "daemon-marker-9931"
    info = await provider.create_sandbox(SandboxConfig())
    script = (
        f"nohup sh -c 'while true; do sleep 1; done # {marker}' >/dev/null 2>&1 & "
        f"setsid sh -c 'trap \"\" TERM HUP; exec sleep 1000 # {marker}' >/dev/null 2>&1 < /dev/null & "
        f"python3 -c \"import os,time\nif os.fork()==0:\n  os.setsid()\n  if os.fork()==0:\n    os.execvp('sh',['sh','-c','sleep 999 # {marker}'])\" "
    )
    result = await provider.execute_command(info.id, script)
    assert result.success, result.describe()
    # They persist between commands...
    alive = await provider.execute_command(info.id, f"ps -eo args | grep -c '[#] {marker}'")
    assert int(alive.stdout) >= 2
    assert _processes_with_marker(marker)
    # ...and end with the sandbox.
    await provider.destroy_sandbox(info.id)
    assert _processes_with_marker(marker) == []


@pytest.mark.parametrize("limits", ["cgroup", "subreaper"])
async def test_timeout_kills_the_whole_process_tree(limits: str) -> None:
    """With a cgroup, the command's own cgroup is killed; without one, the agent is a
    subreaper and kills what it adopted from the command as well as its tree."""
    provider = LocalProvider(**SMALL, cgroup_parent=None if limits == "cgroup" else "off")
    box = (await provider.create_sandbox(SandboxConfig())).id
    try:
        await _timeout_kills_everything_it_started(provider, box)
        # Orphans that end are reaped: no zombies pile up in the sandbox.
        await provider.execute_command(box, "for i in $(seq 30); do (sh -c 'exit 0' &); done")
        await anyio.sleep(2.5)
        zombies = await provider.execute_command(box, "ps -eo stat= | grep -c '^Z'")
        assert zombies.stdout.strip() == "0", zombies.describe()
    finally:
        await provider.destroy_sandbox(box)


async def _timeout_kills_everything_it_started(provider: LocalProvider, box: str) -> None:
    marker = "tree-marker-5512"
    daemon = f"import os\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n    os.execvp('sh', ['sh', '-c', 'sleep 100 # {marker}'])"
    command = (
        f"sh -c 'trap \"\" TERM; sleep 100 # {marker}' & sh -c 'sleep 100 # {marker}' & setsid sh -c 'sleep 100 # {marker}' & python3 -c \"{daemon}\"; wait"
    )
    result = await provider.execute_command(box, command, timeout=1)
    assert result.timed_out
    left = await provider.execute_command(box, f"ps -eo args | grep -c '[#] {marker}'")
    assert left.stdout.strip() == "0"


async def test_sandboxes_cannot_see_each_other(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig())
    second = await provider.create_sandbox(SandboxConfig())
    try:
        await provider.execute_command(first.id, "echo mine > private.txt; sleep 30 & echo started")
        peek = await provider.execute_command(second.id, "cat private.txt; ps -e -o comm=")
        assert "mine" not in peek.stdout
        assert "sleep" not in peek.stdout
    finally:
        await provider.destroy_sandbox(first.id)
        await provider.destroy_sandbox(second.id)


async def test_lifetime_ends_the_sandbox(provider: LocalProvider) -> None:
    import anyio

    info = await provider.create_sandbox(SandboxConfig(lifetime=1))
    await provider.execute_command(info.id, "sleep 100 >/dev/null 2>&1 &")
    await anyio.sleep(2.5)
    assert await provider.get_sandbox(info.id) is None


def test_agent_runs_under_host_python_only() -> None:
    # The agent is stdlib-only: it must import under -S (no site-packages).
    agent_dir = os.path.join(os.path.dirname(sys.modules[LocalProvider.driver_class.__module__].__file__ or ""))
    code = f"import sys; sys.path.insert(0, {agent_dir!r}); import _wire"
    assert subprocess.run([sys.executable, "-S", "-c", code]).returncode == 0


async def test_the_agent_holds_no_host_secret_and_as_root_cannot_be_read(provider: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOST_SECRET_TOKEN", "s3cr3t-4242")
    info = await provider.create_sandbox(SandboxConfig())  # started with the secret in the host's env
    try:
        agent = await provider.execute_command(info.id, "pgrep -f agent.main")
        pid = agent.stdout.split()[0]
        peek = await provider.execute_command(info.id, f"cat /proc/{pid}/environ /proc/{pid}/cmdline; head -c 16 /proc/{pid}/mem")
        assert "s3cr3t-4242" not in peek.stdout
        if os.geteuid() == 0:  # the agent left root for the sandbox's uid: the kernel made it undumpable
            assert "Permission denied" in peek.stderr
    finally:
        await provider.destroy_sandbox(info.id)


# -- the host's side of the sandbox: state, sockets, credentials ---------------------------


@pytest.fixture
def fake_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with a tool in ~/.local/bin and one in ~/.cargo/bin beside credentials, and the
    sandboxes' state under ~/.local/state, as an ordinary user's machine has them.

    Under /var/tmp, not /tmp: a sandbox's own /tmp would hide binds under the host's.
    """
    home = Path(tempfile.mkdtemp(prefix="sandboxes-home-", dir="/var/tmp"))
    for tool, output in (("bun", "stub-bun"), ("deno", "stub-deno")):
        directory = home / (".local/bin" if tool == "bun" else ".cargo/bin")
        directory.mkdir(parents=True)
        (directory / tool).write_text(f"#!/bin/sh\necho {output}\n")
        (directory / tool).chmod(0o755)
    (home / ".cargo/credentials.toml").write_text('[registry]\ntoken = "cargo-secret-token"\n')
    (home / ".local/share").mkdir()
    (home / ".local/share/secret.txt").write_text("local-share-secret")
    home.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home}/.local/bin:{home}/.cargo/bin:{os.environ['PATH']}")
    for variable in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "SANDBOXES_LOCAL_STATE_DIR", "SANDBOXES_LOCAL_CACHE_DIR"):
        monkeypatch.delenv(variable, raising=False)
    try:
        yield home
    finally:
        remove_tree(home)


@pytest.mark.parametrize("bind_home", [False, True], ids=["tools", "home-bound"])
async def test_no_sandbox_reaches_another_sandboxs_socket_or_host_credentials(fake_home: Path, bind_home: bool) -> None:
    provider = LocalProvider(**SMALL, extra_binds=(str(fake_home),) if bind_home else ())
    victim = await provider.create_sandbox(SandboxConfig())
    attacker = await provider.create_sandbox(SandboxConfig())
    try:
        state = provider.root
        assert state.is_relative_to(fake_home) and (state / victim.id / "run" / "agent.sock").exists()
        tools = await provider.execute_command(attacker.id, "bun; deno")
        assert tools.stdout == "stub-bun\nstub-deno\n", tools.describe()  # the tools were found and bound
        probe = (
            f"ls -a {fake_home}/.local {fake_home}/.cargo; cat {fake_home}/.cargo/credentials.toml {fake_home}/.local/share/secret.txt; "
            f"ls -R {state}; find / -xdev -name 'agent.sock' 2>/dev/null; "
            f"python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{state}/{victim.id}/run/agent.sock'); print('CONNECTED')\""
        )
        result = await provider.execute_command(attacker.id, probe)
        seen = result.stdout + result.stderr
        if not bind_home:  # a home the caller binds on purpose shows its files, but never the state
            assert "cargo-secret-token" not in seen and "local-share-secret" not in seen
        assert "agent.sock" not in result.stdout and "CONNECTED" not in seen and victim.id not in result.stdout
        if not bind_home:  # only the tools' own bin directories are bound
            listing = await provider.execute_command(attacker.id, f"ls -A {fake_home}/.local {fake_home}/.cargo")
            assert listing.stdout.split() == [f"{fake_home}/.cargo:", "bin", f"{fake_home}/.local:", "bin"], listing.stdout
        assert (await provider.execute_command(victim.id, "echo intact")).stdout == "intact\n"
    finally:
        await provider.destroy_sandbox(attacker.id)
        await provider.destroy_sandbox(victim.id)


DEVICES = {f"/dev/{name}" for name in ("null", "zero", "full", "random", "urandom", "tty")}


async def test_no_host_directory_is_writable_from_inside(provider: LocalProvider, box: str) -> None:
    """Every writable mount inside is one of the sandbox's own capped tmpfs mounts."""
    mounts = await provider.execute_command(box, "cat /proc/self/mountinfo")
    writable = {}
    for line in mounts.stdout.splitlines():
        fields = line.split()
        point, options, fstype = fields[4], fields[5], fields[fields.index("-") + 1]
        if fstype == "devtmpfs" and point in DEVICES:
            continue  # the device nodes bwrap binds: a write goes to the device, never to a directory
        if "rw" in options.split(","):
            writable[point] = fstype
    assert set(writable) <= {"/workspace", "/tmp", "/dev/shm", "/dev/pts", "/dev/mqueue", "/proc"}, writable
    assert all(fstype in ("tmpfs", "devpts", "mqueue", "proc") for fstype in writable.values()), writable
    attempt = await provider.execute_command(box, "for d in / /run /etc /dev /root /usr /var; do touch $d/planted 2>/dev/null && echo WROTE $d; done; ls /run")
    assert "WROTE" not in attempt.stdout, attempt.stdout
    assert "sandbox\n" not in attempt.stdout  # no /run/sandbox: the state dir is never bound in


async def test_root_and_shm_are_capped() -> None:
    provider = LocalProvider(**{**SMALL, "max_file_mb": 64}, shm_mb=8)
    info = await provider.create_sandbox(SandboxConfig())
    try:
        fill = await provider.execute_command(info.id, "head -c 20000000 /dev/zero > /dev/shm/fill; echo rc=$?; du -k /dev/shm/fill; mkdir /big", timeout=30)
    finally:
        await provider.destroy_sandbox(info.id)
    assert fill.stdout.splitlines()[0] != "rc=0" and "No space left" in fill.stderr, fill.describe()
    assert int(fill.stdout.split()[-2]) <= 8 * 1024 + 4
    assert "Read-only file system" in fill.stderr


async def test_a_deep_tree_inside_does_not_break_destroy_list_or_gc() -> None:
    deep = "python3 -c \"import os\nfor _ in range(1200):\n  os.mkdir('d'); os.chdir('d')\nprint('deep')\""
    for isolation in ("bwrap", "process"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # process isolation warns that it isolates nothing
            provider = LocalProvider(**SMALL, isolation=isolation)  # type: ignore[arg-type]
        info = await provider.create_sandbox(SandboxConfig())
        made = await provider.execute_command(info.id, deep)
        assert made.stdout == "deep\n", made.describe()
        await provider.execute_command(info.id, "cd /tmp 2>/dev/null || exit 0; " + deep.replace("'d'", "'t'"))
        assert info.id in [found.id for found in await provider.list_sandboxes()]
        assert await provider.destroy_sandbox(info.id)
        assert not (provider.root / info.id).exists()


# -- reads and downloads ----------------------------------------------------------------------


async def test_reads_take_regular_files_only_and_never_past_the_cap(box: str) -> None:
    provider = LocalProvider(**SMALL, max_file_bytes=MIB)
    await provider.execute_command(box, "ln -s /dev/zero zero; mkfifo fifo; head -c 2000000 /dev/zero > big; mkdir tree; cp big tree/")
    with anyio.fail_after(10):
        with pytest.raises(OSError, match="Not a regular file") as zero:
            await provider.read_file(box, "zero")
        with pytest.raises(OSError, match="Not a regular file"):
            await provider.read_file(box, "fifo")
        with pytest.raises(IsADirectoryError):
            await provider.read_file(box, "tree")
        with pytest.raises(OSError) as big:
            await provider.read_file(box, "big")
        assert big.value.errno == errno.EFBIG and "max_file_bytes" in str(big.value)
        with pytest.raises(OSError) as tree, tempfile.TemporaryDirectory() as target:
            await provider.download_file(box, "tree", target)
        assert tree.value.errno == errno.EFBIG
    assert not isinstance(zero.value, SandboxError)
    status = await provider.read_file(box, "/proc/self/status")  # st_size 0: read to its end all the same
    assert b"Pid:" in status
    growing = await provider.execute_command(box, "yes > growing 2>/dev/null & sleep 0.3; echo started")
    assert growing.stdout == "started\n"
    with anyio.fail_after(20), pytest.raises(OSError) as endless:
        await provider.read_file(box, "growing")
    assert endless.value.errno == errno.EFBIG


async def test_errors_from_sandbox_content_are_the_callers_and_never_open_the_circuit(provider: LocalProvider) -> None:
    driver = ResilientDriver(provider.driver, RetryPolicy(max_attempts=3, base_delay=0.01), CircuitBreaker("local", failure_threshold=2))
    resilient = provider.with_driver(driver)
    info = await resilient.create_sandbox(SandboxConfig())
    try:
        await resilient.execute_command(info.id, "ln -s loop loop")
        for _ in range(3):
            with pytest.raises(OSError) as loop:
                await resilient.read_file(info.id, "loop/x")
            assert loop.value.errno == errno.ELOOP and not isinstance(loop.value, SandboxError)
            with pytest.raises(OSError) as readonly:
                await resilient.write_file(info.id, "/usr/planted", b"x")
            assert readonly.value.errno in (errno.EROFS, errno.EACCES)
        assert driver.breaker.state == "closed" and driver.breaker.failures == 0
        # Even with the circuit open, destroying is never refused, and the sandbox is gone.
        for _ in range(2):
            driver.breaker.record_failure(ProviderError("outage", provider="local"))
        assert driver.breaker.state == "open"
        assert await resilient.destroy_sandbox(info.id)
        assert await provider.get_sandbox(info.id) is None
    finally:
        await provider.destroy_sandbox(info.id)


# -- the agent is out of the workload's reach -------------------------------------------------

AGENT_PID = "$PPID"  # a command's shell is the agent's child
AGENT_IS_INIT = os.geteuid() != 0  # for an ordinary user (bwrap --as-pid-1)


@pytest.mark.skipif(not AGENT_IS_INIT, reason="as root, bubblewrap's init (root's) is the namespace's init, and the agent shares the workload's uid")
async def test_no_signal_from_inside_reaches_the_agent(provider: LocalProvider, box: str) -> None:
    # As the namespace's init, the agent gets only the signals it handles, and it handles none.
    for name in ("STOP", "INT", "TERM", "HUP", "USR1", "KILL"):
        sent = await provider.execute_command(box, f"kill -{name} {AGENT_PID} && sleep 0.1 && echo sent", timeout=5)
        assert sent.stdout == "sent\n" and not sent.timed_out, sent.describe()
    assert (await provider.execute_command(box, "echo alive", timeout=5)).stdout == "alive\n"


async def test_a_stopped_agent_cannot_hold_a_command_or_the_lifetime(provider: LocalProvider) -> None:
    info = await provider.create_sandbox(SandboxConfig())
    marker = "stopped-agent-marker-3141"
    await provider.execute_command(info.id, f"sh -c 'sleep 300 # {marker}' >/dev/null 2>&1 &")
    # A hung agent (stopped from the host here: nothing inside can stop it) holds no
    # command: the host gives up on it at the command's timeout and ends the sandbox.
    os.kill(agent_pid(provider, info.id), signal.SIGSTOP)
    started = time.monotonic()
    result = await provider.execute_command(info.id, "sleep 30", timeout=3)
    elapsed = time.monotonic() - started
    assert result.timed_out and result.exit_code == 124, result.describe()
    assert elapsed < 3 + 2 + 1, f"took {elapsed:.1f}s"
    with anyio.fail_after(5):  # killed at once; the kernel ends its processes a moment later
        while await provider.get_sandbox(info.id) is not None or _processes_with_marker(marker):
            await anyio.sleep(0.05)


async def test_the_lifetime_is_kept_from_outside_the_sandbox(provider: LocalProvider) -> None:
    marker = "lifetime-marker-2718"
    info = await provider.create_sandbox(SandboxConfig())
    await provider.execute_command(info.id, f"sh -c 'sleep 300 # {marker}' >/dev/null 2>&1 &")
    # At the end of the lifetime the watchdog outside (which nothing inside can reach)
    # kills bubblewrap, and the sandbox's init (the agent, or bubblewrap's own as root)
    # gets its parent-death signal: every process of the sandbox ends with it, even a
    # stopped agent. Here bubblewrap is killed as the watchdog would.
    agent = agent_pid(provider, info.id)
    os.kill(agent, signal.SIGSTOP)
    bubblewrap = agent
    while _comm(_parent(bubblewrap)) != "timeout":
        bubblewrap = _parent(bubblewrap)
    os.kill(bubblewrap, signal.SIGKILL)
    with anyio.fail_after(5):
        while _processes_with_marker(marker) or await provider.get_sandbox(info.id) is not None:
            await anyio.sleep(0.05)


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()


async def test_the_agent_cannot_be_traced_or_read_in_either_mode(provider: LocalProvider, box: str) -> None:
    pid = (await provider.execute_command(box, f"echo {AGENT_PID}")).stdout.strip()
    assert pid.isdigit()
    peek = await provider.execute_command(box, f"head -c 16 /proc/{pid}/mem; cat /proc/{pid}/environ; ls /proc/{pid}/fd; grep -c . /proc/{pid}/maps")
    assert peek.stdout.strip() in ("", "0"), peek.describe()
    assert peek.stderr.count("Permission denied") >= 3, peek.stderr


# -- the kernel's attack surface ----------------------------------------------------------------

SYSCALL_PROBE = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
calls = {"keyctl": (250, 0), "bpf": (321, 0), "userfaultfd": (323, 0), "io_uring_setup": (425, 8),
         "open_by_handle_at": (304, -100), "perf_event_open": (298, 0), "unshare_user": (272, 0x10000000)}
for name, (number, arg) in calls.items():
    buf = ctypes.create_string_buffer(256)
    second = ctypes.cast(buf, ctypes.c_void_p) if name in ("io_uring_setup", "open_by_handle_at") else 0
    result = libc.syscall(number, arg, second, 0, 0, 0)
    print(name, "ALLOWED" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")
async def test_kernel_interfaces_that_break_sandboxes_are_refused(provider: LocalProvider, box: str) -> None:
    result = await provider.execute_command(box, ["python3", "-c", SYSCALL_PROBE])
    answers = dict(line.split() for line in result.stdout.splitlines())
    assert set(answers) == {"keyctl", "bpf", "userfaultfd", "io_uring_setup", "open_by_handle_at", "perf_event_open", "unshare_user"}, result.describe()
    assert "ALLOWED" not in answers.values(), answers
    nested = await provider.execute_command(box, "unshare -Ur true; echo rc=$?; grep Seccomp: /proc/self/status")
    assert "rc=0" not in nested.stdout.split() and "Seccomp:\t2" in nested.stdout, nested.describe()


async def test_no_cgroup_release_agent_or_cgroup_fs_to_abuse(provider: LocalProvider, box: str) -> None:
    """The classic cgroup v1 escape: mount a hierarchy, set release_agent to a host program."""
    attack = "ls /sys/fs/cgroup 2>&1; mkdir -p /tmp/cg && mount -t cgroup -o memory cgroup /tmp/cg 2>&1; echo mount=$?; stat -f -c fstype=%T /tmp/cg"
    result = await provider.execute_command(box, attack)
    lines = result.stdout.splitlines()
    assert "mount=0" not in lines and "fstype=tmpfs" in lines, result.describe()  # still the plain /tmp


async def test_sysv_ipc_is_not_shared_between_sandboxes(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig())
    second = await provider.create_sandbox(SandboxConfig())
    try:
        made = await provider.execute_command(first.id, "ipcmk -M 4096 -p 0666 && ipcmk -Q -p 0666 && ipcs -m -q")
        assert made.success and "0x" in made.stdout, made.describe()
        seen = await provider.execute_command(second.id, "ipcs -m -q | grep -c 0x")
        assert seen.stdout.strip() == "0", seen.describe()
        host = subprocess.run(["ipcs", "-m", "-q"], capture_output=True, text=True).stdout
        keys = [line.split()[0] for line in made.stdout.splitlines() if line.startswith("0x")]
        assert not any(key in host for key in keys if key != "0x00000000")
    finally:
        await provider.destroy_sandbox(first.id)
        await provider.destroy_sandbox(second.id)


# -- memory and processes per sandbox ---------------------------------------------------------


async def test_memory_is_limited_per_sandbox_shared_mappings_and_many_processes_included(provider: LocalProvider, box: str) -> None:
    info = await provider.get_sandbox(box)
    assert info is not None
    if info.metadata["limits"] != "per sandbox (cgroup)":
        pytest.skip(f"no cgroup here: {info.metadata['limits']}")
    shared = "import mmap\nm = mmap.mmap(-1, 600 << 20)\nfor i in range(0, 600 << 20, 4096): m[i] = 1\nprint('filled')"
    result = await provider.execute_command(box, ["python3", "-c", shared], timeout=60)
    assert result.oom_killed and result.exit_code == 137 and "filled" not in result.stdout, result.describe()
    many = "for i in 1 2 3 4; do python3 -c 'x = bytearray(100 << 20); import time; time.sleep(3)' & done; wait; echo survived"
    crowd = await provider.execute_command(box, many, timeout=60)
    assert crowd.oom_killed, crowd.describe()  # four processes of 100 MiB do not fit in 256 MiB together
    alone = await provider.execute_command(box, ["python3", "-c", "x = bytearray(200 << 20)"], timeout=60)
    assert alone.success and not alone.oom_killed, alone.describe()  # its cgroup may be one the OOM killer visited before
    # Files in /workspace and /tmp are memory too: 90 MiB of them leave no room for those 200 MiB.
    fill = "for i in 1 2 3 4; do head -c 15000000 /dev/zero > f$i; done; for i in 1 2; do head -c 15000000 /dev/zero > /tmp/f$i; done"
    assert (await provider.execute_command(box, fill)).success
    squeezed = await provider.execute_command(box, ["python3", "-c", "x = bytearray(200 << 20)"], timeout=60)
    assert squeezed.oom_killed, squeezed.describe()
    assert (await provider.execute_command(box, "rm -f /tmp/f* f*; echo alive")).stdout == "alive\n"


async def test_a_timeout_ends_its_own_commands_processes_never_those_an_earlier_command_left(provider: LocalProvider, box: str) -> None:
    # Each command's processes are in a cgroup of their own; an empty one serves a later command,
    # one that a daemon still lives in never does, so a timeout there cannot reach that daemon.
    left = await provider.execute_command(box, "setsid sleep 300 > /dev/null 2>&1 & echo started")
    assert left.stdout == "started\n", left.describe()
    for _ in range(3):
        assert (await provider.execute_command(box, "true")).success
        timed_out = await provider.execute_command(box, "setsid sleep 400 > /dev/null 2>&1 & sleep 60", timeout=0.5)
        assert timed_out.timed_out, timed_out.describe()
    alive = await provider.execute_command(box, "pgrep -x sleep -a || true")
    assert "sleep 300" in alive.stdout and "sleep 400" not in alive.stdout, alive.describe()
    await provider.execute_command(box, "pkill -x sleep || true")


async def test_links_through_the_agents_proc_self_lead_nowhere(provider: LocalProvider) -> None:
    """/proc/self/fd/N, resolved by the agent, is the agent's: its descriptors on the host's
    cgroups must not let a sandbox read or write another sandbox's cgroup, nor start a command there."""
    victim = await provider.create_sandbox(SandboxConfig())
    attacker = await provider.create_sandbox(SandboxConfig())
    host_dir = Path(tempfile.mkdtemp(prefix="sandboxes-host-only-", dir="/var/tmp"))
    host_dir.chmod(0o755)
    host_only = host_dir / "program"  # a program only the host has (a binary: a script's path is opened again by its interpreter)
    shutil.copy("/bin/echo", host_only)
    host_only.chmod(0o755)
    try:
        await provider.execute_command(attacker.id, "for i in $(seq 3 40); do ln -s /proc/self/fd/$i/../.. up$i; ln -s /proc/self/fd/$i fd$i; done")
        leaked = []
        for i in range(3, 41):
            for path in (
                f"up{i}/sandboxes-{victim.id}/work/memory.limit_in_bytes",
                f"up{i}/sandboxes-{victim.id}/work/pids.max",
                f"fd{i}/pids.max",
                f"fd{i}/memory.limit_in_bytes",
            ):
                try:
                    leaked.append((path, await provider.read_file(attacker.id, path)))
                except OSError:
                    pass
                try:
                    await provider.write_file(attacker.id, path, b"1")
                    leaked.append((path, b"written"))
                except OSError:
                    pass
            target = Path(tempfile.mkdtemp(prefix="sandboxes-deputy-"))
            try:
                await provider.download_file(attacker.id, f"up{i}", target)
            except OSError:
                pass
            finally:
                found = [p.name for p in target.rglob("*")] if target.exists() else []
                remove_tree(target)
            assert not any(name.startswith(("cgroup.", "memory.", "pids.")) for name in found), found[:10]
            ran = await provider.execute_command(attacker.id, "pwd; ls", cwd=f"up{i}")
            assert ran.exit_code != 0 or "cgroup.procs" not in ran.stdout, ran.describe()
            climbed = await provider.execute_command(attacker.id, [f"./fd{i}/" + "../" * 24 + str(host_only).lstrip("/"), "HOST-ONLY"])
            assert "HOST-ONLY" not in climbed.stdout, climbed.describe()
        assert leaked == []
        assert (await provider.execute_command(victim.id, "echo intact")).stdout == "intact\n"
    finally:
        remove_tree(host_dir)
        await provider.destroy_sandbox(attacker.id)
        await provider.destroy_sandbox(victim.id)


async def test_a_command_that_closes_its_output_still_times_out_alone(provider: LocalProvider, box: str) -> None:
    started = time.monotonic()
    result = await provider.execute_command(box, "exec >&- 2>&-; sleep 30", timeout=2)
    assert result.timed_out and result.exit_code == 124 and time.monotonic() - started < 3.5, result.describe()
    assert "stopped answering" not in result.stderr  # the agent answered: the sandbox lives on
    assert (await provider.execute_command(box, "echo alive")).stdout == "alive\n"
    quiet = await provider.execute_command(box, "exec >&- 2>&-; sleep 0.3; exit 5", timeout=10)
    assert (quiet.exit_code, quiet.timed_out) == (5, False)


async def test_path_lookup_cannot_probe_the_hosts_files(provider: LocalProvider, box: str) -> None:
    """PATH entries through the agent's /proc/self/fd/N: found or not, the answer is the same."""
    host_dir = Path(tempfile.mkdtemp(prefix="sandboxes-host-path-", dir="/var/tmp"))
    host_dir.chmod(0o755)
    shutil.copy("/bin/true", host_dir / "true")
    up = "/.." * 24
    try:
        answers = set()
        for fd in range(3, 40):
            for directory in (str(host_dir), "/var/tmp/no-such-dir"):
                result = await provider.execute_command(box, ["true"], env={"PATH": f"/proc/self/fd/{fd}{up}{directory}:/usr/bin"})
                answers.add((result.exit_code, result.stderr))
        assert len(answers) == 1, answers
    finally:
        remove_tree(host_dir)
