"""LocalDriver: real bubblewrap sandboxes on this machine, no daemon, no account."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import marshal
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel

from ..._cache import cache_root
from ...driver import TOOLCHAINS, Event, Exit, Output, cold_argv, warm_of
from ...errors import ProviderError, ProviderUnavailable, SandboxNotFoundError, SharedHostNetworkWarning
from ...models import DEFAULT_COMMAND_TIMEOUT_SECONDS, DEFAULT_LIFETIME_SECONDS, FRESH_ENV, WARM_ENV, SandboxConfig, SandboxInfo
from . import _wire as wire
from . import network as network_setup
from ._connection import AgentConnection
from ._connection import connect as connect_agent
from .cgroups import SandboxCgroup, cgroup_name, find_cgroup_parent
from .cgroups import describe as cgroups_describe
from .etc import etc_snapshot
from .layout import WORKSPACE, Toolchains, agent_argv, agent_bundle, agent_python, bwrap_argv, discover_toolchains, find_bwrap, rustup_home_of, sandbox_env
from .recycling import IDLE, IDLE_SECONDS, LEASE_MARGIN, LIFETIMES
from .recycling import end as end_idle
from .seccomp import seccomp_filter
from .state import SandboxState, age_of, allocate_uid, process_start, reassign_uid, release_uid, remove_state, remove_tree, state_root

MIB = 1024 * 1024
READY_TIMEOUT = 30.0
AGENT_GRACE = 2.0  # beyond a command's timeout, before the host gives up on the agent
AS_HEADROOM = 64 << 30
RESET_TIMEOUT = 15.0  # the agent's own waits for processes to go are 3 s each
log = logging.getLogger("sandboxes")
Isolation = Literal["bwrap", "process"]

# The processes this process started for each sandbox (its watchdog and bwrap,
# its slirp4netns), by sandbox id: kept beyond the provider that made them (a
# kept sandbox outlives it), reaped once they end.
_CHILDREN: dict[str, list[subprocess.Popen[bytes]]] = {}


class LocalDriver:
    """Sandboxes isolated by bubblewrap, reachable from any process on this host."""

    name = "local"

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        isolation: Isolation = "bwrap",
        memory_mb: int = 2048,
        max_processes: int = 512,
        max_file_mb: int = 1024,
        max_open_files: int = 1024,
        workspace_mb: int = 1024,
        tmp_mb: int = 512,
        shm_mb: int = 64,
        max_file_bytes: int = 1 << 30,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        extra_binds: tuple[str, ...] = (),
        cgroup_parent: str | None = None,
        recycle: bool | None = None,
        warm_python: bool | None = None,
    ) -> None:
        if isolation not in ("bwrap", "process"):
            raise ValueError(f"isolation must be 'bwrap' or 'process', not {isolation!r}")
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self.isolation: Isolation = isolation
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.max_file_mb = max_file_mb
        self.max_open_files = max_open_files
        self.workspace_mb = workspace_mb
        self.tmp_mb = tmp_mb
        self.shm_mb = shm_mb
        self.max_file_bytes = max_file_bytes
        self.lifetime = lifetime
        self.command_timeout = command_timeout
        self.extra_binds = tuple(extra_binds)
        self.cgroup_parent = cgroup_parent  # else $SANDBOXES_CGROUP_PARENT, else this process's own cgroup
        # A destroyed sandbox is reset and leased again by this process (``recycling``), not ended;
        # None: unless $SANDBOXES_FRESH says otherwise (pytest --sandbox-fresh, sandboxes eval --fresh).
        self._recycle = recycle
        # Python programs (run_code, judge) fork a warm interpreter in recyclable sandboxes;
        # None: unless $SANDBOXES_WARM_PYTHON is 0, false, no or off.
        self._warm_python = warm_python
        if isolation == "process":
            warnings.warn(
                "isolation='process' runs code with resource limits only: no namespaces, so it can read what your user can read and reach the network",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def recycle(self) -> bool:
        return self._recycle if self._recycle is not None else not _switch(FRESH_ENV, default=False)

    @property
    def warm_python(self) -> bool:
        return self._warm_python if self._warm_python is not None else _switch(WARM_ENV, default=True)

    @property
    def root(self) -> Path:
        return self._state_dir or state_root()

    # -- availability ----------------------------------------------------------
    def describe_isolation(self) -> str:
        """One line for `sandboxes providers`: what isolates the sandboxes here."""
        if self.isolation == "process":
            return "process (resource limits only, no namespaces)"
        bwrap = find_bwrap()
        who = "root caller: no user namespace, workload on its own uid" if os.geteuid() == 0 else "user namespace"
        return f"bubblewrap {bwrap} ({who}; pid, net, ipc, uts, cgroup namespaces)"

    async def health_check(self) -> bool:
        try:
            self.describe_isolation()
        except ProviderUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Nothing to release: each request has a connection of its own, and idle sandboxes are this process's until it exits (``recycling``)."""

    # -- lifecycle ---------------------------------------------------------------
    async def create(self, config: SandboxConfig) -> SandboxInfo:
        """Lease an idle one, or start one; cancelled meanwhile, the sandbox made is destroyed, not left running.

        A lease waits only for its agent's answer, here; a start (bubblewrap, the agent's own
        start) blocks, in a worker thread."""
        toolchains, shape = self._plan(config)
        with anyio.CancelScope(shield=True):  # neither can be stopped half-way: wait for it
            leased = await self._lease(shape, config, toolchains) if shape is not None else None
            state = leased if leased is not None else await anyio.to_thread.run_sync(self._start, config, toolchains, shape)
        try:
            await anyio.lowlevel.checkpoint()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.destroy(state.id)
            raise
        return self._info(state)

    def _plan(self, config: SandboxConfig) -> tuple[Toolchains, str | None]:
        """The config checked; the toolchains a sandbox for it binds, and the shape of those that may serve it."""
        image = config.image
        if image is not None and not os.path.isdir(image):
            raise ValueError(
                f"the local provider's image is a root filesystem directory to use as /, and {image!r} is not one; "
                "for a container image use a cloud provider (-p e2b, modal or daytona)"
            )
        self._reap()
        toolchains = self._toolchains()
        return toolchains, self._shape(config, toolchains)

    def _start(self, config: SandboxConfig, toolchains: Toolchains, shape: str | None) -> SandboxState:
        root = self.root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        sandbox_id = "sb-" + secrets.token_hex(6)
        directory = root / sandbox_id
        directory.mkdir(mode=0o700)
        (directory / "run").mkdir(mode=0o700)
        uid = None
        try:
            as_root = os.geteuid() == 0
            uid = allocate_uid(directory) if as_root else None
            return self._spawn(config, sandbox_id, directory, uid, as_root, toolchains, shape)
        except BaseException:
            parent = find_cgroup_parent(self.cgroup_parent) if self.isolation == "bwrap" else None
            if parent is not None:
                with contextlib.suppress(OSError):
                    parent.sandbox(cgroup_name(sandbox_id)).remove()
            release_uid(uid)
            remove_state(directory)
            raise

    def _spawn(
        self, config: SandboxConfig, sandbox_id: str, directory: Path, uid: int | None, as_root: bool, toolchains: Toolchains, shape: str | None
    ) -> SandboxState:
        lifetime = config.lifetime or self.lifetime
        # A recyclable sandbox's watchdog outlasts its first lease: each lease's
        # lifetime is kept by the agent's deadline, re-armed at every lease.
        watchdog = lifetime * LIFETIMES if shape is not None else lifetime
        memory_mb = config.memory_mb or self.memory_mb
        network = self._network_mode(bool(config.network))
        private = (str(self.root), str(cache_root()))
        python = os.path.realpath(sys.executable) if config.image else agent_python()
        inside_uid = uid if uid is not None else os.getuid()
        inside_gid = uid if uid is not None else os.getgid()
        env = {**sandbox_env(toolchains), **config.env}
        info_r, info_w = os.pipe()
        ready_r, ready_w = os.pipe()
        seccomp_fd = -1
        if self.isolation == "bwrap":
            seccomp_fd = os.open(seccomp_filter(cache_root(), deny_userns=True), os.O_RDONLY)
        settings: dict[str, Any] = {
            "uid": uid,
            "gid": uid,
            "deadline": time.time() + lifetime,
            "env": env,
            "cwd": WORKSPACE,
            "ready_fd": ready_w,
            "isolation": self.isolation,
            "recyclable": shape is not None,
            "limits": {
                "RLIMIT_NPROC": self.max_processes,
                "RLIMIT_FSIZE": self.max_file_mb * MIB,
                "RLIMIT_NOFILE": self.max_open_files,
                "RLIMIT_CORE": 0,
            },
        }
        cgroup = self._cgroup(sandbox_id, memory_mb, uid, config.cpus)
        cpus_enforced = config.cpus is not None and cgroup is not None and "cpu" in cgroup.tops
        if config.cpus is not None and not cpus_enforced:
            warnings.warn(
                f"cpus={config.cpus:g} is not enforced by the local provider here: no cgroup cpu controller can be had "
                "(as an ordinary user, delegate one with SANDBOXES_CGROUP_PARENT); the sandbox may use every CPU",
                RuntimeWarning,
                stacklevel=4,
            )
        if cgroup is None:
            # No cgroup: per process only. RLIMIT_AS bounds shared mappings too,
            # but V8 (tsx) reserves over 32 GiB of address space, hence the headroom.
            settings["limits"].update(RLIMIT_DATA=memory_mb * MIB, RLIMIT_AS=memory_mb * MIB + AS_HEADROOM)
        cgroup_fds = cgroup.open_fds() if cgroup is not None else {}
        if cgroup is not None:
            settings["cgroup"] = {
                "version": cgroup.version,
                "agent": [fd for key, fd in sorted(cgroup_fds.items()) if key.endswith(".agent")],
                "work": [fd for key, fd in sorted(cgroup_fds.items()) if key.endswith(".work")],
                "memory": next(fd for key, fd in sorted(cgroup_fds.items()) if key.endswith(".work") and ("memory" in key or key.startswith("unified"))),
            }
        if self.isolation == "bwrap":
            (directory / "passwd").write_text(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                f"sandbox:x:{inside_uid}:{inside_gid}:sandbox:{WORKSPACE}:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            )
            (directory / "group").write_text(f"root:x:0:\nsandbox:x:{inside_gid}:\nnogroup:x:65534:\n")
            (directory / "resolv.conf").write_text(network_setup.RESOLV_CONF)
            argv = bwrap_argv(
                bwrap=find_bwrap(),
                toolchains=toolchains,
                state_dir=directory,
                as_root=as_root,
                network=network,
                workspace_bytes=self.workspace_mb * MIB,
                tmp_bytes=self.tmp_mb * MIB,
                shm_bytes=self.shm_mb * MIB,
                image=config.image,
                python=python,
                agent=agent_bundle(cache_root(), python),
                etc=etc_snapshot(cache_root()),
                info_fd=info_w,
                seccomp_fd=seccomp_fd,
                hidden=private,
            )
            # The lifetime is kept from outside: the sandbox cannot stop this
            # watchdog, and bwrap (--die-with-parent) takes every process of
            # the sandbox with it when the watchdog kills it.
            argv = [_watchdog(), "-s", "KILL", f"{watchdog:.3f}", *argv]
            workspace = WORKSPACE
        else:
            # Outside the (0700) state dir, so that as root the sandbox's own uid can enter it.
            workspace = tempfile.mkdtemp(prefix=f"sandboxes-{sandbox_id}-")
            settings["cwd"] = workspace
            env["HOME"] = workspace
            argv = agent_argv(python, str(agent_bundle(cache_root(), python)))
            os.close(info_w)
            info_w = -1
        listener = _listen(directory)
        # slirp4netns exits once the sandbox's last holder of this pipe (its agent) is gone.
        exit_r, exit_w = os.pipe() if network == "slirp4netns" else (-1, -1)
        settings["listen_fd"] = listener.fileno()
        settings["inherited_fds"] = [fd for fd in (listener.fileno(), ready_w, exit_w, *cgroup_fds.values()) if fd >= 0]
        # What bubblewrap and the agent print goes to a pipe the host reads only
        # while the sandbox starts: never to a host file, which a process of the
        # sandbox could reach through /proc/1/fd (bwrap's init shares an ordinary
        # user's uid) and fill.
        log_r, log_w = os.pipe()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log_w,
                stderr=log_w,
                pass_fds=tuple(fd for fd in (info_w, ready_w, listener.fileno(), seccomp_fd, exit_w, *cgroup_fds.values()) if fd >= 0),
                env={"PATH": env["PATH"], "LANG": "C.UTF-8", "HOME": workspace},
                start_new_session=True,
                cwd=str(directory),
            )
        except OSError as error:
            raise ProviderUnavailable(f"cannot start bubblewrap: {error}", provider=self.name) from error
        finally:
            os.close(log_w)
            listener.close()
            for fd in (seccomp_fd, exit_w, *cgroup_fds.values()):
                if fd >= 0:
                    os.close(fd)
            if info_w >= 0:
                os.close(info_w)
            os.close(ready_w)
        try:
            assert process.stdin is not None
            try:
                process.stdin.write(marshal.dumps(settings))
                process.stdin.close()
            except BrokenPipeError:
                pass
            ready = _read_with_timeout(ready_r, READY_TIMEOUT)
            if ready != b"ready\n":
                process.kill()
                process.wait()
                raise self._start_failure(_drain(log_r))
            pid = process.pid
            if self.isolation == "bwrap":
                pid = json.loads(_read_with_timeout(info_r, READY_TIMEOUT))["child-pid"]
            helpers = [process]
            if network == "slirp4netns":
                helpers.append(network_setup.attach(pid, exit_fd=exit_r, in_user_namespace=not as_root))
        except BaseException:
            _kill(process.pid)
            process.wait()
            raise
        finally:
            os.close(log_r)  # from here what they print goes nowhere
            os.close(ready_r)
            os.close(info_r)
            if exit_r >= 0:
                os.close(exit_r)
        _CHILDREN[sandbox_id] = helpers
        state = SandboxState(
            id=sandbox_id,
            labels=dict(config.labels),
            created_at=time.time(),
            expires_at=settings["deadline"],
            pid=pid,
            pid_start=process_start(pid) or "",
            isolation=self.isolation,
            uid=uid,
            network=network != "none",
            image=config.image,
            workspace=workspace,
            extra={
                "network": network,
                **({"cgroup": cgroup.paths()} if cgroup is not None else {}),
                **({"cpus": config.cpus, "cpus_enforced": cpus_enforced} if config.cpus is not None else {}),
                **({"recycle": {"shape": shape, "owner": os.getpid(), "until": time.time() + watchdog}} if shape is not None else {}),
                **_toolchains_key(config.image, toolchains, env),
            },
        )
        state.save(directory)
        return state

    # -- recycling -----------------------------------------------------------------
    def _toolchains(self) -> Toolchains:
        private = (str(self.root), str(cache_root()))
        return discover_toolchains(os.environ.get("PATH", ""), self.extra_binds, rustup_home_of(os.environ), private)

    def _shape(self, config: SandboxConfig, toolchains: Toolchains) -> str | None:
        """What two sandboxes must share for one to serve the other's lease; None: never recycled.

        Not with an image (its root is a writable overlay no reset reaches),
        nor on the host's network (its counters and sockets are the host's).
        For an ordinary user the agent is the sandbox's init (``layout``): no
        process that a lease cannot reset is left to keep that lease's data.
        """
        if not self.recycle or self.isolation != "bwrap" or config.image is not None:
            return None
        if config.network and network_setup.user_network_unavailable() is not None:
            return None
        limits = (self.max_processes, self.max_file_mb, self.max_open_files, self.workspace_mb, self.tmp_mb, self.shm_mb)
        return json.dumps([str(self.root), bool(config.network), config.memory_mb or self.memory_mb, config.cpus, limits, toolchains.binds, self.cgroup_parent])

    async def _lease(self, shape: str, config: SandboxConfig, toolchains: Toolchains) -> SandboxState | None:
        """An idle sandbox of this shape, renamed and re-armed for a new lease; None when there is none."""
        lifetime = config.lifetime or self.lifetime
        while (entry := IDLE.take(shape)) is not None:
            state: SandboxState = entry[1]
            if not state.alive() or _recycled(state)["until"] - time.time() < lifetime + LEASE_MARGIN:
                await anyio.to_thread.run_sync(self._destroy_state, state)  # ended meanwhile, or too old to hold this lease
                continue
            try:
                return await self._renew(state, config, toolchains, lifetime)
            except (OSError, ProviderError, ValueError) as error:
                log.warning("could not lease recycled sandbox %s again, starting a new one: %s", state.id, error)
                await anyio.to_thread.run_sync(self._destroy_state, state)
        return None

    async def _renew(self, state: SandboxState, config: SandboxConfig, toolchains: Toolchains, lifetime: float) -> SandboxState:
        """Re-armed and given its new record while still idle (no one reads an idle sandbox's record
        but for its pid), then renamed: others see the new lease whole, or not yet."""
        deadline = time.time() + lifetime
        env = {**sandbox_env(toolchains), **config.env}
        await self._ask_async(state, {"op": "lease", "env": env, "deadline": deadline}, READY_TIMEOUT)
        state.labels, state.created_at, state.expires_at = dict(config.labels), time.time(), deadline
        state.extra.pop(TOOLCHAINS, None)
        state.extra.update(_toolchains_key(config.image, toolchains, env))
        new_id = "sb-" + secrets.token_hex(6)
        dataclasses.replace(state, id=new_id).save(self.root / state.id, unread=True)
        self._move(state, new_id)
        return state

    async def _park(self, state: SandboxState) -> bool:
        """Reset a sandbox its holder let go and keep it for the next lease; False: it must be destroyed."""
        idle_until = min(time.time() + IDLE_SECONDS, _recycled(state)["until"])
        held = state.id
        # Renamed first: from here no new connection reaches it by its old id, and the
        # agent refuses what comes on the ones made before (their lease is over).
        try:
            self._move(state, "idle-" + secrets.token_hex(6))
            residue = (await self._ask_async(state, {"op": "reset", "deadline": idle_until}, RESET_TIMEOUT)).get("residue")
        except (OSError, ProviderError, ValueError) as error:
            log.info("sandbox %s is not recycled: its reset failed (%s)", held, error)
            return False
        if not isinstance(residue, str) or residue:
            log.info("sandbox %s is not recycled: %s", held, residue.replace("\n", "; ") if isinstance(residue, str) else "no proof of a reset")
            return False
        state.labels, state.expires_at = {}, idle_until  # in memory only: nothing reads an idle sandbox's meta.json but its pid
        evicted = IDLE.put(_recycled(state)["shape"], (self, state))
        for entry in evicted or ():
            await anyio.to_thread.run_sync(end_idle, entry)
        return evicted is not None

    def _move(self, state: SandboxState, new_id: str) -> None:
        """Rename a sandbox: its state dir (the agent's socket with it), uid and helpers follow."""
        old = state.id
        reassign_uid(state.uid, self.root / new_id)
        (self.root / old).rename(self.root / new_id)
        state.id = new_id
        if old in _CHILDREN:
            _CHILDREN[new_id] = _CHILDREN.pop(old)

    def _ask(self, state: SandboxState, request: dict[str, object], timeout: float) -> dict[str, Any]:
        """One request to the agent and its answer (JSON), from a worker thread."""
        with socket.socket(socket.AF_UNIX) as conn, _short_socket_path(self.root / state.id) as path:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(wire.request_frame(request))
            parser = wire.FrameParser()
            while data := conn.recv(1 << 16):
                if (answer := self._answer(request, parser.feed(data))) is not None:
                    return answer
        raise self._hung_up(state, request)

    async def _ask_async(self, state: SandboxState, request: dict[str, object], timeout: float) -> dict[str, Any]:
        """``_ask`` in the event loop: no worker thread to wake, only the agent's answer to wait for."""
        with anyio.fail_after(timeout):
            async with await _connect_unix(self.root / state.id) as connection:
                await connection.send(wire.request_frame(request))
                async for frame in self._frames(connection):
                    if (answer := self._answer(request, [frame])) is not None:
                        return answer
        raise self._hung_up(state, request)

    def _answer(self, request: dict[str, object], frames: Sequence[tuple[bytes, bytes]]) -> dict[str, Any] | None:
        """The agent's answer among ``frames`` (its OK's JSON, or its ERROR raised); None: not yet."""
        for kind, payload in frames:
            if kind == wire.OK:
                answer = json.loads(payload or b"{}")
                if not isinstance(answer, dict):
                    raise ValueError(f"the agent answered {request['op']!r} with {answer!r}")
                return answer
            if kind == wire.ERROR:
                raise _agent_error(json.loads(payload), self.name)
        return None

    def _hung_up(self, state: SandboxState, request: dict[str, object]) -> ProviderError:
        return ProviderError(f"the agent of sandbox {state.id} closed the connection during {request['op']!r}", provider=self.name)

    def _network_mode(self, wanted: bool) -> str:
        """ "none"; for a networked sandbox "slirp4netns" (its own network, no way to the
        host's loopback), or "host" where slirp4netns cannot run here, with a warning."""
        if not wanted:
            return "none"
        if self.isolation == "process":
            return "host"
        reason = network_setup.user_network_unavailable()
        if reason is None:
            return "slirp4netns"
        warnings.warn(
            f"network=True shares the host's network with the sandbox (its loopback services and abstract sockets too): {reason}",
            SharedHostNetworkWarning,
            stacklevel=4,
        )
        return "host"

    def describe_network(self) -> str:
        """One line for `sandboxes providers`: what network=True gives here."""
        reason = network_setup.user_network_unavailable() if self.isolation == "bwrap" else "process isolation has no namespaces"
        if reason is None:
            return "network=True: own network namespace through slirp4netns (no host loopback); default none"
        return f"network=True: SHARES THE HOST'S NETWORK ({reason}); default none"

    def _cgroup(self, sandbox_id: str, memory_mb: int, uid: int | None, cpus: float | None) -> SandboxCgroup | None:
        """The sandbox's cgroup (memory and processes limited per sandbox, and cpus where the
        cpu controller can be had), or None where none can be had."""
        if self.isolation != "bwrap" or not _openat2_works():
            return None
        parent = find_cgroup_parent(self.cgroup_parent)
        if parent is None:
            return None
        return parent.create(cgroup_name(sandbox_id), memory_bytes=memory_mb * MIB, pids_max=self.max_processes, owner_uid=uid, cpus=cpus)

    def describe_limits(self) -> str:
        """One line for `sandboxes providers`: how memory and processes are limited here."""
        if self.isolation == "process":
            return "rlimits per process (no cgroup in process isolation)"
        if not _openat2_works():
            return "rlimits per process (this kernel has no openat2, which the agent needs to hold cgroup descriptors safely)"
        return cgroups_describe(self.cgroup_parent)

    def _start_failure(self, log: str) -> ProviderError:
        if self.isolation == "bwrap" and ("namespace" in log.lower() or "Operation not permitted" in log):
            return ProviderUnavailable(
                f"bubblewrap cannot create namespaces here ({log.splitlines()[-1] if log else 'no output'}). "
                + _userns_hint()
                + " Or pass isolation='process' to run with resource limits only (no isolation).",
                provider=self.name,
            )
        return ProviderError(f"the local sandbox failed to start: {log or 'no output'}", provider=self.name)

    def _info(self, state: SandboxState) -> SandboxInfo:
        return SandboxInfo(
            id=state.id,
            provider=self.name,
            labels=dict(state.labels),
            state="running",
            created_at=state.created_at,
            expires_at=state.expires_at,
            image=state.image,
            metadata={
                "isolation": state.isolation,
                "network": state.network,
                "network_mode": state.extra.get("network", "none"),
                "workspace": state.workspace,
                "limits": "per sandbox (cgroup)" if state.extra.get("cgroup") else "per process (rlimits: no cgroup could be had)",
                **({"cpus": state.extra["cpus"], "cpus_enforced": state.extra.get("cpus_enforced")} if "cpus" in state.extra else {}),
                **({TOOLCHAINS: state.extra[TOOLCHAINS]} if TOOLCHAINS in state.extra else {}),
            },
        )

    def _load(self, sandbox_id: str) -> SandboxState | None:
        if not sandbox_id.startswith("sb-") or "/" in sandbox_id:
            return None  # an idle sandbox ("idle-...") is nobody's to reach
        directory = self.root / sandbox_id
        state = SandboxState.load(directory)
        if state is None:
            return None
        if not state.alive():
            self._forget(state, directory)
            return None
        return state

    def _forget(self, state: SandboxState, directory: Path) -> None:
        paths = state.extra.get("cgroup")
        if isinstance(paths, list):
            try:
                SandboxCgroup.from_paths(paths).remove()
            except (OSError, ValueError) as error:  # never let a cgroup stop the rest of the clean-up
                log.warning("could not remove the cgroups of sandbox %s: %s", state.id, error)
        release_uid(state.uid)
        remove_state(directory)
        if state.isolation == "process":
            remove_tree(Path(state.workspace))
        for child in _CHILDREN.pop(state.id, []):
            try:
                child.wait(timeout=5)  # slirp4netns ends once the sandbox's last process has
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    def _reap(self) -> None:
        for sandbox_id, children in list(_CHILDREN.items()):
            if all(child.poll() is not None for child in children):
                _CHILDREN.pop(sandbox_id, None)  # another thread may have reaped it meanwhile

    async def get(self, sandbox_id: str) -> SandboxInfo | None:
        state = self._load(sandbox_id)
        return self._info(state) if state else None

    async def list(self, labels: Mapping[str, str]) -> list[SandboxInfo]:
        return await anyio.to_thread.run_sync(self._list, dict(labels))

    def _list(self, labels: dict[str, str]) -> builtins.list[SandboxInfo]:
        found = []
        try:
            entries = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.startswith("idle-"):
                self._sweep_idle(entry)
                continue
            if not entry.startswith("sb-"):
                continue
            state = self._load(entry)
            if state is None:
                if not (self.root / entry / "meta.json").exists() and age_of(self.root / entry) > 120:
                    remove_state(self.root / entry)  # a creation that died half-way
                continue
            if all(state.labels.get(k) == v for k, v in labels.items()):
                found.append(self._info(state))
        return found

    def _sweep_idle(self, entry: str) -> None:
        """An idle sandbox of a process that died: its agent ended it; its state goes."""
        state = SandboxState.load(self.root / entry)
        if state is not None and not state.alive():
            self._forget(state, self.root / entry)

    async def destroy(self, sandbox_id: str) -> bool:
        """Gone for its holder: reset and parked for the next lease where it can be, else ended."""
        state = self._load(sandbox_id)
        if state is None:
            return False
        with anyio.CancelScope(shield=True):  # half-way, a sandbox would be neither parked nor ended
            if self.recycle and "recycle" in state.extra and _recycled(state)["owner"] == os.getpid() and await self._park(state):
                return True
            await anyio.to_thread.run_sync(self._destroy_state, state)
        return True

    def _destroy(self, sandbox_id: str) -> bool:
        """Ended at once, never parked, from any thread: how a script ends one it kept."""
        state = self._load(sandbox_id)
        if state is None:
            return False
        self._destroy_state(state)
        return True

    def _kill_sandbox(self, sandbox_id: str) -> None:
        state = self._load(sandbox_id)
        if state is not None:
            _kill(state.pid)

    def _destroy_state(self, state: SandboxState) -> None:
        if self.isolation == "process" or state.isolation == "process":
            self._shutdown_process_sandbox(state)
        _kill(state.pid)
        deadline = time.monotonic() + 5
        while state.alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        self._forget(state, self.root / state.id)

    def _shutdown_process_sandbox(self, state: SandboxState) -> None:
        """Without a pid namespace, end the agent's command trees through the agent."""
        with contextlib.suppress(OSError, ProviderError, ValueError):
            self._ask(state, {"op": "shutdown"}, 5)

    # -- talking to the agent ------------------------------------------------------
    async def _connect(self, sandbox_id: str) -> AgentConnection:
        directory = self.root / sandbox_id
        if not sandbox_id.startswith("sb-") or "/" in sandbox_id:
            raise _not_found(sandbox_id)
        try:
            return await _connect_unix(directory)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise await self._gone_or_lost(sandbox_id, _not_found(sandbox_id), f"the agent of sandbox {sandbox_id} does not answer: {error}") from None

    async def _gone_or_lost(self, sandbox_id: str, gone: SandboxNotFoundError, lost: str) -> Exception:
        """Its agent no longer answers: ``gone`` once the sandbox is seen ended (its bubblewrap
        may take a moment to follow its agent), else a ProviderError saying ``lost``."""
        with anyio.move_on_after(2):
            while self._load(sandbox_id) is not None:
                await anyio.sleep(0.02)
        return gone if self._load(sandbox_id) is None else ProviderError(lost, provider=self.name)

    async def _frames(self, stream: AgentConnection) -> AsyncIterator[tuple[bytes, bytes]]:
        parser = wire.FrameParser()
        while True:
            try:
                data = await stream.receive(1 << 18)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            for item in parser.feed(data):
                yield item

    async def exec(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        stdin: bytes | None,
        timeout: float,
        output_limit: int,
    ) -> AsyncIterator[Event]:
        """The agent runs it; its frames become events. An agent that stops answering ends the sandbox."""
        warm, shared = warm_of(argv)
        argv = cold_argv(argv)
        request: dict[str, object] = {"op": "exec", "argv": list(argv), "env": dict(env), "cwd": cwd, "timeout": timeout, "stdin": stdin is not None}
        if warm and self.warm_python:
            request["warm"] = True
            if shared is not None:
                request["shared"] = shared
        stream = await self._connect(sandbox_id)
        async with stream:
            try:
                await stream.send(wire.request_frame(request))
                if stdin is not None:  # the agent keeps reading stdin while it sends output
                    for piece in wire.chunked(wire.STDIN, stdin):
                        await stream.send(piece)
                    await stream.send(wire.frame(wire.EOF))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the agent answers with what happened
            parser = wire.FrameParser()
            deadline = anyio.current_time() + timeout + AGENT_GRACE
            while True:
                received = None
                with anyio.move_on_after(deadline - anyio.current_time()):
                    try:
                        received = await stream.receive(1 << 18)
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        received = b""
                if received is None:
                    # The agent is stopped or starved: by the sandbox's own
                    # content, since nothing else reaches it. It can no longer
                    # be trusted to end the command, so the sandbox ends.
                    # Killed at once (its init, and so every process in it); its
                    # state is swept by the next call that finds it dead.
                    self._kill_sandbox(sandbox_id)
                    note = f"sandbox: the agent of sandbox {sandbox_id} stopped answering (stopped or starved by its workload); the sandbox was destroyed\n"
                    yield Output("stderr", note.encode())
                    yield Exit(-9, timed_out=True, duration_ms=(timeout + AGENT_GRACE) * 1000)
                    return
                if not received:
                    ended = SandboxNotFoundError(f"sandbox {sandbox_id} ended while a command was running in it")
                    raise await self._gone_or_lost(sandbox_id, ended, f"lost the connection to sandbox {sandbox_id}'s agent")
                for kind, payload in parser.feed(received):
                    if kind == wire.STDOUT:
                        yield Output("stdout", payload)
                    elif kind == wire.STDERR:
                        yield Output("stderr", payload)
                    elif kind == wire.EXIT:
                        ended = json.loads(payload)
                        yield Exit(
                            ended["exit_code"], bool(ended["timed_out"]), ended["duration_ms"], bool(ended.get("oom_killed")), cpu_ms=ended.get("cpu_ms")
                        )
                        return
                    elif kind == wire.ERROR:
                        raise _agent_error(json.loads(payload), self.name)

    async def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        await self.write_files(sandbox_id, [(path, data)])

    async def write_files(self, sandbox_id: str, files: Sequence[tuple[str, bytes]]) -> None:
        """Each file's bytes after the request, ended by an EOF frame; one answer for all."""
        stream = await self._connect(sandbox_id)
        paths = [path for path, _ in files]
        with self._file_deadline(sandbox_id, ", ".join(paths)):
            await self._write(stream, sandbox_id, paths, [data for _, data in files])

    async def _write(self, stream: AgentConnection, sandbox_id: str, paths: Sequence[str], contents: Sequence[bytes]) -> None:
        async with stream:
            try:
                await stream.send(wire.request_frame({"op": "write", "paths": paths}))
                for data in contents:
                    for piece in wire.chunked(wire.STDIN, bytes(data)):
                        await stream.send(piece)
                    await stream.send(wire.frame(wire.EOF))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the agent refused before taking it all (a read-only path, say): its answer says why
            async for kind, payload in self._frames(stream):
                if kind == wire.OK:
                    return
                if kind == wire.ERROR:
                    raise _agent_error(json.loads(payload), self.name)
        raise ProviderError(f"sandbox {sandbox_id} ended while writing {', '.join(paths)}", provider=self.name)

    async def read_file(self, sandbox_id: str, path: str, limit: int) -> bytes:
        """The file's bytes: a regular file only, at most ``limit`` (else EFBIG)."""
        chunks: list[bytes] = []
        await self._receive(sandbox_id, "read", path, chunks.append, limit)
        return b"".join(chunks)

    async def download_tree(self, sandbox_id: str, path: str, sink: Callable[[bytes], object], limit: int) -> None:
        """The agent streams the directory as tar, walking by directory fds and never following a link."""
        await self._receive(sandbox_id, "pack", path, sink, limit)

    async def _receive(self, sandbox_id: str, op: str, path: str, sink: Callable[[bytes], object], limit: int) -> None:
        """Run a file operation whose answer is DATA frames, at most ``limit`` bytes of them."""
        stream = await self._connect(sandbox_id)
        received = 0
        with self._file_deadline(sandbox_id, path):
            async with stream:
                await stream.send(wire.request_frame({"op": op, "path": path, "limit": limit}))
                async for kind, payload in self._frames(stream):
                    if kind == wire.DATA:
                        received += len(payload)
                        if received > limit:  # the host's own count: it trusts no byte total from inside
                            raise OSError(errno.EFBIG, f"larger than max_file_bytes ({limit} bytes); raise LocalProvider(max_file_bytes=...)", path)
                        sink(payload)
                    elif kind == wire.OK:
                        return
                    elif kind == wire.ERROR:
                        raise _agent_error(json.loads(payload), self.name)
        raise ProviderError(f"sandbox {sandbox_id} ended while reading {path}", provider=self.name)

    @contextlib.contextmanager
    def _file_deadline(self, sandbox_id: str, path: str) -> Iterator[None]:
        """A file operation on an agent that stopped answering fails within the command timeout."""
        with anyio.move_on_after(self.command_timeout) as scope:
            yield
        if scope.cancelled_caught:
            raise TimeoutError(f"sandbox {sandbox_id}'s agent did not answer within {self.command_timeout:g}s while handling {path}")


