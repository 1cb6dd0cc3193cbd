"""What a study stores: the keys of a trial's record (its Optuna user attributes) and of the
study's own attributes, the values of its status and role, and a typed view of a trial.

This module is the one place these keys are spelled. Code that writes a record calls
``trial.set_user_attr(records.STATUS, records.OK)``; code that reads one takes a
:class:`TrialRecord` (``TrialRecord.of(trial)``) and its typed properties. A study written by an
earlier version is read through the same keys, so they never change their spelling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# --- what a trial's record holds ---------------------------------------------------------------

ROLE = "role"
"""Why the trial exists: `REFERENCE`, `STARTUP`, `PROBE` or `SEARCH` (the default when
absent)."""
STATUS = "status"
"""What happened to it: `OK`, `REPEAT`, `INFEASIBLE`, `FAILED`, `STOPPED` or `PROBED`; absent
while it runs."""
REASON = "reason"
FAILURE_REASON = "failure_reason"
SETTINGS = "settings"
"""The tuned settings by parameter name (`autotune._space.PARAMETERS`)."""
CONFIG_KEY = "config_key"
NUMERICS_KEY = "numerics_key"
GLOBAL_BATCH_SIZE = "global_batch_size"
LEARNING_RATE = "learning_rate"
LAUNCHED = "launched"
TRIAL_DIR = "trial_dir"
WALL_SECONDS = "wall_seconds"
DS_CONFIG = "ds_config"
LAUNCH = "launch"
REPEAT_OF = "repeat_of"
ACCURACY_REUSED_FROM = "accuracy_reused_from"
ACCURACY_LOSS = "accuracy_loss"
MEMORY_ESTIMATE_BYTES = "memory_estimate_bytes"
MEMORY_PREDICTED_BYTES = "memory_predicted_bytes"
STAGE_PREDICTED_SECONDS = "stage_predicted_seconds"
WORKER = "worker"
"""The number of the worker that proposed the trial (`STUDY_WORKERS`); absent in studies
written before many workers could share one."""
RUN_SLOT = "run_slot"
"""Which of the study's --n-trials runs the trial claimed (1 for the first) before it launched;
a RUNNING trial that holds one is a run in progress, which a proposal of the same
configuration waits for and repeats rather than launching it again."""
OWNER = "owner"
"""The process running the trial (host, boot, pid namespace, pid, start time: see
`autotune.runner.Owner`), so a resumed search can tell a trial left RUNNING by a dead process."""
RETRY_OF = "retry_of"
"""On a retry: the number of the trial whose run was cut short (killed or interrupted)."""
CHOSEN_BECAUSE = "chosen_because"
"""On a trial of the probe-first strategy: why it was chosen (`autotune.study.ProbeStep`)."""
TIMES_REFERENCE = "times_reference"
"""On a probe of the reference's configuration: True. It runs the reference's settings, as
the reference trial does, whatever the space can express (a space without the model file's
own micro-batch, for one)."""

RATE = "rate"
"""What the study maximises, over this trial's timed window: its samples/s, or its tokens/s
in a study run with ``--objective tokens`` (`STUDY_OBJECTIVE`). Studies written before it
existed have none; `TrialRecord.rate` reads THROUGHPUT for them."""

# What a run measured, copied from the harness's result under the same names.
THROUGHPUT = "throughput"
"""Samples per second over the timed window."""
TOKENS_PER_SECOND = "tokens_per_second"
"""Real (non-padding) tokens per second over the same window, when batches carry
``input_ids``; None otherwise."""
PADDING = "padding"
"""The share of the timed window's token positions that were padding, when batches carry
``input_ids``; None otherwise."""
METRIC = "metric"
SEED_METRICS = "seed_metrics"
EVAL_LOSS = "eval_loss"
"""The model's loss on the eval data, computed from the same outputs as the metric (None
where the outputs carry none); a trial's is the mean over its seeds."""
SEED_EVAL_LOSSES = "seed_eval_losses"
VERDICT_CONFIDENCE = "verdict_confidence"
"""The chance that the trial's true accuracy loss is within the budget, from the reference's
seed noise (`autotune._verdict`); None without it."""
VERDICT_BY = "verdict_by"
"""What decided the trial's verdict: "metric", "eval loss" or "one seed"."""
VERDICT_SEEDS = "verdict_seeds"
"""Training seeds behind the trial's metric (more than one where a verdict near the budget
was retrained)."""
PEAK_MEMORY_BYTES = "peak_memory_bytes"
PEAK_MEMORY_PER_RANK = "peak_memory_per_rank"
STEP_TIME_P50 = "step_time_p50"
STEP_TIME_P90 = "step_time_p90"
STEP_TIME_SPREAD = "step_time_spread"
MEASURED_SECONDS = "measured_seconds"
TRAIN_SECONDS = "train_seconds"
EVAL_SECONDS = "eval_seconds"
COMPILE_SECONDS = "compile_seconds"
"""Under ``compile``: what the warm-up steps took beyond as many timed steps, the time spent
compiling before the timed window (a user pays it once per run); None without compile."""
SAMPLES_TRAINED = "samples_trained"
STEPS = "steps"
BUDGET_STEPS = "budget_steps"
MEASURED_STEPS = "measured_steps"
EXTRA_STEPS = "extra_steps"
STABLE_AFTER_STEPS = "stable_after_steps"
PARTITION = "partition"
STAGE_COMPUTE_SECONDS = "stage_compute_seconds"
STAGE_COMM_SECONDS = "stage_comm_seconds"
SKIPPED_STEPS = "skipped_steps"
LOSS_SCALE = "loss_scale"
CANNOT_WIN = "cannot_win"
"""True when the run stopped before its sample budget because its throughput, measured so far,
could not beat the best feasible run's (`STOPPED`); it then has no metric."""
GRADIENT_NOISE = "gradient_noise"
"""On the reference's run: squared gradient norms at two batch sizes after its training
(`autotune.runner._gradient_noise`), from which `autotune._noise_scale` estimates the gradient
noise scale; None where they cannot be measured."""
CANNOT_WIN_BELOW = "cannot_win_below"
"""On a run that could stop early: the samples/s it had to be able to reach to go on."""
FEASIBLE = "feasible"
"""Whether the trial's constraints make it feasible (`autotune._score.is_feasible`), stored
beside them for optuna-dashboard's trial table (`autotune.study._dashboard`); autotune itself
reads the constraints. Absent in studies written before it existed."""
TRAIN_LOSS = "train_loss"
"""In the harness's result only (a trial's record does not keep it)."""
WORLD_SIZE = "world_size"
"""In the harness's result only (a trial's record does not keep it)."""

