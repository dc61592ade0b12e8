"""The governor, shared by real processes through its files: caps, dead holders, the rate, throttling."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxes.governor import AcquireTimeout, Governor, Limits, already_holding

pytestmark = pytest.mark.anyio

HOLDER = """
import anyio, sys, time
from pathlib import Path
from sandboxes.governor import Governor, Limits

async def main():
    governor = Governor("emulated", Limits(**eval(sys.argv[2])), Path(sys.argv[1]))
    for index in range(int(sys.argv[3])):
        governor.keep(f"sandbox-{index}", await governor.acquire())
        print(f"{time.time():.6f}", flush=True)
    print("held", flush=True)
    time.sleep(600)

anyio.run(main)
"""


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def hold(holders: list[subprocess.Popen[str]], directory: Path, limits: dict[str, object], count: int) -> tuple[subprocess.Popen[str], list[float]]:
    """Another process that takes ``count`` slots and keeps them until it is killed; and when it took each."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), repr(limits), str(count)], stdout=subprocess.PIPE, text=True)
    holders.append(process)
    assert process.stdout is not None
    times = []
    for line in process.stdout:
        if line.strip() == "held":
            return process, times
        times.append(float(line))
    raise AssertionError(f"the holder ended before it held its slots (status {process.wait()})")


