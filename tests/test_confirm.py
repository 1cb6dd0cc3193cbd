"""Confirmation runs: which trials are timed again, in what order, and how the best is chosen
from every window (pure logic; `tests/test_search_e2e.py` runs them for real)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from autotune import SearchOptions, export, write_study_report
from autotune._records import (
    STUDY_CHOSEN,
    STUDY_CONFIRMATION_FAILURES,
    STUDY_CONFIRMATION_ROUNDS,
    STUDY_CONFIRMATIONS,
)
from autotune._score import ACCURACY_CONSTRAINT, RUNNABLE_CONSTRAINT
from autotune._search import finish
from autotune._task import reference_settings
from autotune.study import (
    SPEEDUP_NOISE_FLOOR,
    best_trial,
    chance_if_equal,
    confirm,
    confirmation_order,
    estimated_speedup,
    estimated_throughput,
    paired_speedups,
    settle,
    throughput_runs,
    verdict,
)
from autotune.study._ranking import speedup_noise


def _study(
    rows: list[tuple[str, str, float | None, bool, int]], extra: tuple[dict, ...] = ()
) -> optuna.Study:
    """Trials from (role, status, throughput, feasible, processes) rows, numbered in order,
    with the user attributes of ``extra`` (one dict per row, in order) on top."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    for index, (role, status, throughput, feasible, processes) in enumerate(rows):
        trial = study.ask()
        trial.set_user_attr("role", role)
        trial.set_user_attr("status", status)
        trial.set_user_attr("throughput", throughput)
        trial.set_user_attr("settings", {"processes": processes})
        for name, value in (extra[index] if index < len(extra) else {}).items():
            trial.set_user_attr(name, value)
        trial.set_constraint(ACCURACY_CONSTRAINT, 0.0 if feasible else 0.01)
        trial.set_constraint(RUNNABLE_CONSTRAINT, 0.0 if status == "ok" else 1.0)
        study.tell(trial, throughput or 0.0)
    return study


class _Machine:
    """Re-measures from a table of figures per trial, one after another, and logs the calls."""

    def __init__(self, figures: dict[int, list[float | None]]) -> None:
        self.figures = {number: list(values) for number, values in figures.items()}
        self.calls: list[tuple[int, str]] = []

    def __call__(
        self, trial: optuna.trial.FrozenTrial, name: str
    ) -> tuple[float | None, str | None]:
        self.calls.append((trial.number, name))
        value = self.figures[trial.number].pop(0)
        return (value, None) if value is not None else (None, "oom: out of memory")


def test_order_visits_each_configuration_once_per_round_grouped_by_layout() -> None:
    layouts = {0: 1, 3: 2, 5: 1, 7: 2}
    order = confirmation_order(layouts, rounds=3, seed=0)
    assert len(order) == 12
    for start in (0, 4, 8):
        one_round = order[start : start + 4]
        assert sorted(one_round) == [0, 3, 5, 7]
        # Layouts stay together within a round; every other round walks them backwards.
        processes = [layouts[n] for n in one_round]
        assert processes == ([1, 1, 2, 2] if start in (0, 8) else [2, 2, 1, 1])
    assert order == confirmation_order(layouts, rounds=3, seed=0)  # seeded: reproducible
    # Within a layout the order is shuffled: over many rounds, several orders turn up.
    many = confirmation_order({n: 1 for n in range(6)}, rounds=20, seed=1)
    assert len({tuple(many[i : i + 6]) for i in range(0, 120, 6)}) > 1


def test_best_is_chosen_on_the_median_of_every_window() -> None:
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 300.0, True, 1),  # a lucky window
            ("search", "ok", 250.0, True, 1),
            ("search", "ok", 900.0, False, 1),  # over the accuracy budget: never the best
        ]
    )
    assert best_trial(study).number == 1
    study.set_user_attr(STUDY_CONFIRMATIONS, {"1": [200.0, 210.0], "2": [240.0, 260.0]})
    assert best_trial(study).number == 2
    runs = throughput_runs(study.trials[1].user_attrs, 1, {"1": [200.0, 210.0]})
    assert runs == [300.0, 200.0, 210.0] and estimated_throughput(runs) == 210.0


