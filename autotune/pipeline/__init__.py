"""Pipeline parallelism: the cost of each layer and link, how layers are partitioned over
stages, and building the DeepSpeed PipelineModule."""

from __future__ import annotations

from autotune.pipeline._build import build_pipeline_module, check_partition_bounds
from autotune.pipeline._costs import (
    BOTTLENECK_TOLERANCE,
    PROFILE_VERSION,
    LayerProfile,
    LinkCost,
    StageCosts,
    predicted_stage_seconds,
    profiled_partition,
    stage_cost_vectors,
)
from autotune.pipeline._partition import (
    ABS_TOL,
    REL_TOL,
    Partition,
    PartitionError,
    partition_layers,
    stage_costs,
)

__all__ = [
    "ABS_TOL",
    "BOTTLENECK_TOLERANCE",
    "PROFILE_VERSION",
    "REL_TOL",
    "LayerProfile",
    "LinkCost",
    "Partition",
    "PartitionError",
    "StageCosts",
    "build_pipeline_module",
    "check_partition_bounds",
    "partition_layers",
    "predicted_stage_seconds",
    "profiled_partition",
    "stage_cost_vectors",
    "stage_costs",
]
