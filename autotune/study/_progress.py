"""Progress on one line: where a run stands in the search (its phase, the runs done and those
left), how long the search has run, and about how long it has left (from the runs so far),
shown when each run starts and, on a terminal, live while it runs (`autotune.study._live`)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence

import optuna

from autotune._records import REFERENCE, STUDY_WORKERS, WALL_SECONDS, TrialRecord
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


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run stands when it starts; `note` and `autotune.study._live.live_text` draw it.

    Attributes:
        run: The run's number in the study (1 for the first).
        n_trials: The runs the study may hold (--n-trials), or None without a number.
        role: Its phase: the trial's role (`REFERENCE`, `STARTUP`, `PROBE`, `SEARCH`).
        elapsed: Seconds the search has run here.
        done: Runs the study has finished (every worker's).
        to_run: Runs left, this one included; None when nothing bounds them.
        at_most: Whether ``to_run`` is only a bound: the untried configurations this machine
            can run, fewer than --n-trials allows.
        left: About how many seconds the runs left take, or None (no run timed yet).
        by_timeout: Whether ``left`` is what --timeout leaves.
        rest: About how many seconds the runs after this one take (``left`` less this run's
            share), or None; a live count-down stops there while this run outlasts its share.
    """

    run: int
    n_trials: int | None
    role: str
    elapsed: float
    done: int
    to_run: int | None
    at_most: bool = False
    left: float | None = None
    by_timeout: bool = False
    rest: float | None = None

    @property
    def phase(self) -> str:
        return "the reference" if self.role == REFERENCE else self.role

    def heading(self) -> str:
        """``run 3 of 12, start-up``."""
        return (
            f"run {self.run}{'' if self.n_trials is None else f' of {self.n_trials}'}, {self.phase}"
        )

    def left_text(self, seconds: float | None = None) -> str:
        """``about 2 min left``, ``40 s left of --timeout`` or nothing; ``seconds`` replaces
        ``left``."""
        left = self.left if seconds is None else seconds
        if left is None:
            return ""
        return (
            f"{duration(left)} left of --timeout"
            if self.by_timeout
            else f"about {duration(left)} left"
        )

    def note(self) -> str:
        """What a run's line says in brackets: ``run 3 of 12, start-up; 2 done, 10 to run; 42 s
        in, about 2 min left`` (the first run of a new study: its phase and counts only)."""
        counts = f"{self.done} done"
        if self.to_run is not None:
            counts += f", {'at most ' if self.at_most else ''}{self.to_run} to run"
        note = f"{self.heading()}; {counts}"
        if self.run <= 1 and self.done == 0:
            return note
        left = self.left_text()
        return f"{note}; {duration(self.elapsed)} in" + (f", {left}" if left else "")


def progress_of(
    run: int,
    n_trials: int | None,
    role: str,
    elapsed: float,
    walls: Sequence[float],
    workers: int = 1,
    timeout_left: float | None = None,
    runs_left_at_most: int | None = None,
    done: int | None = None,
) -> Progress:
    """Where run ``run`` stands (``walls``: the wall times of the study's runs so far, ``done``
    of them unless given; the runs left are those up to ``n_trials``, or ``runs_left_at_most``
    when fewer configurations are left to run)."""
    done = len(walls) if done is None else done
    limit = UNLIMITED_RUNS if n_trials is None else n_trials
    runs_left = limit - run + 1
    at_most = runs_left_at_most is not None and runs_left_at_most < runs_left
    if runs_left_at_most is not None:
        runs_left = max(1, min(runs_left, runs_left_at_most))
    bounded = runs_left < UNLIMITED_RUNS - run
    if not bounded:
        walls = []  # no bound on the runs left (a probe search of a space too large to list)
    left, by_timeout = time_left(runs_left, walls, workers, timeout_left)
    rest = None
    if left is not None and not by_timeout:
        rest = time_left(runs_left - 1, walls, workers, None)[0]
    return Progress(
        run,
        n_trials,
        role,
        elapsed,
        done,
        runs_left if bounded else None,
        at_most,
        left,
        by_timeout,
        rest,
    )


def progress_note(
    run: int,
    n_trials: int | None,
    role: str,
    elapsed: float,
    walls: Sequence[float],
    workers: int = 1,
    timeout_left: float | None = None,
    runs_left_at_most: int | None = None,
    done: int | None = None,
) -> str:
    """`Progress.note` of `progress_of` (same arguments)."""
    return progress_of(
        run, n_trials, role, elapsed, walls, workers, timeout_left, runs_left_at_most, done
    ).note()


def study_progress(
    study: optuna.Study,
    options: SearchOptions,
    role: str,
    run: int,
    started: float,
    runs_left_at_most: int | None = None,
) -> Progress:
    """`progress_of` run number ``run`` of the study, whose search here started at ``started``
    (`time.monotonic()`), from the wall times of the study's runs so far; at most
    ``runs_left_at_most`` runs remain (this one included) where the space says so."""
    elapsed = time.monotonic() - started
    runs = runs_of(study)
    walls = [float(w) for t in runs if (w := TrialRecord.of(t).get(WALL_SECONDS)) is not None]
    workers = len(study.user_attrs.get(STUDY_WORKERS, {})) or 1
    timeout_left = None if options.timeout is None else options.timeout - elapsed
    return progress_of(
        run,
        options.n_trials,
        role,
        elapsed,
        walls,
        workers,
        timeout_left,
        runs_left_at_most,
        len(runs),
    )