MEASURED: tuple[str, ...] = (
    THROUGHPUT,
    TOKENS_PER_SECOND,
    PADDING,
    METRIC,
    SEED_METRICS,
    EVAL_LOSS,
    SEED_EVAL_LOSSES,
    PEAK_MEMORY_BYTES,
    PEAK_MEMORY_PER_RANK,
    STEP_TIME_P50,
    STEP_TIME_P90,
    STEP_TIME_SPREAD,
    MEASURED_SECONDS,
    TRAIN_SECONDS,
    EVAL_SECONDS,
    COMPILE_SECONDS,
    SAMPLES_TRAINED,
    STEPS,
    BUDGET_STEPS,
    MEASURED_STEPS,
    EXTRA_STEPS,
    STABLE_AFTER_STEPS,
    PARTITION,
    STAGE_COMPUTE_SECONDS,
    STAGE_COMM_SECONDS,
    SKIPPED_STEPS,
    LOSS_SCALE,
    CANNOT_WIN,
    GRADIENT_NOISE,
)
"""The measurements a successful run stores, in the order they are written."""

NOT_COPIED_BY_REPEAT: tuple[str, ...] = (
    ROLE,
    SETTINGS,
    CONFIG_KEY,
    WORKER,
    RUN_SLOT,
    OWNER,
    RETRY_OF,
    CHOSEN_BECAUSE,
)
"""Keys a repeat keeps its own values of when it copies an earlier trial's record."""

# --- the values of STATUS and ROLE ---------------------------------------------------------------

OK = "ok"
REPEAT = "repeat"
INFEASIBLE = "infeasible"
FAILED = "failed"
STOPPED = "stopped"
"""The run stopped early: its throughput could not beat the best feasible run's, so it was not
trained to the end nor evaluated (no metric, not a candidate for the best)."""
PROBED = "probed"
"""A probe of the probe-first strategy: the configuration was timed briefly, throughput only
(no metric, not a candidate for the best; a search run of it follows where it could win)."""
STATUSES: tuple[str, ...] = (OK, REPEAT, INFEASIBLE, FAILED, STOPPED, PROBED)
RAN: tuple[str, ...] = (OK, FAILED, STOPPED, PROBED)
"""Statuses of trials that launched a run (a repeat and a skipped proposal did not)."""
MEASURED_STATUSES: tuple[str, ...] = (OK, REPEAT)
"""Statuses whose record carries a throughput and an accuracy loss."""