async def test_a_cap_holds_across_processes(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    hold(holders, tmp_path, {"alive": 3}, 2)
    governor = Governor("emulated", Limits(alive=3, acquire_timeout=0.5), tmp_path)
    third = await governor.acquire()
    with pytest.raises(AcquireTimeout, match=r"no emulated sandbox slot came free within 0\.5 s"):
        await governor.acquire()
    third.release()
    (await governor.acquire()).release()


async def test_a_killed_holders_slots_come_back_within_a_second(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    process, _ = hold(holders, tmp_path, {"alive": 2}, 2)
    governor = Governor("emulated", Limits(alive=2, acquire_timeout=5), tmp_path)
    process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    tickets = [await governor.acquire(), await governor.acquire()]
    assert time.monotonic() - killed < 1.0
    for ticket in tickets:
        ticket.release()


async def test_creations_in_flight_are_capped_apart_from_alive_ones(tmp_path: Path) -> None:
    governor = Governor("emulated", Limits(alive=5, creating=1, acquire_timeout=0.3), tmp_path)
    first = await governor.acquire()
    with pytest.raises(AcquireTimeout):
        await governor.acquire()
    governor.keep("sandbox-1", first)  # made: it stays alive, and no longer creating
    second = await governor.acquire()
    governor.keep("sandbox-2", second)
    governor.release("sandbox-1")
    governor.release("sandbox-2")


async def test_the_creation_rate_is_shared_by_processes(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    limits = {"per_second": 10.0}
    processes = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), repr(limits), "6"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    holders.extend(processes)
    starts: list[float] = []
    for process in processes:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "held":
                break
            starts.append(float(line))
    assert len(starts) == 12
    starts.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # 10 a second between both processes, not 10 each: 11 intervals of 0.1 s (a start may wake late, not early)
    assert starts[-1] - starts[0] > 1.05, gaps
    assert min(gaps) > 0.03, gaps


async def test_a_throttle_answer_halves_the_concurrency_and_pauses_everyone(tmp_path: Path) -> None:
    one = Governor("emulated", Limits(alive=8), tmp_path)
    other = Governor("emulated", Limits(alive=8), tmp_path)  # another process's view: the same files
    held = [await one.acquire() for _ in range(6)]
    one.throttled(retry_after=0.6)  # refused with 6 alive: the provider's cap is there, not at 8
    one.throttled(retry_after=0.1)  # the same burst: halved once
    assert other.concurrency() == 3.0
    for ticket in held:
        ticket.release()
    started = time.monotonic()
    ticket = await other.acquire()
    assert time.monotonic() - started >= 0.5
    ticket.release()
    assert other.counters.waits == 1


async def test_a_refusal_without_retry_after_pauses_longer_each_time_in_a_row(tmp_path: Path) -> None:
    governor = Governor("emulated", Limits(alive=8), tmp_path)
    pauses = []
    for _ in range(4):
        governor.throttled()
        pauses.append(json.loads((tmp_path / "state").read_text())["paused_until"] - time.time())
    assert 0.1 <= pauses[0] <= 0.26 and pauses[3] >= 0.9  # 0.25 s at most, then doubling (jittered down to half)
    assert json.loads((tmp_path / "state").read_text())["strikes"] == 4
    governor.succeeded()  # a creation went through: the next refusal starts again from the shortest pause
    assert json.loads((tmp_path / "state").read_text())["strikes"] == 0


def _edit_state(directory: Path, **changes: float) -> None:
    (directory / "state").write_text(json.dumps({**json.loads((directory / "state").read_text()), **changes}))


async def test_growing_back_stops_at_what_was_made_when_refused_for_a_while(tmp_path: Path) -> None:
    governor = Governor("emulated", Limits(alive=8), tmp_path)
    for number in range(3):
        governor.keep(f"made-{number}", await governor.acquire())
    in_flight = await governor.acquire()  # being made: not counted as the provider's cap
    governor.throttled()  # refused with 3 made: the account's cap is 3 at most
    in_flight.release()
    for _ in range(50):
        governor.succeeded()
    assert governor.concurrency() == 3.0
    _edit_state(tmp_path, ceiling_until=0)
    for _ in range(50):
        governor.succeeded()
    assert governor.concurrency() == 8.0  # after CEILING_SECONDS it probes again
    for number in range(3):
        governor.release(f"made-{number}")


async def test_successes_add_the_concurrency_back_slowly(tmp_path: Path) -> None:
    governor = Governor("emulated", Limits(alive=8), tmp_path)
    for _ in range(3):
        time.sleep(0.001)
        governor.throttled()
        _edit_state(tmp_path, decreased_at=0)
    assert governor.concurrency() == 1.0
    _edit_state(tmp_path, ceiling_until=0)  # the last refusal is long past: growing may probe past it
    for _ in range(3):
        governor.succeeded()
    assert 2.0 <= governor.concurrency() < 3.0  # about one slot per round of successes
    for _ in range(100):
        governor.succeeded()
    assert governor.concurrency() == 8.0


async def test_a_lowered_concurrency_leaves_only_its_slots_to_take(tmp_path: Path) -> None:
    governor = Governor("emulated", Limits(alive=4, acquire_timeout=0.6), tmp_path)
    tickets = [await governor.acquire() for _ in range(4)]
    governor.throttled()  # 4 alive -> 2
    for ticket in tickets[2:]:
        ticket.release()
    tickets = tickets[:2]
    with pytest.raises(AcquireTimeout, match="now 2 after throttling"):
        await governor.acquire()
    for ticket in tickets:
        ticket.release()


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        ({"alive": 0}, "alive must be a whole number"),
        ({"creating": 2.5}, "creating must be a whole number"),
        ({"per_second": 0}, "per_second"),
        ({"acquire_timeout": -1}, "acquire_timeout"),
    ],
)
def test_bad_limits_say_which_and_why(limits: dict[str, float], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        Limits(**limits)  # type: ignore[arg-type]  # wrong on purpose


async def test_a_consumer_that_already_holds_a_sandbox_is_held_back_only_by_the_cap(tmp_path: Path) -> None:
    """Holders waiting for one more below a throttled concurrency would wait for each other forever."""
    governor = Governor("emulated", Limits(alive=4, acquire_timeout=0.5), tmp_path)
    held = [await governor.acquire() for _ in range(3)]
    governor.throttled()  # 3 alive -> 1: below what the holders hold
    _edit_state(tmp_path, paused_until=0)
    with pytest.raises(AcquireTimeout):
        await governor.acquire()  # a new consumer waits for the concurrency
    with already_holding():
        held.append(await governor.acquire())  # a holder is only held back by the cap...
        with pytest.raises(AcquireTimeout, match="alive 4"):
            await governor.acquire()  # ...which it is at now
    for ticket in held:
        ticket.release()
