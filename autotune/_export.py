"""What a study hands back to the user: a trial's DeepSpeed config and launch recipe (the HTML
report is `autotune.report`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import optuna

from autotune._errors import UserError
from autotune._records import (
    ACCURACY_LOSS,
    COMPILE_SECONDS,
    DS_CONFIG,
    GLOBAL_BATCH_SIZE,
    LAUNCH,
    MEASURED_STEPS,
    PEAK_MEMORY_BYTES,
    REASON,
    STATUS,
    STUDY_TRAIN_SAMPLES,
    TrialRecord,
    rate_unit,
)
from autotune.study import (
    Scoring,
    estimated_speedup,
    estimated_throughput,
    reference_of,
    stored_confirmations,
    stored_rounds,
    study_scoring,
    timed_runs,
    verdict,
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What exporting a trial hands back: its DeepSpeed config and its launch recipe.

    Attributes:
        number: The trial's Optuna number.
        ds_config: The DeepSpeed config, accepted unchanged by ``deepspeed.initialize``.
        launch: The launch recipe (processes, pipeline layout, data loading, the launch command,
            what was measured): what ``launch.json`` holds.
    """

    number: int
    ds_config: dict[str, Any]
    launch: dict[str, Any]

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``out_dir/ds_config.json`` and ``out_dir/launch.json``; return their paths.

        Raises:
            UserError: ``out_dir`` cannot be created.
        """
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create {out_dir}: {exc.strerror}.") from None
        ds_config_path = out_dir / "ds_config.json"
        launch_path = out_dir / "launch.json"
        ds_config_path.write_text(json.dumps(self.ds_config, indent=2) + "\n")
        launch_path.write_text(json.dumps(self.launch, indent=2) + "\n")
        return ds_config_path, launch_path


def trial_recipe(
    trial: optuna.trial.FrozenTrial,
    confirmations: dict[str, list[float]] | None = None,
    speedup: tuple[float | None, list[float]] | None = None,
    unit: str = "samples/s",
    scoring: Scoring | None = None,
) -> Recipe:
    """A trial's DeepSpeed config and launch recipe, as :func:`export_trial` writes them.

    ``confirmations`` (the study's confirmation runs, see `autotune.study`) add every
    window the configuration was timed over and their median to the launch recipe; ``speedup``
    (from `autotune.study.estimated_speedup`) its speed-up over the reference and the
    side-by-side ratios that speed-up is the median of. ``unit`` is what the study ranks by
    (`records.rate_unit`): its windows go under ``throughput_*`` for samples/s and under
    ``tokens_per_s*`` for tokens/s; the other figure is the trial's own window. Under goodput
    ``scoring`` the windows are divided by the batch's efficiency back to what was timed, and
    ``goodput`` says what the speed-up is a ratio of.

    Raises:
        UserError: The trial never ran, so it has no configuration worth exporting.
    """
    attrs = trial.user_attrs
    record = TrialRecord.of(trial)
    if not record.is_measured or DS_CONFIG not in attrs:
        raise UserError(
            f"Trial {trial.number} did not run successfully ({attrs.get(STATUS, 'unknown')}: "
            f"{attrs.get(REASON, 'no result')}); export a trial that ran."
        )
    launch: dict[str, Any] = dict(attrs[LAUNCH])
    launch["trial"] = trial.number
    scoring = scoring or Scoring(0)
    runs = timed_runs(attrs, trial.number, confirmations or {}, scoring)
    own = {"samples/s": record.throughput, "tokens/s": record.tokens_per_second}
    windows = {name: [] if value is None else [value] for name, value in own.items()}
    windows[unit] = runs
    launch["measured"] = {
        # The median of every timed window: the trial's own, then its confirmation runs.
        "throughput_samples_per_s": estimated_throughput(windows["samples/s"]),
        "throughput_runs": windows["samples/s"],
        # Real (non-padding) tokens/s, where batches carry input_ids.
        "tokens_per_s": estimated_throughput(windows["tokens/s"]),
        "tokens_per_s_runs": windows["tokens/s"],
        # The window the throughput was timed over: steps after warm-up, eval excluded.
        "timed_seconds": record.timed_seconds,
        "timed_steps": attrs.get(MEASURED_STEPS),
        "accuracy_loss": attrs.get(ACCURACY_LOSS),
        "peak_memory_bytes": attrs.get(PEAK_MEMORY_BYTES),
        "speedup_vs_reference": speedup[0] if speedup else None,
        "speedup_runs": speedup[1] if speedup else [],
    }
    if attrs.get(COMPILE_SECONDS) is not None:
        # Seconds spent compiling before the timed window (paid once a run).
        launch["measured"]["compile_seconds"] = attrs[COMPILE_SECONDS]
    if scoring.goodput:
        batch = int(attrs.get(GLOBAL_BATCH_SIZE) or 0)
        launch["goodput"] = {
            # The speed-up above is of goodput: throughput times this efficiency.
            "efficiency": scoring.efficiency(batch),
            "samples_to_reference_loss": scoring.samples_for(batch),
            "reference_samples": scoring.train_samples,
            "gradient_noise_scale": scoring.noise_scale,
        }
    return Recipe(trial.number, dict(attrs[DS_CONFIG]), launch)


def export_trial(
    trial: optuna.trial.FrozenTrial,
    out_dir: str | Path,
    confirmations: dict[str, list[float]] | None = None,
    speedup: tuple[float | None, list[float]] | None = None,
    unit: str = "samples/s",
    scoring: Scoring | None = None,
) -> tuple[Path, Path]:
    """Write ``ds_config.json`` (accepted unchanged by ``deepspeed.initialize``) and
    ``launch.json`` (processes, pipeline layout, data loading, the launch command) to
    ``out_dir``; the arguments after it are :func:`trial_recipe`'s.

    Raises:
        UserError: The trial never ran, or ``out_dir`` cannot be created.
    """
    return trial_recipe(trial, confirmations, speedup, unit, scoring).write(out_dir)


def study_recipe(study: optuna.Study, trial_number: int | None = None) -> Recipe:
    """What the study recommends, or trial ``trial_number``: the fastest feasible trial when
    it beats the reference by more than the noise, else the reference
    (`autotune.study.verdict`), as :func:`export` writes it.

    Raises:
        UserError: No such trial, no feasible trial when none is named, or the trial never ran.
    """
    if trial_number is None:
        best = verdict(study).chosen
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
    attrs = study.user_attrs
    scoring = study_scoring(attrs, int(attrs.get(STUDY_TRAIN_SAMPLES) or 0))
    return trial_recipe(trial, confirmations, speedup, rate_unit(attrs), scoring)


def export(
    study: optuna.Study, out_dir: str | Path, trial_number: int | None = None
) -> tuple[Path, Path]:
    """Write what the study recommends, or trial ``trial_number`` (see :func:`study_recipe`), to
    ``out_dir/ds_config.json`` and ``out_dir/launch.json``.

    Raises:
        UserError: No such trial, no feasible trial when none is named, the trial never ran,
            or ``out_dir`` cannot be created.
    """
    return study_recipe(study, trial_number).write(out_dir)
