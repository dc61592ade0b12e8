"""A recycled sandbox is as new: one lease tries to leave something for the next, and the next looks.

Each case runs its ``leave`` script in a lease, lets the sandbox go, takes
the next lease of the same shape and runs ``look``, which prints ``clean``
only when nothing of the first lease is there. What a reset can undo, it
undoes, and the same sandbox is leased again; what it cannot (an IPC object's
id sequence, traffic counters, an agent whose limits were lowered), it
detects, and the next lease gets a new sandbox. Never a dirty one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from sandboxes import SandboxConfig, SandboxNotFoundError
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local import _wire as wire
from sandboxes.providers.local.driver import LocalDriver
from sandboxes.providers.local.recycling import IDLE
from tests.local.processes import agent_pid

pytestmark = [pytest.mark.anyio, pytest.mark.hostile]

RECYCLES = True  # as root and as an ordinary user
SMALL = {"max_processes": 128, "memory_mb": 512, "workspace_mb": 64, "tmp_mb": 32, "shm_mb": 16, "max_file_mb": 16}
INCARNATION = "cut -d' ' -f22 /proc/1/stat"  # the start time of the sandbox's init: the same sandbox, or a new one
AGENT = "$PPID"  # the agent starts each command's shell
PY = "python3 -c"


@dataclass(frozen=True)
class Leftover:
    name: str
    leave: str
    look: str
    recycled: bool = True  # False: the reset cannot undo it, and must say so


NO_PROCESSES = (  # none but this one's ancestors: its shell, the agent, init
    'python3 -c "import os\nmine, pid = set(), os.getpid()\nwhile pid:\n  mine.add(pid)\n'
    "  pid = int(open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[1])\n"
    "left = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in mine]\n"
    "print('clean' if not left else [open(f'/proc/{p}/cmdline', 'rb').read() for p in left])\""
)
CLEAN_FILES = 'test -z "$(find /workspace /tmp /dev/shm /dev/mqueue -mindepth 1)" && echo clean || ls -laR /workspace /tmp /dev/shm /dev/mqueue'
LEFTOVERS = [
    Leftover(
        "files with odd names and modes in every writable place",
        "for d in /workspace /tmp /dev/shm; do"
        '  printf secret > "$d/-rf"; printf secret > "$d/$(printf \'new\\nline\')"; printf secret > "$d/$(printf \'\\377\\376\')";'
        "  printf secret > $d/.hidden; printf secret > $d/locked; chmod 000 $d/locked; ln -s /etc/passwd $d/link; mkfifo $d/fifo;"
        "  mkdir -p $d/a/b/c; printf secret > $d/a/b/c/f; chmod 000 $d/a/b/c/f; chmod 000 $d/a/b/c; chmod 300 $d/a/b; chmod 600 $d/a;"
        "  mkdir $d/sticky; chmod 1000 $d/sticky; truncate -s 10M $d/sparse;"
        "done; echo left",
        CLEAN_FILES,
    ),
    Leftover(
        "a directory tree 400 levels deep",
        f"{PY} \"import os\nfor _ in range(400):\n  os.mkdir('d'); os.chdir('d')\nopen('f','w').write('secret')\nos.chmod('.', 0)\" && echo left",
        CLEAN_FILES,
    ),
    Leftover(
        "the writable places' own modes and extended attributes",
        f"chmod 000 /workspace; {PY} \"import os; os.setxattr('/workspace', 'user.secret', b'secret')\" 2>/dev/null; echo left",
        'test "$(stat -c %a /workspace)" = 755 && test -z "$(getfattr -d /workspace 2>/dev/null)" && echo clean',
    ),
    Leftover(
        "the modes and times of /dev/pts, its ptmx and /dev/mqueue (an ordinary user owns them)",
        "touch -m -d @6210279 /dev/pts /dev/pts/ptmx /dev/mqueue; chmod 2705 /dev/pts; chmod 0604 /dev/pts/ptmx; chmod 5321 /dev/mqueue; echo left",
        "test \"$(stat -c %a /dev/pts /dev/pts/ptmx /dev/mqueue | tr '\\n' ' ')\" = '755 666 1777 '"
        ' && test -z "$(stat -c %Y /dev/pts /dev/pts/ptmx /dev/mqueue | grep -x 6210279)" && echo clean',
    ),
    Leftover(
        "background processes: setsid, double-forked, deaf to SIGTERM, stopped, zombie",
        "setsid sh -c 'trap \"\" TERM HUP; exec sleep 1000' </dev/null >/dev/null 2>&1 &"
        f" {PY} \"import os\nif os.fork() == 0:\n  os.setsid()\n  if os.fork() == 0:\n    os.execvp('sleep', ['sleep', '999'])\";"
        " sleep 998 & kill -STOP $!;"
        f' {PY} "import os, time\nif os.fork() == 0: os._exit(0)\ntime.sleep(1000)" </dev/null >/dev/null 2>&1 &'
        " sleep 0.2; echo left",
        NO_PROCESSES,
    ),
    Leftover(
        "a process that forks without end while the reset runs",
        "setsid sh -c 'while :; do sleep 100 & done' </dev/null >/dev/null 2>&1 & sleep 0.3; echo left",
        NO_PROCESSES,
    ),
    Leftover(
        "a listening socket, and a file in /dev/shm that holds a secret",
        f"setsid {PY} \"import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', 8765)); s.listen(); time.sleep(1000)\""
        " </dev/null >/dev/null 2>&1 & printf secret > /dev/shm/sem.x; sleep 0.3; echo left",
        f"{PY} \"import socket; s = socket.socket(); s.bind(('127.0.0.1', 8765)); print('clean')\" && test ! -e /dev/shm/sem.x",
    ),
    Leftover(
        "environment variables and umask set by a command",
        "export SECRET=1; umask 077; echo SECRET=1 >> /workspace/.profile; echo left",
        'test -z "$SECRET" && test "$(umask)" = 0022 && echo clean',
    ),
    Leftover(
        "System V shared memory, semaphores and message queues",
        "ipcmk -M 4096 >/dev/null && ipcmk -S 1 >/dev/null && ipcmk -Q >/dev/null && echo left",
        "test -z \"$(tail -n +2 /proc/sysvipc/shm /proc/sysvipc/sem /proc/sysvipc/msg | grep -v '^==>' | grep .)\" && echo clean",
        recycled=False,
    ),
    Leftover(
        "a POSIX message queue",
        f"{PY} \"import ctypes, os; rt = ctypes.CDLL('librt.so.1', use_errno=True); "
        "assert rt.mq_open(b'/secret', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0, ctypes.get_errno()\" && echo left",
        'test -z "$(ls -A /dev/mqueue)" && echo clean',
        recycled=False,
    ),
    Leftover(
        "traffic on the loopback (its counters and TIME_WAIT sockets outlive any reset)",
        f"{PY} \"import socket\ns = socket.socket(); s.bind(('127.0.0.1', 8766)); s.listen()\nc = socket.create_connection(('127.0.0.1', 8766))\n"
        "a, _ = s.accept(); c.sendall(b'x' * 1000); a.recv(10); a.close(); c.close()\" && echo left",
        "test \"$(awk '/lo:/ {print $2}' /proc/net/dev)\" = 0 && echo clean",
        recycled=False,
    ),
    Leftover(
        "the agent's resource limits lowered (prlimit)",
        f'{PY} "import resource; resource.prlimit({AGENT}, resource.RLIMIT_NOFILE, (64, 64))" && echo left',
        'test "$(ulimit -n)" = 1024 && echo clean',
        recycled=False,
    ),
    Leftover(
        "the agent reniced, and every process of the user",
        f'{PY} "import os; os.setpriority(os.PRIO_USER, 0, 19)" && echo left',
        'test "$(nice)" = 0 && echo clean',
        recycled=False,
    ),
    Leftover(
        "the agent's scheduling policy",
        f'{PY} "import os; os.sched_setscheduler({AGENT}, os.SCHED_IDLE, os.sched_param(0))" && echo left',
        f"{PY} \"import os; print('clean' if os.sched_getscheduler(0) == os.SCHED_OTHER else os.sched_getscheduler(0))\"",
        recycled=False,
    ),
    Leftover(
        "the agent's CPUs",
        f'{PY} "import os; os.sched_setaffinity({AGENT}, {{min(os.sched_getaffinity(0))}})" && echo left',
        f"{PY} \"import os; print('clean' if len(os.sched_getaffinity(0)) == {len(os.sched_getaffinity(0))} else os.sched_getaffinity(0))\"",
        recycled=len(os.sched_getaffinity(0)) == 1,  # one CPU: nothing changed
    ),
    Leftover(
        "the agent's scheduler time slice (sched_setattr)",
        f'{PY} "import ctypes, os, struct; libc = ctypes.CDLL(None, use_errno=True)\n'
        "number = {'x86_64': 314, 'aarch64': 274}[os.uname().machine]\n"
        f"record = ctypes.create_string_buffer(struct.pack('IIQiIQQQII', 56, 0, 0, 0, 0, 12345678, 0, 0, 0, 0), 56)\n"
        f'assert libc.syscall(number, {AGENT}, record, 0) == 0, ctypes.get_errno()" && echo left',
        f'{PY} "import ctypes, os, struct; libc = ctypes.CDLL(None)\n'
        "record = ctypes.create_string_buffer(56); libc.syscall({'x86_64': 315, 'aarch64': 275}[os.uname().machine], 0, record, 56, 0)\n"
        "print('clean' if struct.unpack('IIQiIQQQII', record.raw)[5] != 12345678 else 'the slice of the last lease')\"",
        recycled=False,
    ),
    Leftover(
        "IP counters moved by packets that never reach an interface (unroutable sends)",
        f'{PY} "import socket\nfor _ in range(77):\n  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n'
        "  try: s.sendto(b'x', ('10.1.2.3', 9))\n  except OSError: pass\" && echo left",
        "test \"$(awk '/^Ip:/ {print $13}' /proc/net/snmp | tail -1)\" = 0 && echo clean",
        recycled=False,
    ),
    Leftover(
        "the writable places' times (when the last lease last wrote)",
        "touch -d '2001-01-01' /workspace /tmp /dev/shm 2>/dev/null; echo left",
        'test -z "$(stat -c %y /workspace /tmp /dev/shm | grep ^2001)" && echo clean',
    ),
    Leftover(
        "inode flags on the writable places (chattr +d +A)",
        "chattr +d +A /workspace /tmp 2>/dev/null; echo left",
        "test -z \"$(lsattr -d /workspace /tmp 2>/dev/null | cut -d' ' -f1 | tr -d -- '-e')\" && echo clean || lsattr -d /workspace /tmp",
    ),
    Leftover(
        "an IPv6 flow label that lingers after its socket",
        f"{PY} \"import socket, struct\nrequest = socket.inet_pton(socket.AF_INET6, '5ec::42') + struct.pack('!I', 0xABCDE)"
        " + struct.pack('=BBHHHI', 0, 255, 1, 150, 150, 0)\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        's.setsockopt(socket.IPPROTO_IPV6, 32, request)" && echo left',
        'test -z "$(tail -n +2 /proc/net/ip6_flowlabel)" && echo clean',
        recycled=False,
    ),
    Leftover(
        "the message queue directory's time (when the last lease made a queue)",
        f"{PY} \"import ctypes, os; rt = ctypes.CDLL('librt.so.1'); os.close(rt.mq_open(b'/t', os.O_CREAT | os.O_RDWR, 0o600, None));"
        " rt.mq_unlink(b'/t')\" && sleep 2 && echo left",
        "test $(( $(date +%s) - $(stat -c %Y /dev/mqueue) )) -le 1 && echo clean",  # reset just now, not made 2 s ago
    ),
    Leftover(
        "the agent's I/O priority",
        f'{PY} "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); '
        f"assert libc.syscall(251 if os.uname().machine == 'x86_64' else 30, 1, {AGENT}, 3 << 13) == 0, ctypes.get_errno()\" && echo left",
        f'{PY} "import ctypes, os; libc = ctypes.CDLL(None); '
        "print('clean' if libc.syscall(252 if os.uname().machine == 'x86_64' else 31, 1, 0) >> 13 != 3 else 'idle class')\"",
        recycled=False,
    ),
]


@pytest.fixture
async def provider() -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(**SMALL)
    yield provider
    IDLE.drain()


async def _incarnation(provider: LocalProvider, sandbox_id: str) -> str:
    return (await provider.execute_command(sandbox_id, INCARNATION)).stdout.strip()


@pytest.mark.parametrize("leftover", LEFTOVERS, ids=[leftover.name for leftover in LEFTOVERS])
async def test_the_next_lease_finds_nothing_of_the_last(provider: LocalProvider, leftover: Leftover) -> None:
    first = await provider.create_sandbox(SandboxConfig(labels={"lease": "first"}))
    born = await _incarnation(provider, first.id)
    left = await provider.execute_command(first.id, leftover.leave)
    assert left.stdout.strip().endswith("left"), left.describe()
    await provider.destroy_sandbox(first.id)
    second = await provider.create_sandbox(SandboxConfig(labels={"lease": "second"}))
    try:
        assert second.id != first.id and second.labels == {"lease": "second"}
        assert (await _incarnation(provider, second.id) == born) is (leftover.recycled and RECYCLES), "recycled when it must not be, or not"
        looked = await provider.execute_command(second.id, leftover.look)
        assert looked.stdout.strip() == "clean", looked.describe()
    finally:
        await provider.destroy_sandbox(second.id)


async def test_what_the_last_holder_asks_during_or_after_the_reset_never_reaches_the_next_lease(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig())
    born = await _incarnation(provider, first.id)
    planted = "setsid sh -c 'sleep 1; echo from-the-last-lease > /tmp/planted; exec sleep 1000' </dev/null >/dev/null 2>&1 & echo ok"
    refused = 0

    async def keep_asking() -> None:  # a holder whose commands race its own destroy
        nonlocal refused
        for _ in range(200):
            try:
                await provider.execute_command(first.id, planted)
            except SandboxNotFoundError:
                refused += 1
                return

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(keep_asking)
        await anyio.sleep(0.2)
        await provider.destroy_sandbox(first.id)
    assert refused == 6
    second = await provider.create_sandbox(SandboxConfig())
    try:
        assert (await _incarnation(provider, second.id) == born) is RECYCLES
        looked = await provider.execute_command(second.id, f"sleep 1.5; test ! -e /tmp/planted && {NO_PROCESSES}")
        assert looked.stdout.strip() == "clean", looked.describe()
    finally:
        await provider.destroy_sandbox(second.id)


async def test_a_connection_of_the_last_lease_is_refused_in_the_next(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig())
    born = await _incarnation(provider, first.id)
    driver = provider.driver
    assert isinstance(driver, LocalDriver)
    early = await driver._connect(first.id)  # made in the first lease, used in the second
    await provider.destroy_sandbox(first.id)
    second = await provider.create_sandbox(SandboxConfig())
    try:
        assert (await _incarnation(provider, second.id) == born) is RECYCLES
        request = {"op": "exec", "argv": ["sh", "-c", "echo planted > /tmp/planted"], "env": {}, "cwd": None, "timeout": 5.0, "stdin": False}
        async with early:  # the reset closed it; were it open, the agent would refuse it (LeaseEnded)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await early.send(wire.request_frame(request))
            answers = [kind for kind, _ in await _answers(driver, early)]
        assert wire.EXIT not in answers and wire.STDOUT not in answers, answers
        looked = await provider.execute_command(second.id, "test ! -e /tmp/planted && echo clean")
        assert looked.stdout.strip() == "clean", looked.describe()
    finally:
        await early.aclose()
        await provider.destroy_sandbox(second.id)


async def _answers(driver: LocalDriver, stream: Any) -> list[tuple[bytes, bytes]]:
    return [frame async for frame in driver._frames(stream)]


async def test_a_lease_is_a_new_sandbox_to_its_holder(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig(env={"ONLY_FIRST": "1"}, labels={"who": "first"}, lifetime=30))
    await provider.destroy_sandbox(first.id)
    with pytest.raises(SandboxNotFoundError):  # the last holder's id no longer reaches it
        await provider.execute_command(first.id, "true")
    assert await provider.get_sandbox(first.id) is None
    started = time.time()
    second = await provider.create_sandbox(SandboxConfig(env={"ONLY_SECOND": "2"}, labels={"who": "second"}, lifetime=300))
    try:
        seen = await provider.execute_command(second.id, 'echo "${ONLY_FIRST:-none} ${ONLY_SECOND:-none} $(pwd) $HOME"')
        assert seen.stdout == "none 2 /workspace /workspace\n"
        assert second.expires_at is not None and second.expires_at >= started + 299  # the lifetime is re-armed for the lease
        assert [info.id for info in await provider.list_sandboxes({"who": "first"})] == []
        assert [info.id for info in await provider.list_sandboxes({"who": "second"})] == [second.id]
    finally:
        await provider.destroy_sandbox(second.id)


async def test_a_lease_whose_lifetime_the_sandbox_cannot_hold_gets_a_new_one(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig(lifetime=20))  # its watchdog: 40 s
    born = await _incarnation(provider, first.id)
    await provider.destroy_sandbox(first.id)
    second = await provider.create_sandbox(SandboxConfig(lifetime=60))
    try:
        assert await _incarnation(provider, second.id) != born
    finally:
        await provider.destroy_sandbox(second.id)


async def test_shapes_are_not_mixed_and_fresh_turns_recycling_off() -> None:
    recycling, fresh = LocalProvider(**SMALL), LocalProvider(**SMALL, recycle=False)
    try:
        first = await recycling.create_sandbox(SandboxConfig())
        born = await _incarnation(recycling, first.id)
        await recycling.destroy_sandbox(first.id)
        bigger = await recycling.create_sandbox(SandboxConfig(memory_mb=600))  # another memory limit: another shape
        not_recycled = await fresh.create_sandbox(SandboxConfig())
        assert born not in {await _incarnation(recycling, bigger.id), await _incarnation(fresh, not_recycled.id)}
        await fresh.destroy_sandbox(not_recycled.id)
        assert IDLE.count() == int(RECYCLES)  # the first one, still idle; the fresh provider's was destroyed
        await recycling.destroy_sandbox(bigger.id)
    finally:
        IDLE.drain()


async def test_a_killed_agent_is_never_recycled(provider: LocalProvider) -> None:
    first = await provider.create_sandbox(SandboxConfig())
    os.kill(agent_pid(provider, first.id), signal.SIGKILL)  # from the host, as nothing inside may
    with pytest.raises(SandboxNotFoundError):
        await provider.execute_command(first.id, "true")
    await provider.destroy_sandbox(first.id)
    assert IDLE.count() == 0
