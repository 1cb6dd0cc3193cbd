"""The progress a run's line shows: its phase, the runs done and left, the time so far and
about how long is left (pure logic; the searches of the end-to-end tests print it, and
tests/test_search_e2e.py reads a real search's lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune import SearchOptions
from autotune._errors import UserError
from autotune.study._options import UNLIMITED_RUNS
from autotune.study._progress import duration, progress_note, time_left


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (42, "42 s"), (60, "1 min"), (130, "2 min 10 s"), (3900, "1 h 05 min")],
)
def test_durations_read_as_people_write_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_first_run_is_the_reference_with_nothing_to_estimate_from() -> None:
    assert progress_note(1, 12, "reference", 0.5, []) == (
        "run 1 of 12, the reference; 0 done, 12 to run"
    )


def test_time_left_is_the_mean_run_times_the_runs_left_shared_by_the_workers() -> None:
    walls = [14.0, 3.0, 4.0]  # the reference's three seeds make it the slowest
    assert progress_note(4, 12, "start-up", 20.0, walls) == (
        "run 4 of 12, start-up; 3 done, 9 to run; 20 s in, about 1 min 03 s left"
    )
    # Two workers: runs 4 and 5 may still run on the other while run 6 starts.
    assert progress_note(6, 12, "search", 40.0, walls, workers=2, done=4) == (
        "run 6 of 12, search; 4 done, 7 to run; 40 s in, about 24 s left"
    )
    assert time_left(9, walls, 1, None) == (63.0, False)


def test_timeout_decides_when_it_comes_sooner() -> None:
    walls = [10.0, 10.0]
    assert progress_note(3, 12, "search", 50.0, walls, timeout_left=70.0) == (
        "run 3 of 12, search; 2 done, 10 to run; 50 s in, 1 min 10 s left of --timeout"
    )
    assert time_left(10, walls, 1, 500.0) == (100.0, False)  # the runs end first
    assert time_left(10, [], 1, 30.0) == (30.0, True)
    assert time_left(10, walls, 1, -5.0) == (0.0, True)


def test_no_more_runs_are_left_than_configurations_that_can_still_run() -> None:
    """64 runs asked over a space where 10 runnable configurations are left untried."""
    assert progress_note(3, 64, "search", 30.0, [15.0, 15.0], runs_left_at_most=10) == (
        "run 3 of 64, search; 2 done, at most 10 to run; 30 s in, about 2 min 30 s left"
    )
    assert progress_note(3, 64, "search", 30.0, [15.0], runs_left_at_most=0).endswith(
        "about 15 s left"  # this run at least
    )


def test_a_search_without_a_bound_on_its_runs_estimates_no_time_left() -> None:
    """The probe search of a space too large to list, without --timeout: its phase and the time
    it has run, no guess at what is left."""
    assert progress_note(5, None, "probe", 95.0, [2.0] * 4) == (
        "run 5, probe; 4 done; 1 min 35 s in"
    )
    assert progress_note(5, None, "probe", 95.0, [2.0] * 4, runs_left_at_most=10) == (
        "run 5, probe; 4 done, at most 10 to run; 1 min 35 s in, about 20 s left"
    )


def test_timeout_alone_is_a_budget() -> None:
    """Issue 17, item 7: --timeout without --n-trials runs as many as the time allows."""
    options = SearchOptions(model=Path("model.py"), n_trials=None, timeout=600)
    assert options.run_limit == UNLIMITED_RUNS
    assert options.budget() == "600 s (--timeout)"
    both = SearchOptions(model=Path("model.py"), n_trials=12, timeout=90)
    assert both.run_limit == 12
    assert both.budget() == "12 runs or 90 s (--timeout), whichever comes first"
    assert SearchOptions(model=Path("model.py"), n_trials=12).budget() == "12 runs"
    # The probe search (the default) ends on its own; an Optuna sampler needs a budget.
    assert SearchOptions(model=Path("model.py")).budget() == "until it is done"
    assert SearchOptions(model=Path("model.py")).run_limit == UNLIMITED_RUNS
    with pytest.raises(UserError, match="Give --n-trials or --timeout with --sampler tpe"):
        SearchOptions(model=Path("model.py"), sampler="tpe")
    assert progress_note(5, None, "search", 95.0, [20.0] * 4, timeout_left=505.0) == (
        "run 5, search; 4 done; 1 min 35 s in, 8 min 25 s left of --timeout"
    )
