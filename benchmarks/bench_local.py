"""Local provider speed, as ratios against baselines measured in the same run.

Run: python benchmarks/bench_local.py [--rounds N]

Baselines and subjects are interleaved round by round, so a noisy, shared
machine slows both alike. Targets (issues 2 and 9; 9 allows 5x for creation, hardened):
  create until usable      <= 5x one bare `bwrap ... true` spawn
  execute("true") round trip <= 3x one bare subprocess.run(["true"])
  an idle sandbox            <= 20 MiB of host memory (PSS of its processes)
The per-check cost split of a recycled sandbox (issue 12) is printed beside
them: a lease, a reset, an exec, and python3's own start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import anyio

from sandboxes import SandboxConfig
from sandboxes.driver import WARM_PYTHON
from sandboxes.providers.local import LocalProvider
from sandboxes.providers.local.layout import find_bwrap
from sandboxes.providers.local.recycling import IDLE


def bare_bwrap(bwrap: str) -> None:
    subprocess.run(
        [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--unshare-all", "true"],
        check=True,
    )  # fmt: skip


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (the Python binary, libc) counted fairly."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sandbox_pids(ns_init: int) -> list[int]:
    """The namespace's init and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
                ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [ns_init], [ns_init]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


async def main(rounds: int) -> int:
    with tempfile.TemporaryDirectory() as state:
        python = os.path.realpath(sys.executable)  # the toolchain the sandbox binds
        provider = LocalProvider(state_dir=state, recycle=False)
        recycling = LocalProvider(state_dir=state, recycle=True)
        bwrap = find_bwrap()
        warm = await provider.create_sandbox(SandboxConfig())
        await provider.destroy_sandbox(warm.id)

        bwrap_times, create_times, lease_times, reset_times = [], [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            bare_bwrap(bwrap)
            bwrap_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            info = await provider.create_sandbox(SandboxConfig())
            create_times.append(time.perf_counter() - started)
            await provider.destroy_sandbox(info.id)
            started = time.perf_counter()
            leased = await recycling.create_sandbox(SandboxConfig())
            lease_times.append(time.perf_counter() - started)
            await recycling.execute_command(leased.id, "echo used > /workspace/f")
            started = time.perf_counter()
            await recycling.destroy_sandbox(leased.id)
            reset_times.append(time.perf_counter() - started)
        lease_times, reset_times = lease_times[1:], reset_times[1:]  # the first lease is a creation

        # A warm run: python3 main.py forked from the recycled sandbox's zygote (the first run starts it).
        leased = await recycling.create_sandbox(SandboxConfig())
        warm_times = []
        try:
            await recycling.write_file(leased.id, "/workspace/main.py", b"pass\n")
            for _ in range(rounds + 1):
                started = time.perf_counter()
                result = await recycling.execute_command(leased.id, [WARM_PYTHON, "python3", "main.py"], cwd="/workspace")
                warm_times.append(time.perf_counter() - started)
                assert result.success, result.describe()
        finally:
            await recycling.destroy_sandbox(leased.id)
            IDLE.drain()
        warm_times = warm_times[1:]

        info = await provider.create_sandbox(SandboxConfig())
        try:
            for _ in range(20):
                await provider.execute_command(info.id, "true")
            true_times, exec_times, python_times, host_python_times = [], [], [], []
            for _ in range(rounds * 5):
                started = time.perf_counter()
                subprocess.run(["true"], check=True)
                true_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = await provider.execute_command(info.id, ["true"])
                exec_times.append(time.perf_counter() - started)
                assert result.success
            for _ in range(rounds):
                started = time.perf_counter()
                subprocess.run([python, "-c", "pass"], check=True)
                host_python_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = await provider.execute_command(info.id, [python, "-c", "pass"])
                python_times.append(time.perf_counter() - started)
                assert result.success, result.describe()
            await anyio.sleep(0.5)
            state_of = provider._load(info.id)
            assert state_of is not None
            pids = sandbox_pids(state_of.pid)
            idle_mib = sum(pss_kib(pid) for pid in pids) / 1024
        finally:
            await provider.destroy_sandbox(info.id)

    def row(name: str, subject: list[float], baseline: list[float], target: float) -> bool:
        s, b = statistics.median(subject), statistics.median(baseline)
        ok = s / b <= target
        print(f"{name:<28} {s * 1000:8.2f} ms vs {b * 1000:7.2f} ms  ratio {s / b:5.2f}x  (target <= {target}x) {'ok' if ok else 'MISSED'}")
        return ok

    print(f"local provider, {rounds} rounds, uid {os.geteuid()}, bwrap {bwrap}")
    results = [
        row("create until usable", create_times, bwrap_times, 5.0),
        row("execute(['true']) round trip", exec_times, true_times, 3.0),
    ]
    print("a check in a recycled sandbox, its parts (ratios against the same baselines):")
    row("  lease (create, recycled)", lease_times, bwrap_times, 5.0)
    row("  reset (destroy, recycled)", reset_times, bwrap_times, 5.0)
    row("  exec (true)", exec_times, true_times, 3.0)
    row(f"  interpreter start ({python} -c pass)", python_times, host_python_times, 3.0)
    row("  warm: python3 main.py forked", warm_times, host_python_times, 3.0)
    idle_ok = idle_mib <= 20
    print(f"{'idle sandbox memory':<28} {idle_mib:8.2f} MiB PSS over {len(pids)} processes  (target <= 20 MiB) {'ok' if idle_ok else 'MISSED'}")
    return 0 if all(results) and idle_ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    raise SystemExit(anyio.run(main, parser.parse_args().rounds))
