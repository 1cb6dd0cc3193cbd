"""What a trial that was not scored stores: a repeat (an earlier trial's record), a trial
without a measurement (skipped, or failed), a run stopped early because it cannot win, and a
probe of the probe-first strategy. The last two keep their measurements and their rate (the
trial's value), have no metric, and carry the constraints of a trial without a run, so neither
is ever a candidate for the best. And what every run stores of how to launch it again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from autotune._machine import Machine
from autotune._plan import TrialConfig
from autotune._records import (
    ACCURACY_REUSED_FROM,
    BUDGET_STEPS,
    CANNOT_WIN_BELOW,
    DS_CONFIG,
    LAUNCH,
    LAUNCHED,
    MEASURED,
    MEASURED_STEPS,
    METRIC,
    NOT_COPIED_BY_REPEAT,
    PARTITION,
    PROBED,
    RATE,
    REASON,
    REPEAT,
    REPEAT_OF,
    SEED_EVAL_LOSSES,
    SEED_METRICS,
    STAGE_PREDICTED_SECONDS,
    STATUS,
    STOPPED,
    THROUGHPUT,
    TRIAL_DIR,
    WALL_SECONDS,
    TrialRecord,
)
from autotune._score import constraints_for_no_run
from autotune.pipeline import LayerProfile, predicted_stage_seconds
from autotune.runner import RunResult
from autotune.study._dashboard import store_constraints
from autotune.study._earlier import CANNOT_WIN_MARGIN


def store_no_run(trial: optuna.Trial, status: str, reason: str) -> None:
    """Store a trial that has no measurement (`INFEASIBLE` or `FAILED`) and why."""
    trial.set_user_attr(STATUS, status)
    trial.set_user_attr(REASON, reason)
    store_constraints(trial, constraints_for_no_run())


def store_repeat(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
    """Store a repeat: ``earlier``'s record and constraints, as `REPEAT` of it."""
    for name, value in earlier.user_attrs.items():
        if name not in NOT_COPIED_BY_REPEAT:
            trial.set_user_attr(name, value)
    trial.set_user_attr(STATUS, REPEAT)
    trial.set_user_attr(REPEAT_OF, earlier.number)
    store_constraints(trial, earlier.constraints)


def store_timed(trial: optuna.Trial, measured: dict[str, Any], rate: float, status: str) -> None:
    """Store a run's measurements, its rate and ``status``, with the constraints of a trial
    without a run."""
    for name in MEASURED:
        trial.set_user_attr(name, measured.get(name))
    trial.set_user_attr(RATE, rate)
    trial.set_user_attr(STATUS, status)
    store_constraints(trial, constraints_for_no_run())


def store_stopped(trial: optuna.Trial, measured: dict[str, Any], rate: float) -> str:
    """Store a run that stopped early (`STOPPED`); returns the reason it stored."""
    store_timed(trial, measured, rate, STOPPED)
    to_beat = float(trial.user_attrs[CANNOT_WIN_BELOW])
    reason = (
        f"stopped after {measured.get(MEASURED_STEPS)} timed steps of "
        f"{measured.get(BUDGET_STEPS)}: {measured[THROUGHPUT]:.1f} samples/s cannot reach "
        f"{to_beat:.1f} ({1 - CANNOT_WIN_MARGIN:.0%} of the best feasible run's), so its "
        "accuracy cannot matter"
    )
    trial.set_user_attr(REASON, reason)
    return reason


def store_probed(trial: optuna.Trial, measured: dict[str, Any], rate: float) -> None:
    """Store a probe (`PROBED`): throughput only."""
    store_timed(trial, measured, rate, PROBED)


def store_run(
    trial: optuna.Trial,
    config: TrialConfig,
    machine: Machine,
    profile: LayerProfile | None,
    result: RunResult,
    reused: TrialRecord | None,
    directory: Path,
) -> None:
    """Store what every launched run of a trial stores: whether it launched a group, its
    folder, wall time, ds_config and launch recipe; where ``reused`` (an earlier trial of the
    same numerics) measured the metric, its metric goes into the run's measurements."""
    trial.set_user_attr(LAUNCHED, result.launched)
    if result.ok and reused is not None:
        # Only throughput was measured; the metric is the earlier trial's, same numerics.
        assert result.measurements is not None
        result.measurements[METRIC] = reused.get(METRIC)
        result.measurements[SEED_METRICS] = reused.get(SEED_METRICS) or [reused.get(METRIC)]
        result.measurements[SEED_EVAL_LOSSES] = reused.get(SEED_EVAL_LOSSES)
        trial.set_user_attr(ACCURACY_REUSED_FROM, reused.number)
    trial.set_user_attr(TRIAL_DIR, str(directory))
    trial.set_user_attr(WALL_SECONDS, result.wall_seconds)
    trial.set_user_attr(DS_CONFIG, config.ds_config())
    trial.set_user_attr(LAUNCH, launch_recipe(trial, config, machine, profile, result))


def launch_recipe(
    trial: optuna.Trial,
    config: TrialConfig,
    machine: Machine,
    profile: LayerProfile | None,
    result: RunResult,
) -> dict[str, Any]:
    """How to launch the configuration again; a run that partitioned a pipeline adds the
    boundaries it used (and stores the profile's prediction of each stage's time)."""
    launch = config.launch_recipe(machine)
    used = (result.measurements or {}).get(PARTITION) if result.ok else None
    if used:
        # Whatever the method, the boundaries it produced rebuild the same pipeline
        # (autotune.build_pipeline_module), and the profile says how balanced they are.
        launch["partition_bounds"] = used
        if profile is not None:
            predicted = predicted_stage_seconds(profile, config, used)
            trial.set_user_attr(STAGE_PREDICTED_SECONDS, list(predicted))
    return launch
