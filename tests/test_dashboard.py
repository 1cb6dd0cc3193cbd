"""What optuna-dashboard shows of a study: its own app, on a loopback port, serves a study
whose trials were stored by autotune's own functions (the trial path, less DeepSpeed), and
its JSON must mark the trials over the accuracy budget infeasible, name the objective and
name autotune's chosen trial; `tests/test_search_e2e.py` checks a real search's study the same
way, and `tests/test_dashboard_browser.py` the rendered page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from _dashboard import attrs, feasible_in_dashboard, served_dashboard, study_detail

from autotune._records import (
    FEASIBLE,
    INFEASIBLE,
    METRIC,
    OK,
    RATE,
    REFERENCE,
    ROLE,
    SEED_METRICS,
    SETTINGS,
    STATUS,
    STUDY_CHOSEN,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_OBJECTIVE,
    THROUGHPUT,
)
from autotune._score import (
    ACCURACY_CONSTRAINT,
    RUNNABLE_CONSTRAINT,
    constraints_for_run,
    is_feasible,
)
from autotune._task import reference_settings
from autotune.study import choice_note, show_choice, verdict
from autotune.study._dashboard import name_objective, store_constraints
from autotune.study._judging import judge_run, store_reference, store_verdict
from autotune.study._judging import reference_of as reference_noise
from autotune.study._outcomes import store_no_run

BUDGET = 0.005


def _proposed(study: optuna.Study, **settings: Any) -> optuna.Trial:
    """A trial of the reference's settings but ``settings``, two of them as its parameters."""
    settings = {**reference_settings(32), **settings}
    tuned = {name: settings[name] for name in ("micro_batch_size", "precision")}
    study.enqueue_trial(tuned)
    trial = study.ask()
    trial.suggest_categorical("micro_batch_size", [32, 64])
    trial.suggest_categorical("precision", ["fp32", "bf16"])
    trial.set_user_attr(SETTINGS, settings)
    return trial


def _scored(study: optuna.Study, rate: float, metric: float, **settings: Any) -> None:
    """A run scored as `autotune.study._objective` scores one (its verdict, then OK)."""
    trial = _proposed(study, **settings)
    is_reference = not study.user_attrs.get("reference_metric")
    trial.set_user_attr(ROLE, REFERENCE if is_reference else "search")
    metrics = [metric, metric + 0.001, metric - 0.001] if is_reference else [metric]
    measured = {THROUGHPUT: rate, METRIC: metric, SEED_METRICS: metrics}
    trial.set_user_attr(THROUGHPUT, rate)
    if is_reference:
        store_reference(study, trial, measured)
    trial.set_user_attr(RATE, rate)
    judged, metrics, losses = judge_run(
        reference_noise(study.user_attrs), measured, BUDGET, None, print, is_reference
    )
    store_verdict(trial, judged, metrics, losses, BUDGET)
    trial.set_user_attr(STATUS, OK)
    study.tell(trial, rate)


