"""The runner: launches a trial's DeepSpeed ranks (fresh, or in a warm group that stays up
between trials), the harness that trains and measures inside them, and the profiling runs."""

from __future__ import annotations

from autotune._harness import WholeBatchSampler, step_time_is_stable
from autotune._profile import ProfileCache, measure_layers, measure_link
from autotune._run import RunResult, prepare_deepspeed_ops, run_trial
from autotune._workers import WarmWorkers, launch_command, remove_shm_buffers

__all__ = [
    "ProfileCache",
    "RunResult",
    "WarmWorkers",
    "WholeBatchSampler",
    "launch_command",
    "measure_layers",
    "measure_link",
    "prepare_deepspeed_ops",
    "remove_shm_buffers",
    "run_trial",
    "step_time_is_stable",
]
