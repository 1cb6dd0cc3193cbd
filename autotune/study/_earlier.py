"""What the study's finished trials tell a new proposal before it runs: the memory it will
need (the estimate corrected by what runs showed it misses), a metric measured on the same
numerics (reused), numerics found over the accuracy budget (no run), and the throughput a run
must be able to reach to be worth its budget (early stop)."""

from __future__ import annotations

import optuna

from autotune._machine import Machine
from autotune._memory import MemoryEstimate, MemoryModel, ModelFootprint, estimate_rank_bytes
from autotune._plan import TrialConfig
from autotune._records import MEMORY_ESTIMATE_BYTES, PEAK_MEMORY_BYTES, TrialRecord
from autotune._score import is_feasible

_COMPLETE = (optuna.trial.TrialState.COMPLETE,)
CANNOT_WIN_MARGIN = 0.2
"""A run stops early once its throughput is surely (95%) below the best feasible run's so far
less this fraction: the best was timed at another moment, on a machine whose speed drifts, and
its single window may have been a lucky one."""


def _judged(study: optuna.Study, key: str) -> list[tuple[TrialRecord, bool]]:
    """The finished runs that trained numerics ``key`` for their own metric, and whether each
    kept within the accuracy budget."""
    found = []
    for trial in study.get_trials(deepcopy=False, states=_COMPLETE):
        record = TrialRecord.of(trial)
        if (
            record.is_ok
            and record.numerics_key == key
            and record.accuracy_reused_from is None
            and record.metric is not None
        ):
            found.append((record, is_feasible(trial.constraints)))
    return found


def same_numerics(study: optuna.Study, config: TrialConfig, items_vary: bool) -> TrialRecord | None:
    """An earlier trial that measured the metric of the same numerics, if any."""
    # Reuse rests on every split of a global batch training the same; with items that
    # vary in length the key holds the micro-batch too (TrialConfig.numerics_key).
    judged = _judged(study, config.numerics_key(items_vary))
    return judged[0][0] if judged else None


def numerics_over_budget(
    study: optuna.Study, config: TrialConfig, items_vary: bool, budget: float
) -> str | None:
    """Why no run of ``config`` can be feasible, or None: an earlier trial trained the same
    numerics and lost more accuracy than the budget, and a run of them would only reuse that
    verdict."""
    for record, feasible in _judged(study, config.numerics_key(items_vary)):
        if not feasible and record.accuracy_loss is not None:
            return (
                f"the same numerics (global batch {config.global_batch_size}, "
                f"{config.precision}, learning rate {config.learning_rate:.3g}) lost "
                f"{record.accuracy_loss:+.2%} in trial {record.number}, over the "
                f"{budget:.2%} budget"
            )
    return None


def cannot_win_below(study: optuna.Study) -> float | None:
    """The samples/s a run must be able to reach to train on: the best feasible run's so far
    less `CANNOT_WIN_MARGIN`; None before any feasible run."""
    feasible = [
        record.throughput
        for trial in study.get_trials(deepcopy=False, states=_COMPLETE)
        if (record := TrialRecord.of(trial)).is_ok
        and record.throughput is not None
        and is_feasible(trial.constraints)
    ]
    return max(feasible) * (1 - CANNOT_WIN_MARGIN) if feasible else None


def memory_prediction(
    study: optuna.Study, footprint: ModelFootprint, config: TrialConfig, machine: Machine
) -> tuple[MemoryEstimate, float]:
    """The memory estimate of one rank of ``config`` (parameters, gradients, optimizer state by
    ZeRO stage, measured activations: ``footprint``), and the prediction: the estimate plus
    what the study's finished runs showed it misses."""
    estimate = estimate_rank_bytes(footprint, config, machine.accelerator)
    pairs = []
    for trial in study.get_trials(deepcopy=False, states=_COMPLETE):
        record = TrialRecord.of(trial)
        estimated, peak = record.get(MEMORY_ESTIMATE_BYTES), record.get(PEAK_MEMORY_BYTES)
        if record.is_ok and estimated is not None and peak is not None:
            pairs.append((estimated, peak))
    return estimate, MemoryModel.from_pairs(pairs).predict(estimate)
