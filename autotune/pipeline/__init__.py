"""Pipeline parallelism: the cost of each layer and link, how layers are partitioned over
stages, and building the DeepSpeed PipelineModule."""

from __future__ import annotations

from autotune._partition import Partition, PartitionError, partition_layers, stage_costs
from autotune._pipeline import build_pipeline_module, check_partition_bounds
from autotune._profile import (
    LayerProfile,
    LinkCost,
    StageCosts,
    predicted_stage_seconds,
    profiled_partition,
    stage_cost_vectors,
)

__all__ = [
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