def test_a_repeat_shares_its_originals_windows_and_is_not_a_candidate() -> None:
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 150.0, True, 1)])
    trial = study.ask()
    trial.set_user_attr("status", "repeat")
    trial.set_user_attr("repeat_of", 1)
    trial.set_user_attr("throughput", 150.0)
    trial.set_constraint(ACCURACY_CONSTRAINT, 0.0)
    trial.set_constraint(RUNNABLE_CONSTRAINT, 0.0)
    study.tell(trial, 150.0)
    confirmations = {"1": [140.0, 160.0]}
    assert throughput_runs(study.trials[2].user_attrs, 2, confirmations) == [150.0, 140.0, 160.0]
    study.set_user_attr(STUDY_CONFIRMATIONS, confirmations)
    assert best_trial(study).number == 1


def test_a_configuration_that_failed_its_confirmation_is_not_the_best() -> None:
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 150.0, True, 2)])
    study.set_user_attr(STUDY_CONFIRMATION_FAILURES, {"1": "oom: out of memory"})
    assert best_trial(study).number == 0


def test_no_feasible_trial_means_no_best_and_nothing_to_confirm() -> None:
    study = _study([("search", "failed", None, False, 1), ("search", "ok", 50.0, False, 1)])
    machine = _Machine({})
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lambda _: None)
    assert best_trial(study) is None and machine.calls == []


def test_confirm_times_the_fastest_and_the_reference_and_is_idempotent() -> None:
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 300.0, True, 2),
            ("search", "ok", 250.0, True, 1),
            ("search", "ok", 120.0, True, 1),  # not among the 2 fastest: left alone
            ("search", "ok", 500.0, False, 1),  # infeasible: never confirmed
        ]
    )
    machine = _Machine({0: [110.0, 90.0], 1: [280.0, 290.0], 2: [230.0, 240.0]})
    lines: list[str] = []
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lines.append)
    assert sorted(number for number, _ in machine.calls) == [0, 0, 1, 1, 2, 2]
    assert study.user_attrs[STUDY_CONFIRMATIONS] == {
        "0": [110.0, 90.0],
        "1": [280.0, 290.0],
        "2": [230.0, 240.0],
    }
    assert {name for _, name in machine.calls} >= {"confirm_0001_1", "confirm_0001_2"}
    assert lines[0].startswith("confirming: timing trials 0, 1, 2 again (6 runs")
    assert best_trial(study).number == 1
    # Again: every chosen trial has its runs, so nothing runs.
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lines.append)
    assert len(machine.calls) == 6


def test_a_best_that_appears_only_after_confirmation_is_confirmed_too() -> None:
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 300.0, True, 1),  # a lucky window: confirms at 150
            ("search", "ok", 200.0, True, 1),  # the third fastest: not chosen at first
        ]
    )
    machine = _Machine({0: [100.0] * 4, 1: [150.0, 140.0], 2: [190.0, 210.0]})
    confirm(study, machine, count=1, rounds=2, seed=0, print_line=lambda _: None)
    assert [number for number, _ in machine.calls].count(2) == 2
    assert [number for number, _ in machine.calls].count(0) == 4  # beside both, every round
    assert best_trial(study).number == 2
    rounds = study.user_attrs[STUDY_CONFIRMATION_ROUNDS]
    assert [sorted(r) for r in rounds] == [["0", "1"], ["0", "1"], ["0", "2"], ["0", "2"]]


def test_the_best_is_judged_beside_the_reference_timed_in_the_same_rounds() -> None:
    """The machine slows down between the first confirmation rounds and the extra ones. Medians
    of windows would keep trial 1 (200 against 150); side by side, trial 2 is 2.5x the
    reference and trial 1 only 2x."""
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 400.0, True, 1),  # a lucky window
            ("search", "ok", 260.0, True, 1),
        ]
    )
    machine = _Machine({0: [100.0, 100.0, 60.0, 60.0], 1: [200.0, 200.0], 2: [150.0, 150.0]})
    lines: list[str] = []
    confirm(study, machine, count=1, rounds=2, seed=0, print_line=lines.append)
    assert best_trial(study).number == 2
    rounds = study.user_attrs[STUDY_CONFIRMATION_ROUNDS]
    assert paired_speedups(1, 0, rounds) == [2.0, 2.0]
    assert paired_speedups(2, 0, rounds) == [2.5, 2.5]
    attrs = study.trials[2].user_attrs
    confirmations = study.user_attrs[STUDY_CONFIRMATIONS]
    assert estimated_speedup(attrs, 2, study.trials[0], confirmations, rounds) == (2.5, [2.5, 2.5])
    assert estimated_throughput(throughput_runs(attrs, 2, confirmations)) == 150.0
    assert "  trial   2: 2.50x, 2.50x the reference side by side (median 2.50x)" in lines


