"""What a study hands back to the user: a trial's DeepSpeed config and launch recipe, and the
HTML report."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autotune import _score
from autotune._confirm import (
    best_trial,
    estimated_speedup,
    estimated_throughput,
    reference_of,
    stored_confirmations,
    stored_rounds,
    throughput_runs,
)
from autotune._errors import UserError
from autotune._report import LIBRARIES, MIN_TRIALS_FOR_IMPORTANCE, log_tail, write_report
from autotune._space import PARAMETERS


def export_trial(
    trial: optuna.trial.FrozenTrial,
    out_dir: str | Path,
    confirmations: dict[str, list[float]] | None = None,
    speedup: tuple[float | None, list[float]] | None = None,
) -> tuple[Path, Path]:
    """Write ``ds_config.json`` (accepted unchanged by ``deepspeed.initialize``) and
    ``launch.json`` (processes, pipeline layout, data loading, the launch command).

    ``confirmations`` (the study's confirmation runs, see `autotune._confirm`) add every
    window the configuration was timed over and their median to ``launch.json``; ``speedup``
    (from `autotune._confirm.estimated_speedup`) its speed-up over the reference and the
    side-by-side ratios that speed-up is the median of.

    Raises:
        UserError: The trial never ran, so it has no configuration worth exporting.
    """
    attrs = trial.user_attrs
    if attrs.get("status") not in ("ok", "repeat") or "ds_config" not in attrs:
        raise UserError(
            f"Trial {trial.number} did not run successfully ({attrs.get('status', 'unknown')}: "
            f"{attrs.get('reason', 'no result')}); export a trial that ran."
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create {out_dir}: {exc.strerror}.") from None
    ds_config_path = out_dir / "ds_config.json"
    launch_path = out_dir / "launch.json"
    ds_config_path.write_text(json.dumps(attrs["ds_config"], indent=2) + "\n")
    launch: dict[str, Any] = dict(attrs["launch"])
    launch["trial"] = trial.number
    timed = (
        attrs["measured_seconds"] - attrs["eval_seconds"]
        if attrs.get("measured_seconds") is not None and attrs.get("eval_seconds") is not None
        else None
    )
    runs = throughput_runs(attrs, trial.number, confirmations or {})
    launch["measured"] = {
        # The median of every timed window: the trial's own, then its confirmation runs.
        "throughput_samples_per_s": estimated_throughput(runs),
        "throughput_runs": runs,
        # The window the throughput was timed over: steps after warm-up, eval excluded.
        "timed_seconds": timed,
        "timed_steps": attrs.get("measured_steps"),
        "accuracy_loss": attrs.get("accuracy_loss"),
        "peak_memory_bytes": attrs.get("peak_memory_bytes"),
        "speedup_vs_reference": speedup[0] if speedup else None,
        "speedup_runs": speedup[1] if speedup else [],
    }
    launch_path.write_text(json.dumps(launch, indent=2) + "\n")
    return ds_config_path, launch_path


def export(
    study: optuna.Study, out_dir: str | Path, trial_number: int | None = None
) -> tuple[Path, Path]:
    """Export the best feasible trial, or trial ``trial_number``, of a study.

    Raises:
        UserError: No such trial, or no feasible trial when none is named.
    """
    if trial_number is None:
        best = best_trial(study)
        if best is None:
            raise UserError(
                f"Study '{study.study_name}' has no feasible trial yet; name one with --trial N "
                "(see `autotune trials`) or search further."
            )
        trial = best
    else:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        if trial_number not in trials:
            raise UserError(
                f"Study '{study.study_name}' has no trial {trial_number} "
                f"(it has {len(trials)} trials, numbered from 0)."
            )
        trial = trials[trial_number]
    confirmations = stored_confirmations(study)
    speedup = estimated_speedup(
        trial.user_attrs,
        trial.number,
        reference_of(study.get_trials(deepcopy=False)),
        confirmations,
        stored_rounds(study),
    )
    return export_trial(trial, out_dir, confirmations, speedup)


def report_info(study: optuna.Study) -> dict[str, Any]:
    """The study-level facts the report shows beside the trials.

    Besides the study's attributes: the library versions, the best trial's ``ds_config`` and
    ``launch`` recipe, and the settings' importances for throughput over the 'ok' trials
    (None when there are fewer than :data:`MIN_TRIALS_FOR_IMPORTANCE` or Optuna cannot
    compute them).
    """
    attrs = study.user_attrs
    best = best_trial(study)
    best_number = None if best is None else best.number
    versions: dict[str, str | None] = {}
    for library in LIBRARIES:
        try:
            versions[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            versions[library] = None
    # Importances over measured trials only: failed and infeasible trials score 0, which
    # would make "did it run" the most important setting. Repeats would count twice.
    measured = [
        trial
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if trial.user_attrs.get("status") == "ok" and trial.value is not None
    ]
    importances: dict[str, float] | None = None
    if len(measured) >= MIN_TRIALS_FOR_IMPORTANCE:
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            sub_study = optuna.create_study(direction=study.direction)
            sub_study.add_trials(measured)
            # A fixed seed: the same study gives the same report.
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            found = optuna.importance.get_param_importances(sub_study, evaluator=evaluator)
            importances = {name: float(value) for name, value in found.items()}
        except (RuntimeError, ValueError, ImportError):
            importances = None
        finally:
            optuna.logging.set_verbosity(verbosity)
    return {
        "study": study.study_name,
        "model": attrs.get("model", ""),
        "train_samples": attrs.get("train_samples"),
        "max_accuracy_loss": attrs.get("max_accuracy_loss"),
        "reference_metric": attrs.get("reference_metric"),
        "reference_noise": attrs.get("reference_noise"),
        "metric_name": attrs.get("metric_name", "metric"),
        "eval_source": attrs.get("eval_source", ""),
        "best_number": best_number,
        "reference_number": attrs.get("reference_number"),
        "machine": attrs.get("machine", ""),
        "versions": versions,
        "best_ds_config": None if best is None else best.user_attrs.get("ds_config"),
        "best_launch": None if best is None else best.user_attrs.get("launch"),
        "importances": importances or None,
    }


def write_study_report(study: optuna.Study, path: str | Path) -> Path:
    """Write the HTML report of a study to ``path``."""
    return write_report(trials_frame(study), report_info(study), path)


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with its settings, status and measurements (the `trials` table)."""
    rows = []
    budget = float(study.user_attrs.get("max_accuracy_loss", _score.DEFAULT_MAX_ACCURACY_LOSS))
    confirmations, rounds = stored_confirmations(study), stored_rounds(study)
    reference = reference_of(study.get_trials(deepcopy=False))
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        status = attrs.get("status") or trial.state.name.lower()
        row: dict[str, Any] = {
            "number": trial.number,
            "role": attrs.get("role", "search"),
            "status": status,
        }
        row.update({name: attrs.get("settings", {}).get(name) for name in PARAMETERS})
        for name in (
            "global_batch_size",
            "learning_rate",
            "throughput",
            "accuracy_loss",
            "metric",
            "peak_memory_bytes",
            "step_time_p50",
            "step_time_p90",
            "measured_seconds",
            "train_seconds",
            "eval_seconds",
            "wall_seconds",
        ):
            value = attrs.get(name)
            row[name] = math.nan if value is None else value
        runs = throughput_runs(attrs, trial.number, confirmations)
        # Every window the configuration was timed over, and their median (see _confirm).
        row["throughput_runs"] = runs or None
        estimate = estimated_throughput(runs)
        row["estimated_throughput"] = math.nan if estimate is None else estimate
        # Over the reference: side by side in confirmation rounds where there were any.
        speedup, pairs = estimated_speedup(attrs, trial.number, reference, confirmations, rounds)
        row["speedup"] = math.nan if speedup is None else speedup
        row["speedup_runs"] = pairs or None
        row["feasible"] = status in ("ok", "repeat") and _score.is_feasible(trial.constraints)
        row["reason"] = attrs.get("reason") or ""
        row["datetime_start"] = trial.datetime_start
        row["datetime_complete"] = trial.datetime_complete
        trial_dir = attrs.get("trial_dir")
        row["trial_dir"] = trial_dir
        row["log_tail"] = (
            log_tail(Path(trial_dir) / "log.txt") if trial_dir and status == "failed" else ""
        )
        row["repeat_of"] = attrs.get("repeat_of")
        row["accuracy_reused_from"] = attrs.get("accuracy_reused_from")
        row["stable_after_steps"] = attrs.get("stable_after_steps")
        row["extra_steps"] = attrs.get("extra_steps")
        row["launched"] = attrs.get("launched")
        row["memory_predicted_bytes"] = attrs.get("memory_predicted_bytes")
        row["skipped_steps"] = attrs.get("skipped_steps")
        row["loss_scale"] = attrs.get("loss_scale")
        for name in (
            "partition",
            "stage_compute_seconds",
            "stage_comm_seconds",
            "stage_predicted_seconds",
        ):
            row[name] = attrs.get(name)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.attrs["max_accuracy_loss"] = budget
    return frame
