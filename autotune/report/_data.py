"""What the report is drawn from: a study's trials as a table (one row per trial) and the
study-level facts beside them, both read through `autotune.study`."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autotune._noise_scale import of_measured
from autotune._records import (
    ACCURACY_REUSED_FROM,
    CANNOT_WIN,
    DS_CONFIG,
    EXTRA_STEPS,
    FAILED,
    GLOBAL_BATCH_SIZE,
    GRADIENT_NOISE,
    LAUNCH,
    LAUNCHED,
    LEARNING_RATE,
    LOSS_SCALE,
    MEASURED_STATUSES,
    MEMORY_PREDICTED_BYTES,
    OK,
    PARTITION,
    REPEAT_OF,
    ROLE,
    SEED_EVAL_LOSSES,
    SEED_METRICS,
    SKIPPED_STEPS,
    STABLE_AFTER_STEPS,
    STAGE_COMM_SECONDS,
    STAGE_COMPUTE_SECONDS,
    STAGE_PREDICTED_SECONDS,
    STATUS,
    STUDY_EVAL_SOURCE,
    STUDY_MACHINE,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_METRIC_NAME,
    STUDY_MODEL,
    STUDY_REFERENCE_METRIC,
    STUDY_REFERENCE_NOISE,
    STUDY_REFERENCE_NUMBER,
    STUDY_TRAIN_SAMPLES,
    VERDICT_BY,
    TrialRecord,
    rate_unit,
    study_budget,
)
from autotune._score import DEFAULT_MAX_ACCURACY_LOSS, is_feasible
from autotune._space import PARAMETERS
from autotune.report._common import MEASUREMENTS
from autotune.report._failures import log_tail
from autotune.report._importance import MIN_TRIALS_FOR_IMPORTANCE
from autotune.report._page import write_report
from autotune.report._summary import LIBRARIES
from autotune.study import (
    Scoring,
    Verdict,
    estimated_speedup,
    estimated_throughput,
    reference_of,
    stored_confirmations,
    stored_rounds,
    study_scoring,
    timed_runs,
    verdict,
)

_NUMBERS: tuple[str, ...] = (GLOBAL_BATCH_SIZE, LEARNING_RATE, *MEASUREMENTS)
"""Record values copied as numbers (NaN when absent)."""

_DETAILS: tuple[str, ...] = (
    REPEAT_OF,
    CANNOT_WIN,
    ACCURACY_REUSED_FROM,
    STABLE_AFTER_STEPS,
    EXTRA_STEPS,
    LAUNCHED,
    MEMORY_PREDICTED_BYTES,
    SKIPPED_STEPS,
    LOSS_SCALE,
    PARTITION,
    STAGE_COMPUTE_SECONDS,
    STAGE_COMM_SECONDS,
    STAGE_PREDICTED_SECONDS,
    VERDICT_BY,
    SEED_METRICS,
    SEED_EVAL_LOSSES,
)
"""Record values copied as they are (None when absent)."""


_SHOWN = tuple(s for s in optuna.trial.TrialState if s != optuna.trial.TrialState.PRUNED)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its settings, status and measurements (the `trials` table);
    proposals that ran nothing because the study's runs were all taken (Optuna state pruned, see
    docs/many-workers.md) are left out."""
    confirmations, rounds = stored_confirmations(study), stored_rounds(study)
    reference = reference_of(study.get_trials(deepcopy=False))
    # Under goodput scoring the windows are shown as timed (rates over efficiency).
    scoring = study_scoring(study.user_attrs, 0)
    rows = []
    for trial in study.get_trials(deepcopy=False, states=_SHOWN):
        row = _trial_row(trial)
        row.update(_confirmed(trial, reference, confirmations, rounds, scoring))
        row.update(_feasibility_and_log(trial, row[STATUS]))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.attrs[STUDY_MAX_ACCURACY_LOSS] = study_budget(
            study.user_attrs, DEFAULT_MAX_ACCURACY_LOSS
        )
    return frame


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's number, role, status, settings and measurements."""
    record = TrialRecord.of(trial)
    row: dict[str, Any] = {
        "number": trial.number,
        ROLE: record.role,
        STATUS: record.status or trial.state.name.lower(),
    }
    settings = record.settings
    row.update({name: settings.get(name) for name in PARAMETERS})
    for name in _NUMBERS:
        value = record.get(name)
        row[name] = math.nan if value is None else value
    return row


def _confirmed(
    trial: optuna.trial.FrozenTrial,
    reference: optuna.trial.FrozenTrial | None,
    confirmations: dict[str, list[float]],
    rounds: list[dict[str, float]],
    scoring: Scoring,
) -> dict[str, Any]:
    """Every window the configuration was timed over, their median, and its speed-up over the
    reference (side by side in confirmation rounds where there were any; see autotune.study;
    of goodput under goodput ``scoring``, whose rates are divided back to what was timed)."""
    runs = timed_runs(trial.user_attrs, trial.number, confirmations, scoring)
    estimate = estimated_throughput(runs)
    speedup, pairs = estimated_speedup(
        trial.user_attrs, trial.number, reference, confirmations, rounds
    )
    return {
        "throughput_runs": runs or None,
        "estimated_throughput": math.nan if estimate is None else estimate,
        "speedup": math.nan if speedup is None else speedup,
        "speedup_runs": pairs or None,
    }


