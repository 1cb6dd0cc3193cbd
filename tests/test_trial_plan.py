"""What the orchestrator hands the ranks (autotune/runner/_protocol.py): the typed plan survives
plan.json unchanged, and the training loader the harness builds from it follows the trial's
configuration (autotune/runner/_data.py)."""

from __future__ import annotations

import json

import torch
from torch.utils.data import TensorDataset

from autotune._plan import WARMUP_STEPS, TrialConfig
from autotune.runner import AdaptiveStop, TrialPlan, train_loader


def _config(**changes: object) -> TrialConfig:
    values: dict[str, object] = {
        "micro_batch_size": 8,
        "gradient_accumulation_steps": 2,
        "precision": "bf16",
        "zero_stage": 1,
        "processes": 4,
        "pipeline_stages": 2,
        "partition_method": "profile",
        "num_workers": 1,
        "pin_memory": False,
        "prefetch_factor": 4,
        "learning_rate": 2e-3,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.99]}},
    }
    values.update(changes)
    return TrialConfig(**values)  # type: ignore[arg-type]


def _plan(**changes: object) -> TrialPlan:
    config = _config()
    values: dict[str, object] = {
        "model_path": "/models/m.py",
        "config": config,
        "ds_config": config.ds_config(),
        "train_samples": 1024,
        "seeds": (0, 1),
        "warmup_steps": WARMUP_STEPS,
        "threads_per_rank": 1,
        "partition_bounds": (0, 3, 5),
        "need_metric": False,
        "adaptive": AdaptiveStop(rel_halfwidth=0.02, min_steps=5, min_seconds=0.5),
    }
    values.update(changes)
    return TrialPlan(**values)  # type: ignore[arg-type]


def test_a_plan_reads_back_as_it_was_written(tmp_path) -> None:
    bucketed = _config(zero_bucket_elements=2**20)
    for plan in (
        _plan(),
        _plan(partition_bounds=None, adaptive=None, threads_per_rank=None),
        _plan(config=bucketed, ds_config=bucketed.ds_config()),
    ):
        plan.write(tmp_path / "plan.json")
        json.loads((tmp_path / "plan.json").read_text())  # plain JSON
        assert TrialPlan.read(tmp_path / "plan.json") == plan


def test_adaptive_comes_from_run_trials_dict() -> None:
    assert AdaptiveStop.from_dict(None) is None
    assert AdaptiveStop.from_dict({}) is None
    assert AdaptiveStop.from_dict({"rel_halfwidth": 0.02, "min_steps": 5}) == AdaptiveStop(
        0.02, 5, 0.0
    )
    given = {"rel_halfwidth": 0.02, "min_steps": 5, "min_seconds": 1, "cannot_win_below": 800}
    assert AdaptiveStop.from_dict(given) == AdaptiveStop(0.02, 5, 1.0, 800.0)


def test_a_plan_that_may_stop_early_reads_back(tmp_path) -> None:
    plan = _plan(need_metric=True, adaptive=AdaptiveStop(0.02, 5, 3.0, cannot_win_below=812.5))
    plan.write(tmp_path / "plan.json")
    assert TrialPlan.read(tmp_path / "plan.json") == plan


def test_later_seeds_time_no_longer_window_and_steps_fit_the_budget() -> None:
    plan = _plan()
    assert plan.for_later_seed().adaptive is None
    assert plan.for_later_seed().seeds == plan.seeds
    assert plan.budget_steps == plan.config.steps(plan.train_samples) == 1024 // 32
    assert plan.pipeline and not _plan(config=_config(pipeline_stages=1)).pipeline


def test_the_training_loader_follows_the_config() -> None:
    data = TensorDataset(torch.zeros(100, 3), torch.zeros(100))
    config = _config()
    loader, sampler = train_loader(data, config, dp_rank=1, seed=0)
    arguments = config.dataloader_arguments()
    assert loader.batch_size == config.micro_batch_size and loader.drop_last
    assert loader.num_workers == arguments["num_workers"] == 1
    assert loader.prefetch_factor == arguments["prefetch_factor"] == 4
    assert loader.persistent_workers is arguments["persistent_workers"] is True
    assert sampler.replicas == config.data_parallel == 2
    assert sampler.per_epoch == 100 // config.global_batch_size * config.global_batch_size
    assert len(sampler) == sampler.per_epoch // 2
