"""User-mode networking with slirp4netns (sandboxes/providers/local/network.py), without the provider.

As root, each test puts a process alone in a fresh network namespace
(``unshare --net``), networks it with ``network.attach`` and probes from inside
the namespace with ``nsenter``. The process in the namespace holds the write
end of the exit pipe, as a sandbox does, so slirp4netns ends with it. The
probes run ``probe.py`` (written below) and report what each connection did.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandboxes.errors import ProviderError
from sandboxes.providers.local import network

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="run as root: the tests make network namespaces (unshare --net) and enter them (nsenter)"),
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns is not installed (apt-get install slirp4netns)"),
    pytest.mark.skipif(
        not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")), reason="needs unshare and nsenter (util-linux) and ip (iproute2)"
    ),
]

PROBE_PY = r'''
"""Run inside a network namespace: try each check given as JSON in argv[1], print what each did."""
import json, random, socket, struct, sys


def failed(error):
    return f"{type(error).__name__}: {error}"


def tcp(host, port, payload=""):
    with socket.socket() as conn:
        conn.settimeout(5)
        try:
            conn.connect((host, port))
            if not payload:
                return "connected"
            conn.sendall(payload.encode())
            return "reply:" + conn.recv(100).decode()
        except OSError as error:
            return failed(error)


def udp(host, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
        try:
            conn.sendto(b"probe", (host, port))
            return "sent"
        except OSError as error:
            return failed(error)


def unix(name):
    with socket.socket(socket.AF_UNIX) as conn:
        try:
            conn.connect(name)
            return "connected"
        except OSError as error:
            return failed(error)


def dns(server, name):
    """An A query by hand, so that nothing but this server (no nss module, no cache) can answer."""
    question = b"".join(bytes([len(part)]) + part.encode() for part in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    error = None
    for _ in range(3):
        ident = random.randrange(1 << 16)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as conn:
            conn.settimeout(3)
            try:
                conn.sendto(struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question, (server, 53))
                reply = conn.recv(4096)
            except OSError as caught:
                error = caught
                continue
        answered, flags, _, answers = struct.unpack(">HHHH", reply[:8])
        return {"id": answered == ident, "rcode": flags & 0xF, "answers": answers}
    return failed(error)


CHECKS = {"tcp": tcp, "udp": udp, "unix": unix, "dns": dns}
print(json.dumps([CHECKS[kind](*args) for kind, *args in json.loads(sys.argv[1])]))
'''

SCENARIO_PY = r'''
"""Network a fresh namespace with network.attach; print as JSON what its inside reached.

argv: MAPPING HOST_ADDRESS PROBE, MAPPING being "none" (a network namespace
only), "current" (and a user namespace mapping the caller's uid to itself, as
bubblewrap makes them) or "root" (one mapping it to uid 0, unshare -r).
"""
import json, os, random, socket, subprocess, sys, threading, time

from sandboxes.providers.local import network

mapping, host, probe = sys.argv[1:4]
result = {"unavailable": network.user_network_unavailable()}


def serve(server):
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"pong:" + conn.recv(100))


def quiet_port(server, host):
    """The test module's quiet_port (this script runs on its own): bound below the ephemeral range,
    where no parallel test's just-closed emulator port, still sought by its client, can be."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for port in random.sample(range(10000, max(low, 10001)), 200):
        try:
            server.bind((host, port))
            return port
        except OSError:
            continue
    raise SystemExit("no free port below the ephemeral range")