def test_without_confirmation_rounds_the_speedup_is_the_ratio_of_medians() -> None:
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 250.0, True, 1)])
    study.set_user_attr(STUDY_CONFIRMATIONS, {"0": [100.0, 80.0]})
    speedup = estimated_speedup(
        study.trials[1].user_attrs, 1, study.trials[0], {"0": [100.0, 80.0]}, []
    )
    assert speedup == (2.5, [])


def test_a_failed_confirmation_is_recorded_and_the_next_best_confirmed() -> None:
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 300.0, True, 2),
            ("search", "ok", 200.0, True, 1),
        ]
    )
    machine = _Machine({0: [100.0] * 4, 1: [None], 2: [190.0, 210.0]})
    lines: list[str] = []
    confirm(study, machine, count=1, rounds=2, seed=0, print_line=lines.append)
    assert study.user_attrs[STUDY_CONFIRMATION_FAILURES] == {"1": "oom: out of memory"}
    assert [number for number, _ in machine.calls].count(1) == 1  # not retried
    assert any("trial   1: failed: oom" in line for line in lines)
    assert best_trial(study).number == 2


@pytest.mark.parametrize("count, rounds", [(0, 2), (2, 0)])
def test_confirm_zero_runs_nothing(count: int, rounds: int) -> None:
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 300.0, True, 1)])
    machine = _Machine({})
    confirm(study, machine, count=count, rounds=rounds, seed=0, print_line=lambda _: None)
    assert machine.calls == [] and STUDY_CONFIRMATIONS not in study.user_attrs


def _rounds(study: optuna.Study, rounds: list[dict[str, float]]) -> optuna.Study:
    study.set_user_attr(STUDY_CONFIRMATION_ROUNDS, rounds)
    return study


def test_a_best_within_the_noise_of_the_reference_is_not_what_is_recommended() -> None:
    """Issue 17, item 5: 1.01x is no win; the reference is exported."""
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 103.0, True, 1)])
    judged = verdict(_rounds(study, [{"0": 100.0, "1": 101.0}, {"0": 90.0, "1": 91.0}]))
    assert judged.best is not None and judged.best.number == 1
    assert judged.speedup == pytest.approx(1.0106, abs=1e-3)
    assert judged.noise == SPEEDUP_NOISE_FLOOR  # the rounds agree: the floor decides
    assert not judged.beats_reference and judged.within_noise
    assert judged.chosen is not None and judged.chosen.number == 0


def test_a_speedup_beyond_its_rounds_spread_wins() -> None:
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 130.0, True, 1)])
    judged = verdict(_rounds(study, [{"0": 100.0, "1": 125.0}, {"0": 100.0, "1": 135.0}]))
    assert judged.speedup == pytest.approx(1.30)
    assert judged.noise == pytest.approx(0.05)  # half the range of 1.25 and 1.35
    assert judged.beats_reference and not judged.within_noise
    assert judged.chosen is not None and judged.chosen.number == 1


def test_rounds_that_disagree_widen_the_noise() -> None:
    """1.10x as a median of 0.95x and 1.25x: the comparison moved 15% between rounds."""
    study = _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 110.0, True, 1)])
    judged = verdict(_rounds(study, [{"0": 100.0, "1": 95.0}, {"0": 100.0, "1": 125.0}]))
    assert judged.noise == pytest.approx(0.15)
    assert not judged.beats_reference and judged.chosen.number == 0  # type: ignore[union-attr]
    assert speedup_noise([1.0]) == speedup_noise([]) == SPEEDUP_NOISE_FLOOR


def test_the_reference_as_the_best_and_no_feasible_trial() -> None:
    fastest_reference = verdict(
        _study([("reference", "ok", 100.0, True, 1), ("search", "ok", 90.0, True, 1)])
    )
    assert fastest_reference.chosen.number == 0  # type: ignore[union-attr]
    assert not fastest_reference.within_noise and not fastest_reference.beats_reference
    none = verdict(_study([("reference", "failed", None, False, 1)]))
    assert none.best is None and none.chosen is None and not none.within_noise