REFERENCE = "reference"
STARTUP = "start-up"
SEARCH = "search"
PROBE = "probe"

# --- what the study's own record holds -------------------------------------------------------------

STUDY_MODEL = "model"
"""The model file's path when the study was created (what the report shows)."""
STUDY_MODEL_SHA256 = "model_sha256"
"""The sha256 of the model file's content: what a resume must match (every worker of a shared
study has its own copy at its own path). Studies written before it existed have none; their
resume compares `STUDY_MODEL`, the path, and then stores it."""
STUDY_TRAIN_SAMPLES = "train_samples"
STUDY_MAX_ACCURACY_LOSS = "max_accuracy_loss"
STUDY_LR_SCALING = "lr_scaling"
STUDY_SEED = "seed"
STUDY_OBJECTIVE = "objective"
STUDY_SCORING = "scoring"
""""goodput" (throughput times statistical efficiency) or "throughput" (`study._goodput`)."""
"""What the study maximises: "samples" (samples/s) or "tokens" (real tokens/s); a study
written before the choice existed has none and maximised samples/s."""
STUDY_METRIC_NAME = "metric_name"
STUDY_EVAL_SOURCE = "eval_source"
STUDY_MACHINE = "machine"
"""`Machine.describe()` of the machine the study was created on; a worker on another machine
is refused (its throughputs are not comparable)."""
STUDY_WORKERS = "workers"
"""The workers searching the study now: number (as a string) -> {"host", "pid", "seen"}; a
worker's number offsets its sampler's seed (the first, 0, keeps --seed)."""
STUDY_SPACE = "space"
STUDY_REFERENCE_METRIC = "reference_metric"
STUDY_REFERENCE_NOISE = "reference_noise"
STUDY_REFERENCE_SEED_METRICS = "reference_seed_metrics"
"""The reference's metric on each of its training seeds (the study's reference metric is
their mean)."""
STUDY_REFERENCE_SEED_EVAL_LOSSES = "reference_seed_eval_losses"
STUDY_REFERENCE_NUMBER = "reference_number"
STUDY_NOISE_SCALE = "noise_scale"
"""The reference's gradient noise scale B_noise (None where it could not be measured)."""
STUDY_REFERENCE_BATCH = "reference_batch"
"""The reference's global batch, which the goodput ratios are relative to."""
STUDY_CONFIRMATIONS = "confirmations"
"""Trial number (as a string) -> samples/s of each confirmation run."""
STUDY_CONFIRMATION_ROUNDS = "confirmation_rounds"
"""One dict per round: trial number (as a string) -> samples/s in that round."""
STUDY_CONFIRMATION_FAILURES = "confirmation_failures"
STUDY_CHOSEN = "chosen_trial"
"""The number of the trial the last finished search recommends (`autotune.study.Verdict.chosen`,
what `autotune export` writes), or None while no trial is feasible; shown by optuna-dashboard
beside its own "Best Trial", the highest value feasible or not."""
STUDY_FIXED: tuple[str, ...] = (
    STUDY_MODEL_SHA256,
    STUDY_TRAIN_SAMPLES,
    STUDY_MAX_ACCURACY_LOSS,
    STUDY_LR_SCALING,
    STUDY_SEED,
    STUDY_OBJECTIVE,
    STUDY_SCORING,
)
"""What a resumed search must share with the study, so its trials stay comparable."""
STUDY_FIXED_DEFAULTS: dict[str, Any] = {STUDY_OBJECTIVE: "samples", STUDY_SCORING: "throughput"}
"""What a study written before one of `STUDY_FIXED` existed was run with."""
RATE_UNITS = {"samples": "samples/s", "tokens": "tokens/s"}
"""The unit of a trial's `RATE`, by `STUDY_OBJECTIVE`."""


def rate_unit(study_attrs: Mapping[str, Any]) -> str:
    """The unit of the rates a study ranks by: "samples/s" or "tokens/s"."""
    objective = study_attrs.get(STUDY_OBJECTIVE, STUDY_FIXED_DEFAULTS[STUDY_OBJECTIVE])
    return RATE_UNITS[objective]