def ready(pid):
    """Whether unshare, done with the namespaces (and their uid and gid maps), is sleep now."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read() == "sleep\n"
    except OSError:
        return False


def reached(tcp, udp):
    """Whether a connection waits on the non-blocking ``tcp`` or a datagram on ``udp``."""
    try:
        tcp.accept()[0].close()
        return True
    except BlockingIOError:
        pass
    try:
        udp.recv(100)
        return True
    except BlockingIOError:
        return False


if result["unavailable"] is None:
    with socket.socket() as public, socket.socket() as loopback, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as loopback_udp:
        public.bind(("0.0.0.0", 0))
        public.listen()
        quiet_port(loopback, "127.0.0.1")
        loopback.listen()
        loopback.setblocking(False)
        quiet_port(loopback_udp, "127.0.0.1")
        loopback_udp.setblocking(False)
        threading.Thread(target=serve, args=(public,), daemon=True).start()
        exit_r, exit_w = os.pipe()
        flags = {"none": [], "current": ["--map-current-user"], "root": ["--map-root-user"]}[mapping]
        holder = subprocess.Popen(["unshare", *flags, "--net", "--", "sleep", "600"], pass_fds=(exit_w,), stderr=subprocess.PIPE)
        os.close(exit_w)
        slirp = None
        try:
            deadline = time.monotonic() + 10
            while holder.poll() is None and not ready(holder.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            if holder.poll() is not None:
                result["error"] = "unshare failed: " + holder.stderr.read().decode()
            else:
                started = time.perf_counter()
                slirp = network.attach(holder.pid, exit_fd=exit_r, in_user_namespace=mapping != "none")
                result["attach_ms"] = (time.perf_counter() - started) * 1000
                with open(f"/proc/{slirp.pid}/cmdline", "rb") as handle:
                    result["argv"] = handle.read().decode().split("\0")[:-1]
                if mapping == "none":
                    enter = ["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--"]
                else:
                    enter = ["nsenter", "--preserve-credentials", "--user", "--net", "--target", str(holder.pid), "--"]
                shown = subprocess.run([*enter, "ip", "-j", "addr", "show", "dev", "tap0"], capture_output=True, text=True, check=True)
                result["tap0"] = json.loads(shown.stdout)[0]
                port, lport, uport = public.getsockname()[1], loopback.getsockname()[1], loopback_udp.getsockname()[1]
                checks = [["tcp", host, port, "ping"], ["tcp", "10.0.2.2", port]]
                checks += [["tcp", target, lport] for target in ("127.0.0.1", "10.0.2.2", "10.0.2.3")]
                checks += [["udp", target, uport] for target in ("10.0.2.2", "10.0.2.3")]
                done = subprocess.run([*enter, sys.executable, probe, json.dumps(checks)], capture_output=True, text=True, check=True, timeout=120)
                result["probes"] = list(zip(checks, json.loads(done.stdout)))
                time.sleep(0.5)
                result["loopback_reached"] = reached(loopback, loopback_udp)
        finally:
            os.close(exit_r)
            holder.kill()
            holder.wait()
            holder.stderr.close()
            if slirp is not None:
                try:
                    result["slirp_status"] = slirp.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    slirp.kill()
                    result["slirp_status"] = f"still running, killed ({slirp.wait()})"
print(json.dumps(result))
'''


# -- helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit() -> Iterator[Path]:
    """A directory any user can read: probe.py, scenario.py and a copy of the module under test.

    The copy holds network.py and errors.py only: it imports without the
    project's dependencies, and the checkout may not be readable by nobody.
    """
    root = Path(tempfile.mkdtemp(prefix="sandboxes-network-", dir="/tmp"))
    try:
        local = root / "sandboxes" / "providers" / "local"
        local.mkdir(parents=True)
        for package in (root / "sandboxes", root / "sandboxes" / "providers", local):
            (package / "__init__.py").write_text("")
        shutil.copy(REPO / "sandboxes" / "errors.py", root / "sandboxes" / "errors.py")
        shutil.copy(REPO / "sandboxes" / "providers" / "local" / "network.py", local / "network.py")
        (root / "probe.py").write_text(PROBE_PY)
        (root / "scenario.py").write_text(SCENARIO_PY)
        for path in (root, *root.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _slirp_usable_by_root() -> None:
    reason = network.user_network_unavailable()
    if reason is not None:
        pytest.skip(reason)


@dataclass
class Namespace:
    """A process alone in a fresh network namespace, holding the only write end of the exit pipe."""

    process: subprocess.Popen[bytes]
    exit_r: int
    in_user_namespace: bool = False
    slirps: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def attach(self) -> subprocess.Popen[bytes]:
        slirp = network.attach(self.pid, exit_fd=self.exit_r, in_user_namespace=self.in_user_namespace)
        self.slirps.append(slirp)
        return slirp

    def close_exit_r(self) -> None:
        if self.exit_r >= 0:
            os.close(self.exit_r)
            self.exit_r = -1


@contextlib.contextmanager
def namespace(*unshare: str) -> Iterator[Namespace]:
    exit_r, exit_w = os.pipe()
    process = subprocess.Popen(["unshare", *unshare, "--net", "--", "sleep", "600"], pass_fds=(exit_w,), stdin=subprocess.DEVNULL)
    os.close(exit_w)
    made = Namespace(process, exit_r, in_user_namespace=bool(unshare))
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/comm").read_text() != "sleep\n":  # unshare is still making the namespaces
            assert process.poll() is None and time.monotonic() < deadline, "unshare did not make the namespaces"
            time.sleep(0.005)
        assert os.stat(f"/proc/{process.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
        yield made
    finally:
        made.close_exit_r()
        process.kill()
        process.wait()
        for slirp in made.slirps:  # ended by the exit pipe: its last writer is gone
            try:
                slirp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                slirp.kill()
                slirp.wait()


@pytest.fixture
def netns() -> Iterator[Namespace]:
    with namespace() as made:
        yield made


@pytest.fixture
def attached(netns: Namespace) -> Namespace:
    netns.attach()
    netns.close_exit_r()  # slirp4netns has its own copy
    return netns


def probe(kit: Path, pid: int, checks: list[list[Any]]) -> list[Any]:
    """Run the checks from inside the network namespace of ``pid``; what each did, in order."""
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", "--", sys.executable, "-I", "-S", str(kit / "probe.py"), json.dumps(checks)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def inside(pid: int, *argv: str) -> Any:
    """The JSON printed by ``argv`` (an ``ip -j`` command) run inside the network namespace of ``pid``."""
    done = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", *argv], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def host_address() -> str | None:
    """One of this host's own IPv4 addresses that is not loopback (nor in slirp4netns's 10.0.2.0/24)."""
    candidates = []
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=False, capture_output=True, text=True)
    for line in shown.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            candidates.append(fields[fields.index("inet") + 1].split("/")[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, contextlib.suppress(OSError):
        udp.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
        candidates.append(udp.getsockname()[0])
    for candidate in candidates:
        address = ipaddress.ip_address(candidate)
        if not (address.is_loopback or address.is_unspecified or address in ipaddress.ip_network("10.0.2.0/24")):
            return candidate
    return None


@contextlib.contextmanager
def echo_server(host: str) -> Iterator[tuple[int, list[str]]]:
    """A TCP server answering "pong:" and what it got; yields its port and the peers it served."""
    peers: list[str] = []
    with socket.socket() as server:
        server.bind((host, 0))
        server.listen()

        def serve() -> None:
            while True:
                try:
                    conn, peer = server.accept()
                except OSError:
                    return
                with conn:
                    peers.append(peer[0])
                    with contextlib.suppress(OSError):
                        conn.sendall(b"pong:" + conn.recv(100))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1], peers
        finally:
            server.shutdown(socket.SHUT_RDWR)
    thread.join(5)


def quiet_port(server: socket.socket, host: str) -> int:
    """Bind ``server`` on ``host`` to a free port below the ephemeral range, and return it.

    A port of the ephemeral range may have been, a moment ago, an emulator's of a
    parallel test, whose SDK (gRPC's channel) still reconnects to it: a listener
    there would count that client as the sandbox reaching the host.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(10000, max(low, 10001)), 200):
        try:
            server.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no free port below {low} on {host}")


