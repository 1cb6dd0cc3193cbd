"""Scoring: how much accuracy a trial gave up against the reference, and whether that is
within the budget, expressed as Optuna constraints (feasible when every value is <= 0)."""

from __future__ import annotations

import math
from collections.abc import Sequence

DEFAULT_MAX_ACCURACY_LOSS = 0.005
ACCURACY_CONSTRAINT = "accuracy_loss_over_budget"
RUNNABLE_CONSTRAINT = "did_not_run"
"""A study stores a trial's constraints as Optuna's list (`autotune.study._dashboard`), which
Optuna reads back keyed by position: these two, in this order, in every trial."""


def accuracy_loss(reference_metric: float, metric: float) -> float:
    """Relative loss of the metric against the reference; negative when the trial did better.

    The metric is higher-is-better. With a reference metric of exactly 0 the loss is absolute.
    """
    scale = abs(reference_metric) or 1.0
    return (reference_metric - metric) / scale


REFERENCE_SEEDS = 3
"""Training seeds of the reference's run: the spread of its metric over them is the noise every
accuracy verdict is read against (issue 18 asks for at least 3)."""


def reference_noise(seed_metrics: Sequence[float]) -> float | None:
    """Relative spread (largest less smallest) of the reference's metric over training seeds,
    or None with one seed."""
    if len(seed_metrics) < 2:
        return None
    scale = abs(seed_metrics[0]) or 1.0
    return (max(seed_metrics) - min(seed_metrics)) / scale


def constraints_for_run(loss: float, budget: float) -> dict[str, float]:
    """Constraint values for a trial that ran: over budget by how much.

    A loss equal to the budget up to float rounding (0.8 -> 0.796 at 0.5%) counts as within it.
    """
    over = 0.0 if math.isclose(loss, budget, rel_tol=1e-9, abs_tol=1e-12) else loss - budget
    return {ACCURACY_CONSTRAINT: over, RUNNABLE_CONSTRAINT: 0.0}


def constraints_for_no_run() -> dict[str, float]:
    """Constraint values for a trial that could not run or failed: always infeasible."""
    return {ACCURACY_CONSTRAINT: 0.0, RUNNABLE_CONSTRAINT: 1.0}


def is_feasible(constraints: dict[str, float]) -> bool:
    return bool(constraints) and all(
        math.isfinite(value) and value <= 0.0 for value in constraints.values()
    )


def validate_budget(budget: float) -> str | None:
    """None when ``budget`` is a usable --max-accuracy-loss, else what is expected."""
    if not math.isfinite(budget) or not 0.0 <= budget < 1.0:
        return (
            f"--max-accuracy-loss must be a fraction in [0, 1), e.g. 0.005 for 0.5%; got {budget}"
        )
    return None
