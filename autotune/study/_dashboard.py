"""What a study stores so that optuna-dashboard shows it as autotune reads it.

optuna-dashboard (0.21.0, the release `pip install optuna-dashboard` gives) reads:

- a trial's feasibility only from Optuna's list-form constraints, the trial system attribute
  ``"constraints"``, not from the ``"constraints:<name>"`` keys that Optuna 5's
  ``Trial.set_constraint`` writes; without the list every trial is feasible to it;
- its "Best Trial" from the storage's highest value of any complete trial, feasible or not;
- the objective's name from ``Study.set_metric_names``;
- notes, on the study or on a trial, from the study's system attributes (its ``save_note``).

So a trial's constraints are stored as that list (`store_constraints`), which Optuna 5 also
reads as ``trial.constraints`` (keyed "0", "1", in `autotune._score`'s order): the samplers
and `autotune._score.is_feasible` see the same values, as many as before, so a study resumed
from an earlier version gives GPSampler the same number of constraints on every trial. Beside
it, `FEASIBLE` names the verdict in the dashboard's trial table. When a search ends,
`show_choice` records the trial autotune recommends (`STUDY_CHOSEN`, shown beside the
dashboard's "Best Trial") and explains it in a note on the study and on that trial.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from autotune._records import (
    FEASIBLE,
    STUDY_CHOSEN,
    TrialRecord,
    rate_label,
    study_budget,
)
from autotune._score import DEFAULT_MAX_ACCURACY_LOSS, is_feasible
from autotune._space import describe_settings
from autotune.study._ranking import Verdict

_CONSTRAINTS = "constraints"
"""Optuna's system attribute for a trial's constraints as a list (what the dashboard reads)."""
_NOTE_VERSION = "dashboard:note_ver"
_NOTE_TEXT = "dashboard:note_str:"
_TRIAL_NOTE_VERSION = "dashboard:{trial_id}:note_ver"
_TRIAL_NOTE_TEXT = "dashboard:{trial_id}:note_str:"
_NOTE_CHUNK = 2045
"""optuna-dashboard keeps a note in system attributes of at most this many characters each."""


def store_constraints(trial: optuna.Trial, constraints: Mapping[str, float]) -> None:
    """Store a trial's constraints (feasible when every value is <= 0), in the order given,
    and whether they make it feasible."""
    values = [float(value) for value in constraints.values()]
    trial.storage.set_trial_system_attr(trial._trial_id, _CONSTRAINTS, values)
    trial.set_user_attr(FEASIBLE, is_feasible(dict(constraints)))


def name_objective(study: optuna.Study) -> None:
    """Name the value the study maximises: samples/s, tokens/s, or either of goodput."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([rate_label(study.user_attrs)])


def choice_note(judged: Verdict, study_attrs: Mapping[str, Any]) -> str:
    """The note (Markdown) that says which trial autotune recommends, and why."""
    unit = rate_label(study_attrs)
    budget = study_budget(study_attrs, DEFAULT_MAX_ACCURACY_LOSS)
    chosen, best, reference = judged.chosen, judged.best, judged.reference
    if chosen is None:
        head = (
            f"**autotune's choice: none yet.** No trial is feasible: none ran within the "
            f"{budget:.2%} accuracy-loss budget."
        )
    else:
        record = TrialRecord.of(chosen)
        head = (
            f"**autotune's choice: trial {chosen.number}**"
            f"{' (the reference)' if reference and reference.number == chosen.number else ''}: "
            f"{describe_settings(record.settings)}, accuracy loss "
            f"{record.accuracy_loss or 0.0:+.2%} against a {budget:.2%} budget"
        )
        if judged.beats_reference and reference is not None:
            head += (
                f", {judged.speedup or math.nan:.2f}x the reference's {unit} "
                f"(trial {reference.number})."
            )
        elif judged.within_noise and best is not None:
            head += (
                f". The fastest feasible trial, {best.number}, is {judged.speedup or math.nan:.2f}x "
                f"the reference, within the noise (+-{judged.noise:.1%}): the model file's own "
                "configuration is kept."
            )
        else:
            head += "."
    return (
        f"{head}\n\nA trial over the accuracy budget, or one that did not run, is infeasible: "
        f"`{FEASIBLE}` is false, and the plots grey it. The dashboard's own *Best Trial* is "
        f"the highest {unit} of any trial, feasible or not.\n"
    )


def show_choice(study: optuna.Study, judged: Verdict) -> None:
    """Record the trial the search recommends (`STUDY_CHOSEN`), name the objective, and say
    which trial is chosen in a note on the study and on that trial (the note of a trial chosen
    before is emptied)."""
    name_objective(study)
    attrs = study.user_attrs
    chosen = judged.chosen
    before = attrs.get(STUDY_CHOSEN)
    note = choice_note(judged, attrs)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if before is not None and before in trials and (chosen is None or before != chosen.number):
        _save_note(study, "", trials[before]._trial_id)
    study.set_user_attr(STUDY_CHOSEN, None if chosen is None else chosen.number)
    _save_note(study, note)
    if chosen is not None:
        _save_note(study, note, chosen._trial_id)


def _save_note(study: optuna.Study, body: str, trial_id: int | None = None) -> None:
    """Write a note as optuna-dashboard's ``save_note`` does (a version, then the text in
    chunks; chunks left from a longer note emptied), so the dashboard need not be installed."""
    version_key = (
        _NOTE_VERSION if trial_id is None else _TRIAL_NOTE_VERSION.format(trial_id=trial_id)
    )
    prefix = _NOTE_TEXT if trial_id is None else _TRIAL_NOTE_TEXT.format(trial_id=trial_id)
    storage, study_id = study._storage, study._study_id
    system_attrs = storage.get_study_system_attrs(study_id)
    storage.set_study_system_attr(study_id, version_key, int(system_attrs.get(version_key, 0)) + 1)
    chunks = [body[i : i + _NOTE_CHUNK] for i in range(0, len(body), _NOTE_CHUNK)]
    stored = sum(1 for key in system_attrs if key.startswith(prefix))
    for index in range(max(len(chunks), stored)):
        text = chunks[index] if index < len(chunks) else ""
        storage.set_study_system_attr(study_id, f"{prefix}{index}", text)