def arrivals(tcp: socket.socket, udp: socket.socket | None = None) -> list[str]:
    """What waits on the non-blocking ``tcp`` (connections, each with the process it came from) and ``udp``."""
    found = []
    while True:
        try:
            conn, peer = tcp.accept()
        except BlockingIOError:
            break
        conn.close()
        if not isinstance(peer, tuple):  # a unix socket's
            found.append(f"a connection from {peer!r}")
            continue
        owner = subprocess.run(["ss", "-Htnp", "state", "all", f"( sport = :{peer[1]} )"], check=False, capture_output=True, text=True)
        found.append(f"a connection from {peer[0]}:{peer[1]} ({owner.stdout.strip() or 'its process is gone'})")
    while udp is not None:
        try:
            _, peer = udp.recvfrom(100)
        except BlockingIOError:
            break
        found.append(f"a datagram from {peer[0]}:{peer[1]}")
    return found


def slirp_children() -> list[int]:
    """This process's children that are slirp4netns, zombies included."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
                name = fields[0].split("(", 1)[1]
            except (OSError, IndexError):
                continue
            if name == "slirp4netns" and int(fields[1].split()[1]) == os.getpid():
                found.append(int(entry))
    return found


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` ("Z" for a zombie), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


# -- the network a sandbox gets --------------------------------------------------------------


def test_user_network_is_available_to_root_here() -> None:
    assert network.user_network_unavailable() is None
    assert network.RESOLV_CONF == "nameserver 10.0.2.3\n"


def test_tap0_is_up_with_the_guest_address(attached: Namespace) -> None:
    tap = inside(attached.pid, "ip", "-j", "addr", "show", "dev", "tap0")[0]
    assert "UP" in tap["flags"]
    assert tap["mtu"] == network.MTU
    assert [(a["local"], a["prefixlen"]) for a in tap["addr_info"] if a["family"] == "inet"] == [("10.0.2.100", 24)]
    routes = inside(attached.pid, "ip", "-j", "-4", "route", "show", "default")
    assert [(r.get("gateway"), r.get("dev")) for r in routes] == [("10.0.2.2", "tap0")]
    assert "UP" in inside(attached.pid, "ip", "-j", "link", "show", "dev", "lo")[0]["flags"]


def test_slirp4netns_runs_hardened_with_the_host_loopback_closed(attached: Namespace) -> None:
    argv = Path(f"/proc/{attached.slirps[0].pid}/cmdline").read_bytes().decode().split("\0")
    for flag in ("--configure", "--mtu=65520", "--disable-host-loopback", "--enable-seccomp", "--enable-sandbox"):
        assert flag in argv
    assert any(a.startswith("--exit-fd=") for a in argv) and any(a.startswith("--ready-fd=") for a in argv)
    environ = Path(f"/proc/{attached.slirps[0].pid}/environ").read_bytes()
    assert environ == b"", "slirp4netns gets a clean environment"
    assert os.getsid(attached.slirps[0].pid) == attached.slirps[0].pid, "in a session of its own"


def test_outbound_tcp_reaches_the_hosts_address(kit: Path, attached: Namespace) -> None:
    address = host_address()
    if address is None:
        pytest.skip("this host has no IPv4 address but loopback to connect to")
    with echo_server("0.0.0.0") as (port, peers):
        assert probe(kit, attached.pid, [["tcp", address, port, "ping"]]) == ["reply:pong:ping"]
    assert peers, "the host's server saw the sandbox's connection"


def test_dns_lookup_through_the_forwarder(kit: Path, attached: Namespace) -> None:
    try:
        socket.getaddrinfo("pypi.org", 443, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as error:
        pytest.skip(f"the host itself cannot resolve pypi.org ({error})")
    server = network.RESOLV_CONF.split()[1]
    [answer] = probe(kit, attached.pid, [["dns", server, "pypi.org"]])
    assert isinstance(answer, dict), answer
    assert answer["id"] and answer["rcode"] == 0 and answer["answers"] >= 1


# -- what it must not reach ---------------------------------------------------------------------


@pytest.mark.hostile
def test_host_loopback_is_unreachable(kit: Path, attached: Namespace) -> None:
    with socket.socket() as loopback, socket.socket() as everywhere, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        port, anywhere_port, udp_port = quiet_port(loopback, "127.0.0.1"), quiet_port(everywhere, "0.0.0.0"), quiet_port(udp, "127.0.0.1")
        loopback.listen()
        everywhere.listen()
        for server in (loopback, everywhere, udp):
            server.setblocking(False)
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # the server answers the host itself
            pass
        assert len(arrivals(loopback)) == 1

        checks = [["tcp", host, port] for host in ("127.0.0.1", "10.0.2.2", "10.0.2.3")]
        checks += [["tcp", "10.0.2.2", anywhere_port]]  # the gateway is no way to the host's own address either
        checks += [["udp", host, udp_port] for host in ("127.0.0.1", "10.0.2.2", "10.0.2.3")]
        results = probe(kit, attached.pid, checks)
        for check, result in zip(checks, results, strict=True):
            if check[0] == "tcp":
                assert result != "connected", f"{check} reached the host"
        time.sleep(0.5)  # let a relayed datagram arrive, if any was
        assert arrivals(loopback, udp) == [], "a probe reached the host's loopback"
        assert arrivals(everywhere) == []


@pytest.mark.hostile
def test_host_abstract_unix_socket_is_unreachable(kit: Path, attached: Namespace) -> None:
    name = f"\0sandboxes-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(name)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:  # the host reaches it
            client.connect(name)
            server.accept()[0].close()
        server.setblocking(False)
        [result] = probe(kit, attached.pid, [["unix", name]])
        assert result.startswith("ConnectionRefusedError"), result
        assert arrivals(server) == []


@pytest.mark.hostile
def test_dns_forwarder_is_no_door_to_a_loopback_resolver(kit: Path, tmp_path: Path) -> None:
    """With the host's resolver on loopback (systemd-resolved, dnsmasq), 10.0.2.3 leads to port 53 there and nowhere else.

    slirp4netns runs in a mount namespace whose /etc/resolv.conf names 127.0.0.1,
    and the sandbox tries that address's other ports through 10.0.2.3.
    """
    address = host_address() or pytest.skip("this host has no IPv4 address but loopback")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(kit), "LANG": "C.UTF-8"}
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    argv += [sys.executable, str(kit / "scenario.py"), "none", address, str(kit / "probe.py")]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert_contained(result, address)


def assert_contained(result: dict[str, Any], address: str) -> None:
    """What scenario.py reported: a working network that does not lead to the host's loopback."""
    assert result.get("unavailable") is None and "error" not in result, result
    assert [(a["local"], a["prefixlen"]) for a in result["tap0"]["addr_info"] if a["family"] == "inet"] == [("10.0.2.100", 24)]
    (outbound, answer), *others = result["probes"]
    assert outbound[1] == address and answer == "reply:pong:ping", "outbound TCP to the host's address works"
    for check, outcome in others:
        assert outcome != "connected", f"{check} reached the host"
    assert result["loopback_reached"] is False
    assert result["slirp_status"] == 0, "slirp4netns ends by itself with the namespace's last process"


