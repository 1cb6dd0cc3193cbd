"""The samplers a study can use, and what is queued before they propose anything: the
reference first, then (for TPE and GP) a start-up among configurations that can run: the
reference in each half precision the machine computes natively, then random draws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from autotune._records import REFERENCE, ROLE, STARTUP
from autotune._space import (
    SearchSpace,
    random_runnable_settings,
    reference_with,
    sampled_params,
)

STARTUP_RUNS = 5
"""Runs (the reference included) before TPE or GP model what they have seen; until then they
try the reference in the machine's native half precisions, then configurations drawn at random
among those this machine can run, spread over each setting's values (`enqueue_startup`). Optuna's default is 10, which in a 12-run search leaves
the model 2 runs. On the recorded digits landscape (40 configurations, 500 seeds each) TPE
needed a median of 9-10 runs to reach 95% of the best with 10 start-up runs, and 7 with these
5 (random search: 8); on a second one (80 configurations, the best one of a kind) neither
start-up beat random search (see benchmarks/RESULTS.md)."""
ASKS_PER_RUN = 25
"""Proposals that cost no run (repeats, configurations that cannot run) are cheap but not free;
a study stops after this many proposals per wanted run, which only a tiny space reaches."""
_MODEL_BASED = ("tpe", "gp")


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler that tolerates the enqueued reference trial.

    Optuna 5.0's GridSampler.after_trial reads the trial's grid_id, which an enqueued trial
    never gets, and raises KeyError when one grid point is left.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Any,
    ) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)
        elif not self._get_unvisited_grid_ids(study):
            study.stop()


def make_sampler(
    name: str, seed: int, space_grid: dict[str, list[Any]]
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `autotune search --sampler NAME --seed SEED` uses (one of
    `SAMPLERS`); ``space_grid`` is the space's grid (`SearchSpace.grid()`), for grid search.
    Each worker of a shared study passes its own seed (`sampler_seed`)."""
    if name == "tpe":
        # The constant liar makes workers of a shared study propose away from each other's
        # running trials (Optuna 5.0's default; stated so that no default change loses it).
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            n_startup_trials=STARTUP_RUNS,
            constant_liar=True,
        )
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_RUNS)
    if name in ("random", "probe"):
        # The probe strategy queues every trial it wants with all its settings fixed; the
        # sampler only fills what a queued trial leaves open, which it never does.
        return optuna.samplers.RandomSampler(seed=seed)
    return _GridSampler(space_grid, seed=seed)


def sampler_seed(seed: int, worker: int) -> int:
    """The seed of worker number ``worker``'s sampler: --seed for the first (so a search on one
    machine draws as it always did), then one more per worker, so that workers started at the
    same moment do not propose the same configurations."""
    return seed + worker


def enqueue_reference(study: optuna.Study, space: SearchSpace, reference: dict[str, Any]) -> None:
    """Queue the reference (what the model file runs today) as the study's next trial."""
    study.enqueue_trial(sampled_params(space, reference), user_attrs={ROLE: REFERENCE})


def enqueue_startup(
    study: optuna.Study,
    space: SearchSpace,
    reference: dict[str, Any],
    runnable: Callable[[dict[str, Any]], bool],
    sampler: str,
    seed: int,
    n_trials: int,
    native_half: tuple[str, ...] = (),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Queue the start-up of a TPE or GP study after its reference: STARTUP_RUNS - 1 distinct
    configurations this machine can run (at most n_trials - 1). First the reference in each
    precision of ``native_half`` that the space lists (the same steps and global batch, so
    the same accuracy but for rounding: the most likely single win on hardware built for
    it), then draws at random (`random_runnable_settings`). Returns the settings queued, those
    two kinds apart.

    The samplers' own start-up draws from the whole space, and a draw skipped without a run
    still counts towards it, as an infeasible point (the README tells what that cost once).
    """
    if sampler not in _MODEL_BASED:
        return [], []
    count = max(0, min(STARTUP_RUNS - 1, n_trials - 1))
    halves = reference_with(space, reference, "precision", native_half, runnable)[:count]
    left = count - len(halves)
    drawn = random_runnable_settings(space, reference, runnable, left, seed, halves) if left else []
    for settings in halves + drawn:
        study.enqueue_trial(sampled_params(space, settings), user_attrs={ROLE: STARTUP})
    return halves, drawn
