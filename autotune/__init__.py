"""autotune: find the fastest DeepSpeed training configuration that keeps accuracy.

The Python API does everything the CLI does::

    from autotune import SearchOptions, search
    summary = search(SearchOptions(model=Path("examples/digits_mlp.py"), n_trials=12))
"""

from __future__ import annotations

from autotune._errors import UserError
from autotune._export import Recipe, export, export_trial, study_recipe, trial_recipe
from autotune._machine import Machine, detect_machine
from autotune._plan import TrialConfig, why_not_runnable
from autotune._planning import SpacePlan, describe_plan, plan
from autotune._search import SearchSummary, search
from autotune._space import PARAMETERS, SearchSpace, load_space
from autotune._task import ModelFile, Task, load_task
from autotune.pipeline import build_pipeline_module
from autotune.report import trials_frame, write_study_report
from autotune.runner import (
    CachedItems,
    CheckpointedLayers,
    RunResult,
    TokenBudgetSampler,
    item_lengths,
    pipeline_checkpointing,
    run_trial,
)
from autotune.study import SearchOptions, load_study

__all__ = [
    "PARAMETERS",
    "CachedItems",
    "CheckpointedLayers",
    "Machine",
    "ModelFile",
    "Recipe",
    "RunResult",
    "SearchOptions",
    "SearchSpace",
    "SearchSummary",
    "SpacePlan",
    "Task",
    "TokenBudgetSampler",
    "TrialConfig",
    "UserError",
    "build_pipeline_module",
    "describe_plan",
    "detect_machine",
    "export",
    "export_trial",
    "item_lengths",
    "load_space",
    "load_study",
    "load_task",
    "pipeline_checkpointing",
    "plan",
    "run_trial",
    "search",
    "study_recipe",
    "trial_recipe",
    "trials_frame",
    "why_not_runnable",
    "write_study_report",
]