def rate_label(study_attrs: Mapping[str, Any]) -> str:
    """How a study's rates read in its output: `rate_unit`, "of goodput" where they are
    throughput times efficiency (a goodput study whose reference measured its noise scale)."""
    goodput = study_attrs.get(STUDY_SCORING) == "goodput"
    scaled = goodput and study_attrs.get(STUDY_NOISE_SCALE) is not None
    return rate_unit(study_attrs) + (" of goodput" if scaled else "")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """A read-only, typed view of one trial's stored record.

    Attributes:
        number: The Optuna trial number.
        attrs: The trial's user attributes, as stored.
    """

    number: int
    attrs: Mapping[str, Any]

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of an Optuna trial (frozen or live)."""
        return cls(trial.number, trial.user_attrs)

    def get(self, key: str, default: Any = None) -> Any:
        """A stored value by its key (one of this module's names)."""
        return self.attrs.get(key, default)

    @property
    def role(self) -> str:
        return str(self.attrs.get(ROLE) or SEARCH)

    @property
    def is_reference(self) -> bool:
        return self.attrs.get(ROLE) == REFERENCE

    @property
    def status(self) -> str | None:
        return self.attrs.get(STATUS)

    @property
    def ran(self) -> bool:
        """Whether the trial launched a run (ok or failed)."""
        return self.status in RAN

    @property
    def is_ok(self) -> bool:
        return self.status == OK

    @property
    def is_measured(self) -> bool:
        """Whether the record carries a throughput and an accuracy loss (ok or a repeat)."""
        return self.status in MEASURED_STATUSES

    @property
    def reason(self) -> str:
        return str(self.attrs.get(REASON) or "")

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.attrs.get(SETTINGS) or {})

    @property
    def config_key(self) -> str | None:
        return self.attrs.get(CONFIG_KEY)

    @property
    def numerics_key(self) -> str | None:
        return self.attrs.get(NUMERICS_KEY)

    @property
    def throughput(self) -> float | None:
        """Samples per second."""
        return _float(self.attrs.get(THROUGHPUT))

    @property
    def tokens_per_second(self) -> float | None:
        return _float(self.attrs.get(TOKENS_PER_SECOND))

    @property
    def rate(self) -> float | None:
        """What the study maximises (`RATE`; samples/s in a study older than it)."""
        return _float(self.attrs.get(RATE, self.attrs.get(THROUGHPUT)))

    @property
    def metric(self) -> float | None:
        return _float(self.attrs.get(METRIC))

    @property
    def accuracy_loss(self) -> float | None:
        return _float(self.attrs.get(ACCURACY_LOSS))

    @property
    def peak_memory_bytes(self) -> float | None:
        return _float(self.attrs.get(PEAK_MEMORY_BYTES))

    @property
    def memory_estimate_bytes(self) -> float | None:
        return _float(self.attrs.get(MEMORY_ESTIMATE_BYTES))

    @property
    def accuracy_reused_from(self) -> int | None:
        return _int(self.attrs.get(ACCURACY_REUSED_FROM))

    @property
    def repeat_of(self) -> int | None:
        return _int(self.attrs.get(REPEAT_OF))

    @property
    def worker(self) -> int | None:
        return _int(self.attrs.get(WORKER))

    @property
    def run_slot(self) -> int | None:
        return _int(self.attrs.get(RUN_SLOT))

    @property
    def trial_dir(self) -> str | None:
        return self.attrs.get(TRIAL_DIR)

    @property
    def ds_config(self) -> dict[str, Any] | None:
        return self.attrs.get(DS_CONFIG)

    @property
    def launch(self) -> dict[str, Any] | None:
        return self.attrs.get(LAUNCH)

    @property
    def processes(self) -> int:
        return int(self.settings["processes"])

    @property
    def timed_seconds(self) -> float | None:
        """The window the throughput was timed over: the measured time less evaluation."""
        measured, evaluation = self.attrs.get(MEASURED_SECONDS), self.attrs.get(EVAL_SECONDS)
        if measured is None or evaluation is None:
            return None
        return float(measured) - float(evaluation)


def study_budget(study_attrs: Mapping[str, Any], default: float) -> float:
    """The study's accuracy-loss budget, or ``default`` where it has none stored."""
    return float(study_attrs.get(STUDY_MAX_ACCURACY_LOSS, default))
