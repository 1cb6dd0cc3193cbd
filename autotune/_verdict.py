"""Accuracy verdicts read against the reference's own noise (issue 18's first item).

The reference trains `REFERENCE_SEEDS` seeds. Its metric is their mean, and the spread of
its seeds is the noise every verdict is read against: a trial's accuracy loss (its seeds' mean
against the reference's mean) has a standard error of ``sd * sqrt(1/m + 1/n)`` for a trial of
m seeds and a reference of n, where ``sd`` is the relative standard deviation of one seed's
metric. The verdict says how sure it is: the chance, under that normal noise, that the true
loss is within the budget. A verdict that is not sure either way (`UNSURE`) is retrained with
more seeds before it counts (`needs_more_seeds`); if it is still unsure with as many seeds as
the reference, the eval loss breaks the tie where it is clear: a trial whose eval loss is two
standard errors below the reference's trained better than it and is kept; two above, worse,
and is not. The eval loss is what training minimises and is far less coarse than a metric
counted in eval items (on digits_mlp each item is 0.28% of accuracy), but its scale is not
the metric's, so it decides only which side of the budget a tie falls, never the loss itself.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

from autotune._score import accuracy_loss

UNSURE = (0.1, 0.9)
"""A verdict whose chance of being within the budget lies between these is not sure."""

CLEAR_STANDARD_ERRORS = 2.0
"""How many standard errors the eval loss must differ by to break a tie."""

METRIC, EVAL_LOSS, ONE_SEED, REFERENCE = "metric", "eval loss", "one seed", "reference"
"""What decided a verdict: the metric's mean with its noise, the eval loss breaking a tie, the
metric alone (a reference of one seed has no noise to read it against), or nothing: the
reference is within the budget of itself."""


@dataclasses.dataclass(frozen=True)
class ReferenceNoise:
    """The reference's metric and eval loss over its training seeds."""

    seed_metrics: tuple[float, ...]
    seed_eval_losses: tuple[float, ...] = ()

    @property
    def metric(self) -> float:
        """The reference's metric: the mean over its seeds."""
        return statistics.fmean(self.seed_metrics)

    @property
    def sd(self) -> float | None:
        """Relative standard deviation of one seed's metric; None with one seed."""
        if len(self.seed_metrics) < 2:
            return None
        return statistics.stdev(self.seed_metrics) / (abs(self.metric) or 1.0)

    @property
    def loss_sd(self) -> float | None:
        """Standard deviation of one seed's eval loss; None without two seeds' losses."""
        if len(self.seed_eval_losses) < 2:
            return None
        return statistics.stdev(self.seed_eval_losses)

    def standard_error(self, seeds: int) -> float | None:
        """Standard error of the accuracy loss of a trial trained with ``seeds`` seeds."""
        sd = self.sd
        if sd is None:
            return None
        return sd * math.sqrt(1.0 / seeds + 1.0 / len(self.seed_metrics))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One trial's accuracy verdict.

    Attributes:
        loss: Relative accuracy loss of the trial's seeds' mean against the reference's mean.
        feasible: Whether the trial counts as within the budget.
        confidence: Chance that the true loss is within the budget (None without noise).
        seeds: Training seeds behind the trial's metric.
        by: What decided it (`METRIC`, `EVAL_LOSS` or `ONE_SEED`).
    """

    loss: float
    feasible: bool
    confidence: float | None
    seeds: int
    by: str

    @property
    def sure(self) -> bool:
        low, high = UNSURE
        return self.confidence is None or not low < self.confidence < high

    def describe(self) -> str:
        """E.g. "feasible (96% sure, 1 seed)" or "over the accuracy budget (eval loss decided:
        the metric is within its noise of the budget, 3 seeds)"."""
        word = "feasible" if self.feasible else "over the accuracy budget"
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if self.by == REFERENCE:
            return f"{word} (the reference, {seeds})"
        if self.by == EVAL_LOSS:
            return f"{word} (the eval loss decided: the metric is within its noise, {seeds})"
        if self.confidence is None:
            return word
        sure = self.confidence if self.feasible else 1.0 - self.confidence
        return f"{word} ({sure:.0%} sure, {seeds})"


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def judge(
    reference: ReferenceNoise,
    seed_metrics: Sequence[float],
    budget: float,
    seed_eval_losses: Sequence[float] = (),
) -> Verdict:
    """The verdict on a trial whose seeds gave ``seed_metrics`` (and ``seed_eval_losses``)."""
    seeds = len(seed_metrics)
    loss = accuracy_loss(reference.metric, statistics.fmean(seed_metrics))
    over = loss - budget
    within = math.isclose(loss, budget, rel_tol=1e-9, abs_tol=1e-12) or over <= 0.0
    error = reference.standard_error(seeds)
    if error is None:
        return Verdict(loss, within, None, seeds, ONE_SEED)
    confidence = (
        1.0 if error == 0.0 and within else 0.0 if error == 0.0 else _normal_cdf(-over / error)
    )
    verdict = Verdict(loss, within, confidence, seeds, METRIC)
    if verdict.sure or seeds < len(reference.seed_metrics):
        return verdict
    better = _eval_loss_clearly(reference, seed_eval_losses)
    if better is None:
        return verdict
    return dataclasses.replace(verdict, feasible=better, by=EVAL_LOSS)


def _eval_loss_clearly(reference: ReferenceNoise, seed_eval_losses: Sequence[float]) -> bool | None:
    """True when the trial's eval loss is clearly below the reference's, False clearly above,
    None when it cannot tell (no losses, or within `CLEAR_STANDARD_ERRORS`)."""
    sd = reference.loss_sd
    if sd is None or not seed_eval_losses:
        return None
    error = sd * math.sqrt(1.0 / len(seed_eval_losses) + 1.0 / len(reference.seed_eval_losses))
    difference = statistics.fmean(seed_eval_losses) - statistics.fmean(reference.seed_eval_losses)
    if error == 0.0 or abs(difference) < CLEAR_STANDARD_ERRORS * error:
        return None
    return difference < 0.0


def of_reference(reference: ReferenceNoise) -> Verdict:
    """The reference's own verdict: no loss against itself, sure."""
    return Verdict(0.0, True, None, len(reference.seed_metrics), REFERENCE)


def needs_more_seeds(verdict: Verdict, reference: ReferenceNoise) -> int:
    """How many more seeds to train before ``verdict`` counts: up to the reference's count when
    it is not sure, else none."""
    if verdict.sure:
        return 0
    return max(0, len(reference.seed_metrics) - verdict.seeds)