# -- lifecycle ---------------------------------------------------------------------------------------


def test_slirp4netns_ends_when_the_exit_pipes_write_end_is_closed(netns: Namespace) -> None:
    slirp = netns.attach()
    netns.close_exit_r()
    time.sleep(0.3)
    assert slirp.poll() is None, "the namespace's process still holds the write end"
    netns.process.kill()  # the last holder of the write end
    netns.process.wait()
    assert slirp.wait(timeout=5) == 0


def test_slirp4netns_outlives_the_process_that_started_it(kit: Path, netns: Namespace) -> None:
    creator = (
        "import json, sys\n"
        "from sandboxes.providers.local import network\n"
        "slirp = network.attach(int(sys.argv[1]), exit_fd=int(sys.argv[2]), in_user_namespace=False)\n"
        "print(json.dumps(slirp.pid))\n"
    )
    env = {"PATH": SYSTEM_PATH, "PYTHONPATH": str(kit), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [sys.executable, "-c", creator, str(netns.pid), str(netns.exit_r)],
        check=False, pass_fds=(netns.exit_r,), capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    netns.close_exit_r()
    try:
        time.sleep(0.2)
        assert process_state(pid) not in (None, "Z"), "slirp4netns ended with its creator"
        assert b"slirp4netns" in Path(f"/proc/{pid}/cmdline").read_bytes()
        tap = inside(netns.pid, "ip", "-j", "addr", "show", "dev", "tap0")[0]
        assert "UP" in tap["flags"]
        netns.process.kill()
        netns.process.wait()
        deadline = time.monotonic() + 5
        while process_state(pid) not in (None, "Z"):  # its reaper now is init, whenever it gets to it
            assert time.monotonic() < deadline, "slirp4netns outlived the namespace"
            time.sleep(0.02)
    finally:
        if process_state(pid) not in (None, "Z") and b"slirp4netns" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, 9)


