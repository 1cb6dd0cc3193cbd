"""Progress on one line: where a run stands in the search, how long the search has run, and
about how long it has left (from the runs so far), shown when each run starts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import optuna

from autotune._records import REFERENCE, SEARCH, STUDY_WORKERS, WALL_SECONDS, TrialRecord
from autotune.study._options import UNLIMITED_RUNS, SearchOptions
from autotune.study._ranking import runs_of


def duration(seconds: float) -> str:
    """``42 s``, ``2 min 10 s`` or ``1 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_left(
    runs_left: int, walls: Sequence[float], workers: int, timeout_left: float | None
) -> tuple[float | None, bool]:
    """(About how long the runs left take: the mean wall time of the runs so far (a sum of
    runs is their count times their mean: relaunches and full trainings make the tail), times
    the runs left, shared by the workers; or the time --timeout leaves when that is sooner),
    and whether --timeout is what decides. None before any run has finished, without
    --timeout."""
    estimate = statistics.fmean(walls) * runs_left / max(1, workers) if walls else None
    if timeout_left is not None and (estimate is None or timeout_left < estimate):
        return max(0.0, timeout_left), True
    return estimate, False


def progress_note(
    run: int,
    n_trials: int | None,
    role: str,
    elapsed: float,
    walls: Sequence[float],
    workers: int = 1,
    timeout_left: float | None = None,
    runs_left_at_most: int | None = None,
) -> str:
    """What a run's line says in brackets: ``run 3 of 12, start-up; 42 s in, about 2 min left``
    (``walls``: the wall times of the study's runs so far; the runs left are those up to
    ``n_trials``, or ``runs_left_at_most`` when fewer configurations are left to run)."""
    phase = "" if role == SEARCH else (", the reference" if role == REFERENCE else f", {role}")
    note = f"run {run}{'' if n_trials is None else f' of {n_trials}'}{phase}"
    if run <= 1 and not walls:
        return note
    limit = UNLIMITED_RUNS if n_trials is None else n_trials
    runs_left = limit - run + 1
    if runs_left_at_most is not None:
        runs_left = max(1, min(runs_left, runs_left_at_most))
    if runs_left >= UNLIMITED_RUNS - run:
        walls = []  # no bound on the runs left (a probe search of a space too large to list)
    left, by_timeout = time_left(runs_left, walls, workers, timeout_left)
    note += f"; {duration(elapsed)} in"
    if left is not None:
        note += (
            f", {duration(left)} left of --timeout"
            if by_timeout
            else f", about {duration(left)} left"
        )
    return note


def study_progress(
    study: optuna.Study,
    options: SearchOptions,
    role: str,
    run: int,
    started: float,
    runs_left_at_most: int | None = None,
) -> str:
    """`progress_note` for run number ``run`` of the study, whose search here started at
    ``started`` (`time.monotonic()`), from the wall times of the study's runs so far; at most
    ``runs_left_at_most`` runs remain (this one included) where the space says so."""
    elapsed = time.monotonic() - started
    walls = [
        float(wall)
        for trial in runs_of(study)
        if (wall := TrialRecord.of(trial).get(WALL_SECONDS)) is not None
    ]
    workers = len(study.user_attrs.get(STUDY_WORKERS, {})) or 1
    timeout_left = None if options.timeout is None else options.timeout - elapsed
    return progress_note(
        run, options.n_trials, role, elapsed, walls, workers, timeout_left, runs_left_at_most
    )
