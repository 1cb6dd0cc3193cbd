"""The study: an Optuna study in any storage whose trials are real DeepSpeed runs, and the
confirmation rounds that rank its fastest configurations side by side with the reference."""

from __future__ import annotations

from autotune._confirm import (
    CONFIRM_ROUNDS,
    DEFAULT_CONFIRM,
    best_trial,
    confirmation_order,
    estimated_speedup,
    estimated_throughput,
    paired_speedups,
    rank_candidates,
    reference_of,
    stored_confirmations,
    stored_failures,
    stored_rounds,
    throughput_runs,
)
from autotune._study import _ASKS_PER_RUN as ASKS_PER_RUN
from autotune._study import (
    DEFAULT_MIN_MEASURE_SECONDS,
    DEFAULT_SPACE,
    DEFAULT_STORAGE,
    DEFAULT_TRAIN_SAMPLES,
    DEFAULT_TRIAL_TIMEOUT,
    SAMPLERS,
    STARTUP_RUNS,
    SearchOptions,
    enqueue_startup,
    load_study,
    open_storage,
    redact,
    reference_trial,
    run_study,
    runs_of,
)
from autotune._study import _make_sampler as make_sampler

__all__ = [
    "ASKS_PER_RUN",
    "CONFIRM_ROUNDS",
    "DEFAULT_CONFIRM",
    "DEFAULT_MIN_MEASURE_SECONDS",
    "DEFAULT_SPACE",
    "DEFAULT_STORAGE",
    "DEFAULT_TRAIN_SAMPLES",
    "DEFAULT_TRIAL_TIMEOUT",
    "SAMPLERS",
    "STARTUP_RUNS",
    "SearchOptions",
    "best_trial",
    "confirmation_order",
    "enqueue_startup",
    "estimated_speedup",
    "estimated_throughput",
    "load_study",
    "make_sampler",
    "open_storage",
    "paired_speedups",
    "rank_candidates",
    "redact",
    "reference_of",
    "reference_trial",
    "run_study",
    "runs_of",
    "stored_confirmations",
    "stored_failures",
    "stored_rounds",
    "throughput_runs",
]
