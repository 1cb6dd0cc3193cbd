"""The runner: launches a trial's DeepSpeed ranks (fresh, or in a warm group that stays up
between trials, or across the nodes of a hostfile), the harness that trains and measures inside them, the build of DeepSpeed's
ops before anything is timed, the profiling runs, and what keeps launched ranks and their
shared memory from outliving the search (``_owner``)."""

from __future__ import annotations

from autotune.runner._checkpointing import CheckpointedLayers, pipeline_checkpointing
from autotune.runner._data import (
    Batches,
    CachedItems,
    CastingBatches,
    WholeBatchSampler,
    cast_batch,
    torch_dtype,
    train_loader,
)
from autotune.runner._launch import RunResult, free_port, run_trial
from autotune.runner._nodes import check_nodes, with_nodes
from autotune.runner._ops import (
    STALE_LOCK_SECONDS,
    build_locks,
    clear_stale_lock,
    ensure_deepspeed_ops,
    extensions_directory,
    lock_holders,
    ops_environment,
    prepare_deepspeed_ops,
)
from autotune.runner._owner import Owner, remove_orphaned_buffers, remove_shm_buffers
from autotune.runner._profiling import ProfileCache, measure_layers, measure_link
from autotune.runner._protocol import AdaptiveStop, TrialPlan
from autotune.runner._timing import step_time_is_stable, throughput_upper_bound
from autotune.runner._token_batches import StepLearningRate, TokenBudgetSampler, item_lengths
from autotune.runner._workers import KEEP_GROUPS, WarmWorkers, launch_command

__all__ = [
    "KEEP_GROUPS",
    "STALE_LOCK_SECONDS",
    "AdaptiveStop",
    "Batches",
    "CachedItems",
    "CheckpointedLayers",
    "CastingBatches",
    "Owner",
    "ProfileCache",
    "RunResult",
    "StepLearningRate",
    "TokenBudgetSampler",
    "TrialPlan",
    "WarmWorkers",
    "WholeBatchSampler",
    "build_locks",
    "check_nodes",
    "cast_batch",
    "clear_stale_lock",
    "ensure_deepspeed_ops",
    "extensions_directory",
    "free_port",
    "item_lengths",
    "launch_command",
    "lock_holders",
    "measure_layers",
    "measure_link",
    "ops_environment",
    "pipeline_checkpointing",
    "prepare_deepspeed_ops",
    "remove_orphaned_buffers",
    "remove_shm_buffers",
    "run_trial",
    "step_time_is_stable",
    "throughput_upper_bound",
    "torch_dtype",
    "train_loader",
    "with_nodes",
]