def _feasibility_and_log(trial: optuna.trial.FrozenTrial, status: str) -> dict[str, Any]:
    """Whether the trial is feasible, its reason and dates, a failed trial's log tail and the
    details of its record."""
    record = TrialRecord.of(trial)
    trial_dir = record.trial_dir
    row: dict[str, Any] = {
        "feasible": status in MEASURED_STATUSES and is_feasible(trial.constraints),
        "reason": record.reason,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "trial_dir": trial_dir,
        "log_tail": (
            log_tail(Path(trial_dir) / "log.txt") if trial_dir and status == FAILED else ""
        ),
    }
    row.update({name: record.get(name) for name in _DETAILS})
    return row


def _versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES`, None when not installed."""
    versions: dict[str, str | None] = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = None
    return versions


def _importances(study: optuna.Study) -> dict[str, float] | None:
    """The settings' fANOVA importances for throughput over the 'ok' trials, or None."""
    # Importances over measured trials only: failed and infeasible trials score 0, which
    # would make "did it run" the most important setting. Repeats would count twice.
    measured = [
        trial
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if TrialRecord.of(trial).status == OK and trial.value is not None
    ]
    if len(measured) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sub_study = optuna.create_study(direction=study.direction)
        sub_study.add_trials(measured)
        # A fixed seed: the same study gives the same report.
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(sub_study, evaluator=evaluator)
        return {name: float(value) for name, value in found.items()}
    except (RuntimeError, ValueError, ImportError):
        return None
    finally:
        optuna.logging.set_verbosity(verbosity)


def report_info(study: optuna.Study) -> dict[str, Any]:
    """The study-level facts the report shows beside the trials.

    Besides the study's attributes: the library versions, the best trial's ``ds_config`` and
    ``launch`` recipe, and the settings' importances for throughput over the 'ok' trials
    (None when there are fewer than :data:`MIN_TRIALS_FOR_IMPORTANCE` or Optuna cannot
    compute them).
    """
    attrs = study.user_attrs
    judged = verdict(study)
    best, chosen = judged.best, judged.chosen
    chosen_record = None if chosen is None else TrialRecord.of(chosen)
    return {
        "study": study.study_name,
        "model": attrs.get(STUDY_MODEL, ""),
        "train_samples": attrs.get(STUDY_TRAIN_SAMPLES),
        "max_accuracy_loss": attrs.get(STUDY_MAX_ACCURACY_LOSS),
        "reference_metric": attrs.get(STUDY_REFERENCE_METRIC),
        "reference_noise": attrs.get(STUDY_REFERENCE_NOISE),
        "metric_name": attrs.get(STUDY_METRIC_NAME, "metric"),
        "eval_source": attrs.get(STUDY_EVAL_SOURCE, ""),
        "best_number": None if best is None else best.number,
        "reference_number": attrs.get(STUDY_REFERENCE_NUMBER),
        "machine": attrs.get(STUDY_MACHINE, ""),
        "rate_unit": rate_unit(attrs),
        "versions": _versions(),
        "exported_number": None if chosen is None else chosen.number,
        "verdict": _verdict_sentence(judged),
        "best_ds_config": None if chosen_record is None else chosen_record.get(DS_CONFIG),
        "best_launch": None if chosen_record is None else chosen_record.get(LAUNCH),
        "importances": _importances(study) or None,
        **_noise_scale_info(study),
    }


def _noise_scale_info(study: optuna.Study) -> dict[str, Any]:
    """The reference's gradient noise scale (None where it was not measured, or came out
    unusable) and its global batch, for the per-batch figure."""
    number = study.user_attrs.get(STUDY_REFERENCE_NUMBER)
    if number is None:
        return {"noise_scale": None, "reference_batch": None}
    attrs = study.get_trials(deepcopy=False)[int(number)].user_attrs
    found = of_measured(attrs.get(GRADIENT_NOISE))
    return {
        "noise_scale": None if found is None else found.simple,
        "reference_batch": attrs.get(GLOBAL_BATCH_SIZE),
    }


def _verdict_sentence(judged: Verdict) -> str | None:
    """Why the reference is exported rather than a faster trial, or None when it is not."""
    if not judged.within_noise or judged.best is None or judged.speedup is None:
        return None
    rounds = f" over {len(judged.pairs)} rounds side by side" if judged.pairs else ""
    return (
        f"Trial {judged.best.number} is {judged.speedup:.2f}× the reference{rounds}: within "
        f"the noise (±{judged.noise:.1%}), so no configuration surely beats the reference. "
        "The search recommends keeping what the model file runs; the exported configuration "
        "is the reference's."
    )


def write_study_report(study: optuna.Study, path: str | Path) -> Path:
    """Write the HTML report of a study to ``path``."""
    return write_report(trials_frame(study), report_info(study), path)