def _switch(variable: str, *, default: bool) -> bool:
    """An environment variable read as on/off: unset or empty is ``default``; 0, false, no and off are off."""
    value = os.environ.get(variable, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def _toolchains_key(image: str | None, toolchains: Toolchains, env: Mapping[str, str]) -> dict[str, str]:
    """``{TOOLCHAINS: key}``: every sandbox with that key has the same tools (the same binds and
    PATH), so a tool found in one need not be looked for in the next (``languages``). Nothing when
    PATH leads into a place a sandbox writes to, where what is found is the sandbox's own."""
    path = env.get("PATH", "")
    if image is not None or any(entry.startswith((WORKSPACE, "/tmp", "/dev")) or not entry.startswith("/") for entry in path.split(":")):
        return {}
    return {TOOLCHAINS: hashlib.sha256(json.dumps([list(toolchains.binds), path]).encode()).hexdigest()[:16]}


def _recycled(state: SandboxState) -> dict[str, Any]:
    """A recyclable sandbox's shape, owner pid and watchdog deadline."""
    return state.extra["recycle"]  # type: ignore[return-value]


def _socket_path(directory: Path) -> str:
    return str(directory / "run" / "agent.sock")


@contextlib.contextmanager
def _short_socket_path(directory: Path) -> Iterator[str]:
    """The agent's socket path, through /proc when it is too long for a unix socket (108 bytes)."""
    path = _socket_path(directory)
    if len(path) < 100:
        yield path
        return
    fd = os.open(directory / "run", os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/agent.sock"
    finally:
        os.close(fd)


def _listen(directory: Path) -> socket.socket:
    """The agent's listening socket, made by the host in the sandbox's state dir.

    That dir is never visible inside a sandbox, so no workload can replace the
    socket or point it elsewhere; the agent gets the descriptor, not the path.
    """
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_socket_path(directory) as path:
            server.bind(path)
        server.listen(64)
    except BaseException:
        server.close()
        raise
    server.set_inheritable(True)
    return server


async def _connect_unix(directory: Path) -> AgentConnection:
    with _short_socket_path(directory) as path:
        return await connect_agent(path)


@functools.lru_cache(maxsize=1)
def _openat2_works() -> bool:
    """Whether this kernel has openat2 (5.6+), which the agent resolves every path with
    when it holds cgroup descriptors; the host and the sandboxes share the kernel."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    how = (ctypes.c_uint64 * 3)(os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY, 0, 0)
    fd = libc.syscall(ctypes.c_long(437), ctypes.c_int(-100), b"/", ctypes.byref(how), ctypes.c_size_t(24))
    if fd >= 0:
        os.close(fd)
        return True
    return ctypes.get_errno() != errno.ENOSYS


@functools.lru_cache(maxsize=1)
def _watchdog() -> str:
    """coreutils' ``timeout``, which kills a sandbox at the end of its lifetime."""
    found = shutil.which("timeout", path=os.defpath + ":/usr/bin:/bin")
    if found is None:
        raise ProviderUnavailable("the local provider needs coreutils' `timeout` (apt-get install coreutils)", provider="local")
    return found


def _not_found(sandbox_id: str) -> SandboxNotFoundError:
    return SandboxNotFoundError(f"no sandbox {sandbox_id!r} on provider 'local'")


def _agent_error(error: dict[str, Any], provider: str) -> Exception:
    """An error the agent reported: ``OSError`` (by errno, so ``FileNotFoundError`` and
    the rest) when the sandbox's own files caused it, which is the caller's error and is
    never retried; ``ProviderError`` only when the agent itself failed."""
    if isinstance(error.get("errno"), int):
        return OSError(error["errno"], error.get("message") or "", error.get("filename"))
    if error.get("type") == "LeaseEnded":  # the request came on a connection of a lease that is over
        return SandboxNotFoundError(str(error.get("message")))
    return ProviderError(f"sandbox agent error: {error.get('type')}: {error.get('message')}", provider=provider)


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
        if data.endswith(b"\n") or data.endswith(b"}"):
            break
    return b"".join(chunks)


def _drain(fd: int, limit: int = 1 << 16) -> str:
    """What is in a pipe now (its writers have ended), at most ``limit`` bytes."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    with contextlib.suppress(OSError):
        while sum(map(len, chunks)) < limit and (data := os.read(fd, limit)):
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace").strip()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _userns_hint() -> str:
    checks = {
        "/proc/sys/kernel/unprivileged_userns_clone": ("0", "sysctl -w kernel.unprivileged_userns_clone=1"),
        "/proc/sys/user/max_user_namespaces": ("0", "sysctl -w user.max_user_namespaces=15000"),
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": ("1", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    }
    for path, (bad, fix) in checks.items():
        try:
            if Path(path).read_text().strip() == bad:
                return f"User namespaces are disabled ({path} is {bad}): as root, run `{fix}`."
        except OSError:
            continue
    return "User namespaces seem unavailable (a container without them?): allow them, or run as root."