def test_ended_slirp4netns_processes_are_reaped(netns: Namespace) -> None:
    slirp = netns.attach()
    netns.close_exit_r()
    netns.process.kill()
    netns.process.wait()
    deadline = time.monotonic() + 5
    while process_state(slirp.pid) != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    network.reap()  # done at every attach too
    assert slirp.returncode == 0
    assert slirp.pid not in slirp_children()


def test_a_failure_is_a_provider_error_with_slirp4netns_output(netns: Namespace) -> None:
    first = netns.attach()
    with pytest.raises(ProviderError, match="TUNSETIFF") as caught:
        netns.attach()  # tap0 is taken there already
    assert "exited with status 1" in str(caught.value)
    assert slirp_children() == [first.pid], "the failed slirp4netns was killed and reaped"


def test_refuses_the_hosts_own_network_namespace() -> None:
    """Else slirp4netns would add tap0 to the host's own network, with a default route through it."""

    def host_has_tap0() -> bool:
        links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
        return any(link["ifname"] == network.TAP for link in links)

    if host_has_tap0():
        pytest.skip(f"the host has a {network.TAP} of its own")
    exit_r, exit_w = os.pipe()
    try:
        with pytest.raises(ProviderError, match="host's network namespace"):
            network.attach(os.getpid(), exit_fd=exit_r, in_user_namespace=False)
    finally:
        os.close(exit_r)
        os.close(exit_w)
    assert not host_has_tap0()
    assert slirp_children() == []


