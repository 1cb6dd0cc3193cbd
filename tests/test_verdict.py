"""Accuracy verdicts read against the reference's seed noise (issue 18, item 1): pure logic,
on synthetic seeds with a known noise."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from autotune._batch import evaluate_with_loss
from autotune._verdict import (
    EVAL_LOSS,
    METRIC,
    ONE_SEED,
    ReferenceNoise,
    judge,
    needs_more_seeds,
)
from autotune.study._judging import judge_run, reference_of

BUDGET = 0.005


def test_the_reference_metric_is_the_mean_of_its_seeds_and_its_noise_their_spread():
    reference = ReferenceNoise((0.90, 0.92, 0.94), (0.30, 0.28, 0.26))
    assert reference.metric == pytest.approx(0.92)
    assert reference.sd == pytest.approx(0.02 / 0.92)
    assert reference.loss_sd == pytest.approx(0.02)
    # One seed of a trial against the mean of three: sd * sqrt(1 + 1/3).
    assert reference.standard_error(1) == pytest.approx(0.02 / 0.92 * (4 / 3) ** 0.5)
    assert ReferenceNoise((0.9,)).sd is None


def test_three_seeds_estimate_a_known_noise():
    """Over many synthetic references of 3 seeds each drawn with a relative sd of 0.4%, the
    pooled variance of the estimates gives back 0.4%."""
    rng = random.Random(0)
    true_sd, mean = 0.004, 0.95
    variances = []
    for _ in range(4000):
        seeds = tuple(rng.gauss(mean, true_sd * mean) for _ in range(3))
        variances.append(ReferenceNoise(seeds).sd ** 2)
    assert statistics.fmean(variances) ** 0.5 == pytest.approx(true_sd, rel=0.05)


def test_the_confidence_is_calibrated_on_synthetic_seeds():
    """Trials whose true loss is spread around the budget, each judged on one seed against a
    reference of three, all with a known sd of 0.3%: among the verdicts that say they are
    sure (over 90% or under 10%), the true side of the budget agrees at least 93% of the
    time, and a verdict at the budget is a coin flip (about 50%)."""
    rng = random.Random(1)
    sd, mean = 0.003, 0.95
    sure_right, sure_all = 0, 0
    for _ in range(4000):
        true_loss = rng.uniform(-0.01, 0.02)
        reference = ReferenceNoise(tuple(rng.gauss(mean, sd * mean) for _ in range(3)))
        trial = rng.gauss(mean * (1 - true_loss), sd * mean)
        verdict = judge(reference, [trial], BUDGET)
        assert verdict.by == METRIC and verdict.confidence is not None
        if verdict.sure:
            sure_all += 1
            sure_right += verdict.feasible == (true_loss <= BUDGET)
    assert sure_right / sure_all >= 0.93
    at_budget = judge(ReferenceNoise((0.94, 0.95, 0.96)), [0.95 * (1 - BUDGET)], BUDGET)
    assert at_budget.confidence == pytest.approx(0.5)
    assert not at_budget.sure


def test_a_verdict_near_the_budget_asks_for_the_reference_s_seed_count():
    reference = ReferenceNoise((0.94, 0.95, 0.96))
    near = judge(reference, [0.95 * (1 - BUDGET)], BUDGET)
    assert needs_more_seeds(near, reference) == 2
    far = judge(reference, [0.80], BUDGET)
    assert far.sure and not far.feasible and needs_more_seeds(far, reference) == 0
    clear = judge(reference, [0.99], BUDGET)
    assert clear.sure and clear.feasible
    assert "sure, 1 seed" in clear.describe()


def test_the_eval_loss_breaks_a_tie_only_with_the_reference_s_seed_count_and_when_clear():
    reference = ReferenceNoise((0.94, 0.95, 0.96), (0.200, 0.201, 0.202))
    tied = [0.95 * (1 - BUDGET)] * 3
    lower = judge(reference, tied, BUDGET, [0.150, 0.151, 0.152])
    assert lower.by == EVAL_LOSS and lower.feasible
    higher = judge(reference, tied, BUDGET, [0.250, 0.251, 0.252])
    assert higher.by == EVAL_LOSS and not higher.feasible
    same = judge(reference, tied, BUDGET, [0.200, 0.201, 0.202])
    assert same.by == METRIC  # the eval loss cannot tell either
    one_seed = judge(reference, tied[:1], BUDGET, [0.150])
    assert one_seed.by == METRIC and not one_seed.sure  # more seeds first
    assert "eval loss decided" in lower.describe()


def test_a_study_from_before_seeds_were_kept_judges_without_noise():
    reference = reference_of({"reference_metric": 0.9})
    verdict = judge(reference, [0.89], BUDGET)
    assert verdict.by == ONE_SEED and verdict.confidence is None and not verdict.feasible
    assert needs_more_seeds(verdict, reference) == 0


def test_judge_run_trains_more_seeds_for_a_verdict_near_the_budget():
    reference = ReferenceNoise((0.94, 0.95, 0.96), (0.2, 0.21, 0.22))
    near = 0.95 * (1 - BUDGET)
    asked: list[range] = []
    lines: list[str] = []

    def more_seeds(offsets: range) -> dict[str, list[float]]:
        asked.append(offsets)
        return {"seed_metrics": [0.97, 0.97], "seed_eval_losses": [0.19, 0.19]}

    measured = {"metric": near, "seed_metrics": [near], "seed_eval_losses": [0.2]}
    verdict, metrics, losses = judge_run(reference, measured, BUDGET, more_seeds, lines.append)
    assert asked == [range(1, 3)]
    assert metrics == [near, 0.97, 0.97] and losses == [0.2, 0.19, 0.19]
    assert verdict.seeds == 3 and verdict.feasible
    assert "training 2 more seeds" in lines[0]
    # A reused metric (no more_seeds) keeps the verdict it has.
    kept, metrics, _ = judge_run(reference, measured, BUDGET, None, lines.append)
    assert kept.seeds == 1 and metrics == [near]


def test_evaluate_with_loss_gives_the_loss_from_the_same_outputs():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    batches = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]

    def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
        return float((output.argmax(-1) == target).float().mean())

    metric, loss = evaluate_with_loss(
        lambda x: x, iter(batches), accuracy, torch.nn.functional.cross_entropy
    )
    assert metric == pytest.approx(2 / 3)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))
    assert evaluate_with_loss(lambda x: x, iter(batches), accuracy)[1] is None


def test_verdict_seeds_must_be_at_least_one(tmp_path):
    from autotune import SearchOptions
    from autotune._errors import UserError

    with pytest.raises(UserError, match="--verdict-seeds must be at least 1"):
        SearchOptions(model=tmp_path / "m.py", verdict_seeds=0)


def test_the_quality_check_compares_eval_losses_within_the_reference_s_noise():
    from autotune.study import quality_check

    study = {
        "reference_metric": 0.95,
        "reference_seed_metrics": [0.94, 0.95, 0.96],
        "reference_seed_eval_losses": [0.30, 0.31, 0.32],
    }
    reference = {"samples_trained": 8192}
    close = quality_check(
        {"seed_eval_losses": [0.325], "samples_trained": 16384}, reference, study, True
    )
    assert close is not None and close.reached  # within 2 standard errors: 0.02 * 1.15
    assert close.reference_eval_loss == pytest.approx(0.31)
    assert close.margin == pytest.approx(2 * 0.01 * (4 / 3) ** 0.5)
    line = close.line()
    assert "trained 16,384 samples (predicted to reach the reference's loss)" in line
    assert line.endswith("reached")
    far = quality_check(
        {"seed_eval_losses": [0.40], "samples_trained": 8192}, reference, study, False
    )
    assert far is not None and not far.reached and far.line().endswith("not reached")
    assert quality_check({"seed_eval_losses": [None]}, reference, study, False) is None
    # A run whose metric was reused stopped early (throughput only): its eval loss is from a
    # full budget of the same numerics, and those are the samples it shows.
    reused = {
        "seed_eval_losses": [0.31],
        "samples_trained": 6336,
        "accuracy_reused_from": 3,
        "budget_steps": 128,
        "global_batch_size": 64,
    }
    check = quality_check(reused, reference, study, False)
    assert check is not None and check.samples == 8192


def test_the_reference_and_runs_of_its_numerics_take_the_reference_s_verdict():
    reference = ReferenceNoise((0.94, 0.95, 0.96))
    measured = {"metric": 0.95, "seed_metrics": [0.94, 0.95, 0.96]}
    verdict, _, _ = judge_run(reference, measured, BUDGET, None, print)
    assert verdict.feasible and verdict.loss == 0.0 and verdict.sure
    assert verdict.describe() == "feasible (the reference, 3 seeds)"
    # A run that measured its own metric and ties on every seed is judged, not called the
    # reference (a saturated metric: every run at 100%).
    tied, _, _ = judge_run(reference, measured, BUDGET, lambda offsets: None, print)
    assert tied.by == METRIC and tied.feasible and "the reference" not in tied.describe()
    itself, _, _ = judge_run(reference, measured, BUDGET, lambda offsets: None, print, True)
    assert itself.describe() == "feasible (the reference, 3 seeds)"
