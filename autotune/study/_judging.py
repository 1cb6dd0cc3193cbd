"""What the study stores of accuracy verdicts: the reference's metric over its seeds (the
noise every verdict is read against) and each scored trial's verdict (`autotune._verdict`)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from autotune._records import (
    ACCURACY_LOSS,
    ACCURACY_REUSED_FROM,
    BUDGET_STEPS,
    EVAL_LOSS,
    GLOBAL_BATCH_SIZE,
    METRIC,
    SAMPLES_TRAINED,
    SEED_EVAL_LOSSES,
    SEED_METRICS,
    STUDY_REFERENCE_METRIC,
    STUDY_REFERENCE_NOISE,
    STUDY_REFERENCE_NUMBER,
    STUDY_REFERENCE_SEED_EVAL_LOSSES,
    STUDY_REFERENCE_SEED_METRICS,
    VERDICT_BY,
    VERDICT_CONFIDENCE,
    VERDICT_SEEDS,
)
from autotune._score import constraints_for_run, reference_noise
from autotune._verdict import (
    CLEAR_STANDARD_ERRORS,
    ReferenceNoise,
    Verdict,
    judge,
    needs_more_seeds,
    of_reference,
)
from autotune._verdict import EVAL_LOSS as BY_EVAL_LOSS
from autotune.study._dashboard import store_constraints


def seed_figures(measured: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """A run's metric on each seed, and its eval loss on each seed (empty unless every seed
    has one)."""
    metrics = [float(m) for m in measured.get(SEED_METRICS) or [measured[METRIC]]]
    losses = measured.get(SEED_EVAL_LOSSES) or []
    if len(losses) != len(metrics) or any(loss is None for loss in losses):
        return metrics, []
    return metrics, [float(loss) for loss in losses]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def store_reference(study: optuna.Study, trial: optuna.Trial, measured: Mapping[str, Any]) -> None:
    """Record the reference's seeds on the study; its metric is their mean. The metric is
    stored last: other workers wait for it, and find the seeds with it."""
    metrics, losses = seed_figures(measured)
    study.set_user_attr(STUDY_REFERENCE_SEED_METRICS, metrics)
    study.set_user_attr(STUDY_REFERENCE_SEED_EVAL_LOSSES, losses)
    study.set_user_attr(STUDY_REFERENCE_NOISE, reference_noise(metrics))
    study.set_user_attr(STUDY_REFERENCE_NUMBER, trial.number)
    trial.set_user_attr(METRIC, _mean(metrics))
    trial.set_user_attr(EVAL_LOSS, _mean(losses))
    study.set_user_attr(STUDY_REFERENCE_METRIC, _mean(metrics))


def reference_of(study_attrs: Mapping[str, Any]) -> ReferenceNoise:
    """The reference's seeds as the study recorded them (a study from before seeds were kept:
    its one reference metric, so verdicts are read without noise)."""
    metrics = study_attrs.get(STUDY_REFERENCE_SEED_METRICS)
    if not metrics:
        return ReferenceNoise((float(study_attrs[STUDY_REFERENCE_METRIC]),))
    losses = study_attrs.get(STUDY_REFERENCE_SEED_EVAL_LOSSES) or ()
    return ReferenceNoise(tuple(map(float, metrics)), tuple(map(float, losses)))


def store_verdict(
    trial: optuna.Trial, verdict: Verdict, metrics: list[float], losses: list[float], budget: float
) -> None:
    """Store a scored trial's verdict: its constraints (over the budget by how much; a verdict
    the eval loss decided is at the budget when kept, just over it when not), its metric and
    eval loss (means over its seeds) and how sure the verdict is."""
    over = constraints_for_run(verdict.loss, budget)
    if verdict.by == BY_EVAL_LOSS:
        over = constraints_for_run(budget if verdict.feasible else budget + 1e-6, budget)
    store_constraints(trial, over)
    trial.set_user_attr(SEED_METRICS, metrics)
    trial.set_user_attr(SEED_EVAL_LOSSES, losses)
    trial.set_user_attr(METRIC, _mean(metrics))
    trial.set_user_attr(EVAL_LOSS, _mean(losses))
    trial.set_user_attr(ACCURACY_LOSS, verdict.loss)
    trial.set_user_attr(VERDICT_CONFIDENCE, verdict.confidence)
    trial.set_user_attr(VERDICT_BY, verdict.by)
    trial.set_user_attr(VERDICT_SEEDS, verdict.seeds)


def judge_run(
    reference: ReferenceNoise,
    measured: Mapping[str, Any],
    budget: float,
    more_seeds: Callable[[range], Mapping[str, Any] | None] | None,
    print_line: Callable[[str], None],
    is_reference: bool = False,
) -> tuple[Verdict, list[float], list[float]]:
    """A run's verdict, with its metric and eval loss on each seed. A verdict within the
    reference's noise of the budget trains more seeds first (``more_seeds`` trains the seeds
    it is given, counted from --seed, and returns their measurements or None; None where
    the run's metric was reused from an earlier trial)."""
    metrics, losses = seed_figures(measured)
    reused = more_seeds is None
    if (is_reference or reused) and tuple(metrics) == reference.seed_metrics:
        # The reference, or a run that reused its metric (the same numerics): no loss, sure.
        # A run of its own that ties on every seed (a saturated metric) is judged as any.
        return of_reference(reference), metrics, losses
    verdict = judge(reference, metrics, budget, losses)
    more = needs_more_seeds(verdict, reference)
    if not more or more_seeds is None:
        return verdict, metrics, losses
    print_line(
        f"-> accuracy loss {verdict.loss * 100:+.2f}%, within the reference's noise of the "
        f"budget: training {more} more seed{'s' if more > 1 else ''}"
    )
    extra = more_seeds(range(len(metrics), len(metrics) + more))
    if extra is None:
        return verdict, metrics, losses
    more_metrics, more_losses = seed_figures(extra)
    losses = losses + more_losses if losses and more_losses else []
    metrics = metrics + more_metrics
    return judge(reference, metrics, budget, losses), metrics, losses


