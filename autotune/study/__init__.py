"""The study: an Optuna study in any storage whose trials are real DeepSpeed runs, and the
confirmation rounds that rank its fastest configurations side by side with the reference."""

from __future__ import annotations

from autotune.study._confirm import (
    CONFIRM_ROUNDS,
    DEFAULT_CONFIRM,
    MAX_ROUNDS,
    Remeasure,
    chance_if_equal,
    confirm,
    confirmation_order,
    settle,
)
from autotune.study._dashboard import choice_note, show_choice
from autotune.study._earlier import CANNOT_WIN_MARGIN
from autotune.study._goodput import Scoring, study_scoring, timed_runs
from autotune.study._judging import QualityCheck, quality_check
from autotune.study._loop import run_study
from autotune.study._options import (
    ADAPTIVE,
    DEFAULT_MIN_MEASURE_SECONDS,
    DEFAULT_SPACE,
    DEFAULT_STORAGE,
    DEFAULT_TRAIN_SAMPLES,
    DEFAULT_TRIAL_TIMEOUT,
    OBJECTIVES,
    SAMPLERS,
    SCORINGS,
    SearchOptions,
)
from autotune.study._probing import (
    PROBE_SECONDS,
    ProbeOption,
    ProbePlan,
    ProbeStep,
    ProbeTiming,
    options_at_distance,
)
from autotune.study._progress import duration
from autotune.study._ranking import (
    SPEEDUP_NOISE_FLOOR,
    Verdict,
    best_trial,
    estimated_speedup,
    estimated_throughput,
    paired_speedups,
    rank_candidates,
    reference_of,
    reference_trial,
    runs_of,
    stored_confirmations,
    stored_failures,
    stored_rounds,
    throughput_runs,
    verdict,
)
from autotune.study._samplers import (
    ASKS_PER_RUN,
    STARTUP_RUNS,
    enqueue_reference,
    enqueue_startup,
    make_sampler,
    sampler_seed,
)
from autotune.study._storage import load_study, open_storage, redact

__all__ = [
    "timed_runs",
    "Scoring",
    "study_scoring",
    "quality_check",
    "QualityCheck",
    "ADAPTIVE",
    "ASKS_PER_RUN",
    "CANNOT_WIN_MARGIN",
    "CONFIRM_ROUNDS",
    "DEFAULT_CONFIRM",
    "DEFAULT_MIN_MEASURE_SECONDS",
    "DEFAULT_SPACE",
    "DEFAULT_STORAGE",
    "DEFAULT_TRAIN_SAMPLES",
    "DEFAULT_TRIAL_TIMEOUT",
    "MAX_ROUNDS",
    "PROBE_SECONDS",
    "SAMPLERS",
    "SPEEDUP_NOISE_FLOOR",
    "STARTUP_RUNS",
    "Remeasure",
    "OBJECTIVES",
    "SCORINGS",
    "ProbeOption",
    "ProbePlan",
    "ProbeStep",
    "ProbeTiming",
    "SearchOptions",
    "Verdict",
    "best_trial",
    "chance_if_equal",
    "choice_note",
    "confirm",
    "confirmation_order",
    "enqueue_reference",
    "enqueue_startup",
    "estimated_speedup",
    "duration",
    "estimated_throughput",
    "load_study",
    "make_sampler",
    "open_storage",
    "options_at_distance",
    "paired_speedups",
    "rank_candidates",
    "redact",
    "reference_of",
    "reference_trial",
    "run_study",
    "runs_of",
    "sampler_seed",
    "settle",
    "show_choice",
    "stored_confirmations",
    "stored_failures",
    "stored_rounds",
    "throughput_runs",
    "verdict",
]