def test_exit_fd_must_be_the_read_end_of_a_pipe(netns: Namespace) -> None:
    exit_r, exit_w = os.pipe()
    try:
        with pytest.raises(ValueError, match="read end of a pipe"):
            network.attach(netns.pid, exit_fd=exit_w, in_user_namespace=False)
    finally:
        os.close(exit_r)
        os.close(exit_w)
    assert slirp_children() == []


# -- sandboxes in a user namespace of their own ------------------------------------------------------


def test_a_sandbox_in_its_own_user_namespace_as_root() -> None:
    with namespace("--user", "--map-root-user") as made:
        slirp = made.attach()
        made.close_exit_r()
        argv = Path(f"/proc/{slirp.pid}/cmdline").read_bytes().decode().split("\0")
        assert any(a.startswith("--userns-path=") for a in argv)
        tap = inside(made.pid, "ip", "-j", "addr", "show", "dev", "tap0")[0]
        assert [(a["local"], a["prefixlen"]) for a in tap["addr_info"] if a["family"] == "inet"] == [("10.0.2.100", 24)]


def as_nobody(kit: Path, *argv: str) -> list[str]:
    """``argv`` as user nobody, with only the module copy in ``kit`` importable."""
    env = [f"PATH={SYSTEM_PATH}", f"PYTHONPATH={kit}", "LANG=C.UTF-8"]
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "env", "-i", *env, *argv]


def system_python() -> str:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no /usr/bin/python3 for user nobody to run")
    return python


def run_scenario(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    if "error" in result and "unshare failed" in result["error"]:
        pytest.skip(f"an ordinary user cannot make a user namespace here: {result['error']}")
    return result


def test_an_ordinary_user_is_told_why_not_or_gets_a_network(kit: Path) -> None:
    """Where /dev/net/tun is root's alone (0600, as on this machine), an ordinary user is told why and how to fix it.

    Where it is usable by all, the ordinary user gets a working, contained network instead.
    """
    python = system_python()
    ask = "import json\nfrom sandboxes.providers.local import network\nprint(json.dumps(network.user_network_unavailable()))"
    done = subprocess.run(as_nobody(kit, python, "-c", ask), check=False, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    reason = json.loads(done.stdout)
    if reason is not None:
        assert "/dev/net/tun" in reason and "chmod 0666 /dev/net/tun" in reason, reason
        return
    address = host_address() or pytest.skip("this host has no IPv4 address but loopback")
    result = run_scenario(as_nobody(kit, python, str(kit / "scenario.py"), "current", address, str(kit / "probe.py")))
    assert_contained(result, address)


@pytest.mark.hostile
@pytest.mark.parametrize("mapping", ["current", "root"])
def test_an_ordinary_users_sandbox_gets_a_contained_network(kit: Path, mapping: str) -> None:
    """The unprivileged path for real, where the tun device is usable by all (made so in a private mount namespace).

    "current" maps the user to itself, as bubblewrap does: slirp4netns runs
    with seccomp only. "root" maps it to uid 0: slirp4netns sandboxes itself too.
    """
    if not os.path.exists(network.TUN):
        pytest.skip(f"{network.TUN} does not exist here")
    address = host_address() or pytest.skip("this host has no IPv4 address but loopback")
    device, mode = os.stat(network.TUN).st_rdev, os.stat(network.TUN).st_mode
    mountpoint = tempfile.mkdtemp(prefix="sandboxes-tun-", dir="/tmp")
    try:
        setup = 'mount -t tmpfs -o mode=0755 tmpfs "$0" && mknod -m 0666 "$0/tun" c "$1" "$2" && mount --bind "$0/tun" /dev/net/tun && shift 2 && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", setup, mountpoint, str(os.major(device)), str(os.minor(device))]
        argv += as_nobody(kit, system_python(), str(kit / "scenario.py"), mapping, address, str(kit / "probe.py"))
        result = run_scenario(argv)
    finally:
        os.rmdir(mountpoint)
    assert_contained(result, address)
    argv = result["argv"]
    assert "--disable-host-loopback" in argv and "--enable-seccomp" in argv
    assert ("--enable-sandbox" in argv) == (mapping == "root")
    assert "--netns-type=path" not in argv, "by pid: slirp4netns 1.2 sandboxes itself only so"
    assert os.stat(network.TUN).st_mode == mode, "the host's device is left as it was"