@dataclasses.dataclass(frozen=True)
class QualityCheck:
    """Whether a trial, trained the samples it was given, reached the reference's eval loss
    (issue 18, item 3: under goodput scoring those are the samples it was predicted to need).

    Attributes:
        samples: Samples the trial trained.
        reference_samples: Samples the reference trained.
        eval_loss: The trial's eval loss, the mean over its seeds.
        reference_eval_loss: The reference's, the mean over its seeds.
        margin: Two standard errors of the difference, from the reference's seeds (0 with
            one seed).
        predicted: Whether the trial's samples were predicted by the noise scale.
    """

    samples: int
    reference_samples: int
    eval_loss: float
    reference_eval_loss: float
    margin: float
    predicted: bool

    @property
    def reached(self) -> bool:
        return self.eval_loss <= self.reference_eval_loss + self.margin

    def line(self) -> str:
        why = " (predicted to reach the reference's loss)" if self.predicted else ""
        return (
            f"quality: trained {self.samples:,} samples{why}, the reference {self.reference_samples:,}:"
            f" eval loss {self.eval_loss:.4g} against the reference's {self.reference_eval_loss:.4g}"
            f" (+-{self.margin:.2g}): " + ("reached" if self.reached else "not reached")
        )


def quality_check(
    trial_attrs: Mapping[str, Any],
    reference_attrs: Mapping[str, Any],
    study_attrs: Mapping[str, Any],
    predicted: bool,
) -> QualityCheck | None:
    """The check for a trial (None where the eval loss or the samples were not measured)."""
    if not study_attrs.get(STUDY_REFERENCE_SEED_EVAL_LOSSES):
        return None  # the study's reference had no eval loss (or predates it)
    reference = reference_of(study_attrs)
    losses = trial_attrs.get(SEED_EVAL_LOSSES) or []
    samples, reference_samples = (
        attrs.get(SAMPLES_TRAINED) for attrs in (trial_attrs, reference_attrs)
    )
    if trial_attrs.get(ACCURACY_REUSED_FROM) is not None:
        # Its eval loss is from a full budget of the same numerics; its own run timed
        # throughput only and may have stopped early.
        steps, batch = trial_attrs.get(BUDGET_STEPS), trial_attrs.get(GLOBAL_BATCH_SIZE)
        samples = None if steps is None or batch is None else int(steps) * int(batch)
    if not losses or None in losses or not reference.seed_eval_losses:
        return None
    if samples is None or reference_samples is None:
        return None
    sd = reference.loss_sd or 0.0
    error = sd * math.sqrt(1.0 / len(losses) + 1.0 / len(reference.seed_eval_losses))
    return QualityCheck(
        int(samples),
        int(reference_samples),
        statistics.fmean(losses),
        statistics.fmean(reference.seed_eval_losses),
        CLEAR_STANDARD_ERRORS * error,
        predicted,
    )