def autotune_study(storage_url: str, name: str = "tiny") -> optuna.Study:
    """Trial 0 the reference (100 samples/s); trial 1 the fastest (300) but 11% less
    accurate, over the budget; trial 2 (180) as accurate as the reference, autotune's choice;
    trial 3 skipped (it cannot run). The search's end as `autotune._search.finish` writes it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name=name, storage=storage_url, direction="maximize")
    study.set_user_attr(STUDY_CHOSEN, None)  # first, as `autotune search` creates a study
    study.set_user_attr(STUDY_OBJECTIVE, "samples")
    study.set_user_attr(STUDY_MAX_ACCURACY_LOSS, BUDGET)
    name_objective(study)
    _scored(study, 100.0, 0.90)
    _scored(study, 300.0, 0.80, precision="bf16")
    _scored(study, 180.0, 0.90, micro_batch_size=64)
    skipped = _proposed(study, micro_batch_size=64, precision="bf16")
    store_no_run(skipped, INFEASIBLE, "pin_memory only helps a GPU")
    study.tell(skipped, 0.0)
    show_choice(study, verdict(study))
    return study


def test_the_dashboard_marks_trials_over_the_budget_infeasible(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    autotune_study(url)
    with served_dashboard(url) as base:
        detail = study_detail(base, "tiny")
    assert detail["objective_names"] == ["samples/s"]
    trials = {t["number"]: t for t in detail["trials"]}
    assert {n: feasible_in_dashboard(t) for n, t in trials.items()} == {
        0: True,
        1: False,  # the fastest, over the accuracy budget
        2: True,
        3: False,  # did not run
    }
    shown = {n: attrs(t["user_attrs"])[FEASIBLE] for n, t in trials.items()}
    assert shown == {0: "True", 1: "False", 2: "True", 3: "False"}
    # The dashboard's own best is the highest value, feasible or not; autotune's choice is
    # beside it, among the study's attributes, and in the notes.
    assert [t["number"] for t in detail["best_trials"]] == [1]
    assert attrs(detail["user_attrs"])[STUDY_CHOSEN] == "2"
    assert detail["note"]["body"].startswith("**autotune's choice: trial 2**: mbs=64")
    assert "1.80x the reference's samples/s (trial 0)" in detail["note"]["body"]
    assert trials[2]["note"]["body"] == detail["note"]["body"]
    assert trials[1]["note"]["body"] == ""


def test_a_new_choice_moves_the_trial_note(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    study = autotune_study(url)
    _scored(study, 250.0, 0.90, zero_stage=1)  # a resumed search finds a faster one
    show_choice(study, verdict(study))
    with served_dashboard(url) as base:
        detail = study_detail(base, "tiny")
    notes = {t["number"]: t["note"]["body"] for t in detail["trials"]}
    assert notes[2] == "" and notes[4].startswith("**autotune's choice: trial 4**")
    assert detail["note"]["body"] == notes[4]
    assert attrs(detail["user_attrs"])[STUDY_CHOSEN] == "4"


def test_autotune_reads_the_same_feasibility_from_what_it_stores() -> None:
    study = optuna.create_study(direction="maximize")
    over, within = constraints_for_run(0.02, BUDGET), constraints_for_run(0.001, BUDGET)
    for constraints in (over, within):
        trial = study.ask()
        store_constraints(trial, constraints)
        study.tell(trial, 1.0)
    stored = study.get_trials()
    assert [list(t.constraints.values()) for t in stored] == [
        list(over.values()),
        list(within.values()),
    ]
    assert [is_feasible(t.constraints) for t in stored] == [False, True]
    assert study.best_trial.number == 1  # Optuna reads them too


def test_a_study_from_before_gives_the_gp_sampler_as_many_constraints_per_trial() -> None:
    """Trials stored with named constraints (autotune before the dashboard needed the list)
    and trials stored since: GPSampler refuses trials with different numbers of them."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.GPSampler(seed=0, n_startup_trials=2)
    )
    for index in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        constraints = constraints_for_run(0.01 if x > 0.8 else 0.0, BUDGET)
        if index < 3:
            trial.set_constraint(ACCURACY_CONSTRAINT, constraints[ACCURACY_CONSTRAINT])
            trial.set_constraint(RUNNABLE_CONSTRAINT, constraints[RUNNABLE_CONSTRAINT])
        else:
            store_constraints(trial, constraints)
        study.tell(trial, x)
    assert {len(t.constraints) for t in study.get_trials()} == {2}


def test_the_note_says_when_the_reference_is_kept() -> None:
    """The fastest feasible trial is within the noise of the reference: the reference stays."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(STUDY_MAX_ACCURACY_LOSS, BUDGET)
    _scored(study, 100.0, 0.90)
    _scored(study, 101.0, 0.90, micro_batch_size=64)
    note = choice_note(verdict(study), study.user_attrs)
    assert note.startswith("**autotune's choice: trial 0** (the reference): mbs=32")
    assert "The fastest feasible trial, 1, is 1.01x the reference, within the noise" in note


def test_the_note_says_when_no_trial_is_feasible() -> None:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(STUDY_MAX_ACCURACY_LOSS, BUDGET)
    assert choice_note(verdict(study), study.user_attrs).startswith(
        "**autotune's choice: none yet.** No trial is feasible: none ran within the 0.50%"
    )