def test_the_reference_is_exported_and_reported_when_the_best_is_within_the_noise(
    tmp_path: Path,
) -> None:
    study = _study(
        [("reference", "ok", 100.0, True, 1), ("search", "ok", 103.0, True, 1)],
        tuple(
            {
                "ds_config": {"mbs": mbs},
                "launch": {"processes": 1},
                "settings": {**reference_settings(32), "micro_batch_size": mbs},
                "accuracy_loss": 0.0,
            }
            for mbs in (32, 64)
        ),
    )
    _rounds(study, [{"0": 100.0, "1": 101.0}, {"0": 90.0, "1": 91.0}])
    ds_config, launch = export(study, tmp_path / "out")
    assert json.loads(ds_config.read_text()) == {"mbs": 32}  # the reference's
    assert json.loads(launch.read_text())["trial"] == 0
    page = write_study_report(study, tmp_path / "report.html").read_text()
    assert "Trial 1 is 1.01× the reference over 2 rounds side by side: within the noise" in page
    assert "<p>Trial 0: <code>ds_config.json</code>" in page
    lines: list[str] = []
    options = SearchOptions(model=tmp_path / "model.py", trials_dir=tmp_path / "trials")
    summary = finish(study, options, lines.append)
    assert summary.best is not None and summary.best.number == 1
    assert summary.chosen is not None and summary.chosen.number == 0
    assert any(line.startswith("best: trial 1 ") for line in lines), lines
    assert any(line.startswith("verdict: 1.01x is within the noise (+-2.0%") for line in lines), (
        lines
    )
    exported = tmp_path / "trials" / "model" / "best" / "launch.json"
    assert json.loads(exported.read_text())["trial"] == 0
    assert study.user_attrs[STUDY_CHOSEN] == 0  # for optuna-dashboard (tests/test_dashboard.py)


def test_the_chance_of_a_lead_between_equals() -> None:
    assert chance_if_equal(2, 2) == 0.25
    assert chance_if_equal(4, 4) == 1 / 16
    assert chance_if_equal(6, 7) == 8 / 128
    assert chance_if_equal(0, 0) == 1.0


def test_rounds_are_added_until_the_order_of_the_two_fastest_is_settled() -> None:
    """Issue 17, item 3: 2 rounds each (a 25% chance between equals) do not settle the order;
    2 more, with trial 1 ahead in every one, do (6%)."""
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 200.0, True, 1),
            ("search", "ok", 190.0, True, 1),
        ]
    )
    machine = _Machine({0: [100.0] * 4, 1: [200.0, 210.0, 205.0, 200.0], 2: [180.0] * 4})
    lines: list[str] = []
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lines.append)
    settle(study, machine, seed=0, print_line=lines.append)
    assert sorted(number for number, _ in machine.calls) == [0] * 4 + [1] * 4 + [2] * 4
    assert lines[-1] == (
        "order settled: trial 1 ahead of trial 2 in 4 of 4 rounds side by side "
        "(a 6% chance if they were equally fast)"
    )
    calls = len(machine.calls)
    settle(study, machine, seed=0, print_line=lines.append)  # settled: nothing more runs
    assert len(machine.calls) == calls


def test_an_order_that_swings_stays_unsettled_after_the_last_round() -> None:
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 200.0, True, 1),
            ("search", "ok", 199.0, True, 1),
        ]
    )
    swings = [220.0, 190.0, 220.0, 190.0, 220.0, 220.0]  # 10% ahead or 5% behind
    machine = _Machine({0: [100.0] * 6, 1: swings, 2: [200.0] * 6})
    lines: list[str] = []
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lines.append)
    settle(study, machine, seed=0, print_line=lines.append, max_rounds=6)
    assert lines[-1] == (
        "order not settled after 6 rounds: trial 1 ahead of trial 2 in 4 of 6 rounds side by "
        "side (a 34% chance if they were equally fast)"
    )
    assert len(machine.calls) == 18  # 6 rounds of the two and the reference


def test_two_equally_fast_configurations_are_left_in_either_order() -> None:
    """Within 2% of each other after 3 rounds: settling their order would buy nothing."""
    study = _study(
        [
            ("reference", "ok", 100.0, True, 1),
            ("search", "ok", 200.0, True, 1),
            ("search", "ok", 199.0, True, 1),
        ]
    )
    machine = _Machine({0: [100.0] * 3, 1: [200.0, 196.0, 202.0], 2: [198.0, 199.0, 200.0]})
    lines: list[str] = []
    confirm(study, machine, count=2, rounds=2, seed=0, print_line=lines.append)
    settle(study, machine, seed=0, print_line=lines.append)
    assert len(machine.calls) == 9  # one round added, then left open
    assert lines[-1] == (
        "order left open: trials 1 and 2 are within 2% of each other side by side "
        "(median 1.010 over 3 rounds); either will do"
    )
